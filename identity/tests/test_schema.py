"""The database itself holds the canonical rules, and tests leave the runbook schemas clean."""

from datetime import UTC, date, datetime

import pytest
from django.db import IntegrityError, connection, transaction

from identity.models import CabinetLead, IdentityLink, JobRun, Person
from recovery.models import KpiRedRecoveryQueue


def _link(person, source_pk="L-1"):
    return IdentityLink.objects.create(
        source_table="module_ct_cabinet_leads",
        source_pk=source_pk,
        person=person,
        match_rule="test",
        confidence_level="high",
    )


@pytest.mark.django_db
def test_a_source_record_links_to_at_most_one_person():
    first, second = Person.objects.create(), Person.objects.create()
    _link(first)
    with pytest.raises(IntegrityError), transaction.atomic():
        _link(second)
    assert IdentityLink.objects.filter(source_pk="L-1").count() == 1


@pytest.mark.django_db
def test_one_queue_row_per_lead_and_checked_status():
    KpiRedRecoveryQueue.objects.create(lead_source_pk="L-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        KpiRedRecoveryQueue.objects.create(lead_source_pk="L-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        KpiRedRecoveryQueue.objects.create(lead_source_pk="L-2", status="done")
    with pytest.raises(IntegrityError), transaction.atomic():
        KpiRedRecoveryQueue.objects.create(lead_source_pk="L-3", status="failed", fail_reason="NO_MATCH")
    # A matched row must name its person.
    with pytest.raises(IntegrityError), transaction.atomic():
        KpiRedRecoveryQueue.objects.create(lead_source_pk="L-4", status="matched")


@pytest.mark.django_db
def test_runbook_tables_exist_under_their_contract_names():
    with connection.cursor() as cursor:
        for table in (
            "public.module_ct_cabinet_leads",
            "canon.identity_registry",
            "canon.identity_links",
            "canon.identity_origin",
            "canon.identity_unmatched",
            "ops.identity_matching_jobs",
            "ops.cabinet_kpi_red_recovery_queue",
        ):
            cursor.execute(f"SELECT count(*) FROM {table}")
            assert cursor.fetchone()[0] == 0


@pytest.mark.django_db(transaction=True)
def test_transactional_test_writes_rows_in_canon_and_ops():
    # Paired with the next test: flush after a transactional test must truncate canon/ops too.
    _link(Person.objects.create(), source_pk="LEAK-CHECK")
    JobRun.objects.create(name="leak-check")
    assert IdentityLink.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_no_rows_leak_from_the_previous_transactional_test():
    assert IdentityLink.objects.count() == 0
    assert Person.objects.count() == 0
    assert JobRun.objects.count() == 0


@pytest.mark.django_db
def test_lead_date_and_source_pk_are_derived_by_the_database():
    # 03:00 UTC on 2 March is still 1 March in Lima (UTC-5).
    CabinetLead.objects.create(id=7, created_at=datetime(2026, 3, 2, 3, 0, tzinfo=UTC))
    CabinetLead.objects.create(id=8, external_id="EXT-8", created_at=datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    rows = {lead.id: lead for lead in CabinetLead.objects.all()}
    assert rows[7].lead_date == date(2026, 3, 1) and rows[7].source_pk == "7"
    assert rows[8].lead_date == date(2026, 3, 2) and rows[8].source_pk == "EXT-8"
