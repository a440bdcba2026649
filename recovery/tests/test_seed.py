"""The seed job (recovery.queue.queue_seed): backlog leads become pending, failed ones come back when due."""

from datetime import timedelta

import pytest
from django.utils import timezone

from identity.index import drivers_index_refresh
from identity.models import DriverIndexEntry, JobRun
from identity.tests.factories import link_lead, make_driver, make_lead, make_person
from recovery.jobs.recover import queue_recover
from recovery.models import KpiRedRecoveryQueue
from recovery.queue import queue_seed
from recovery.tests.factories import backlog, queue_rows, snapshot, stranger

pytestmark = pytest.mark.django_db


def test_seed_makes_backlog_pending_leaves_matched_and_brings_failed_back_when_due():
    new = stranger(days_ago=2)
    make_driver()
    drivers_index_refresh()
    backoff_passed, backoff_running, index_changed = stranger(), stranger(), stranger()
    linked_elsewhere = stranger()
    matched = stranger()
    hour = timedelta(hours=1)
    now = timezone.now()
    failed = {"status": "failed", "attempts": 1, "fail_reason": "NO_CANDIDATES"}
    KpiRedRecoveryQueue.objects.create(lead_source_pk=backoff_passed.source_pk, **failed,
                                       last_attempt_at=now, next_attempt_at=now - hour)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=backoff_running.source_pk, **failed,
                                       last_attempt_at=now + hour, next_attempt_at=now + 2 * hour)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=index_changed.source_pk, **failed,
                                       last_attempt_at=now - 2 * hour, next_attempt_at=now + 2 * hour)
    KpiRedRecoveryQueue.objects.create(lead_source_pk=linked_elsewhere.source_pk, status="pending")
    person = make_person()
    # A matched row stays matched even when its lead is back in the backlog (its link was removed).
    KpiRedRecoveryQueue.objects.create(lead_source_pk=matched.source_pk, status="matched", attempts=1,
                                       matched_person=person, matched_at=now)
    link = link_lead(linked_elsewhere, person, decided_by="ana.revisora")

    result = queue_seed()

    rows = queue_rows()
    assert rows[new.source_pk].status == "pending" and rows[new.source_pk].lead_created_at == new.created_at
    assert rows[backoff_passed.source_pk].status == "pending"
    assert rows[backoff_passed.source_pk].attempts == 1  # seeding is not an attempt
    assert rows[backoff_running.source_pk].status == "failed"
    # last tried two hours ago; the drivers index changed since (indexed now)
    assert rows[index_changed.source_pk].status == "pending"
    assert rows[linked_elsewhere.source_pk].status == "matched"
    assert rows[linked_elsewhere.source_pk].matched_person_id == person.pk
    assert rows[linked_elsewhere.source_pk].matched_at == link.linked_at
    assert rows[matched.source_pk].status == "matched" and rows[matched.source_pk].attempts == 1
    assert (result.inserted, result.reset_to_pending, result.newly_matched_elsewhere) == (1, 2, 1)
    assert result.backlog == 5 and result.unchanged == 2  # backoff_running, matched
    assert JobRun.objects.get(name="seed_kpi_red_queue").status == "succeeded"

    before = snapshot()
    again = queue_seed()
    assert snapshot() == before
    assert (again.inserted, again.reset_to_pending, again.newly_matched_elsewhere) == (0, 0, 0)
    assert again.unchanged == again.backlog == 5


def test_seed_brings_failed_rows_back_when_a_driver_registers_later():
    lead = make_lead(days_ago=3, first_name="Raúl", last_name="Ñahui Gutiérrez", phone="951002003",
                     document="45123987", email=None, birth_date=None)
    make_driver()
    drivers_index_refresh()
    queue_seed()
    queue_recover()
    assert queue_rows()[lead.source_pk].status == "failed"
    # Back-date: the index was built two hours ago, the attempt was one hour ago (in this test's
    # transaction now() stands still). The driver registers now; the index is refreshed after.
    now = timezone.now()
    DriverIndexEntry.objects.update(indexed_at=now - timedelta(hours=2))
    KpiRedRecoveryQueue.objects.update(last_attempt_at=now - timedelta(hours=1))
    make_driver(first_name="Raúl", last_name="Ñahui Gutiérrez", phone="951002003", document="45123987")
    assert queue_seed().reset_to_pending == 0  # the index has not changed yet
    drivers_index_refresh()
    assert queue_seed().reset_to_pending == 1
    result = queue_recover()
    assert result.matched == 1 and lead.source_pk not in backlog()
    assert queue_rows()[lead.source_pk].attempts == 2
