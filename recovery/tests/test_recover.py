"""The recover job (recovery.jobs.recover): drains the queue, records reasons, real worker processes
(three at once, one killed mid-batch), a matcher failure, the queue walked once."""

import json
import logging
import multiprocessing
import signal
import time
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from identity.index import drivers_index_refresh
from identity.models import CabinetLead, IdentityLink, IdentityOrigin, IdentityUnmatched, JobRun
from identity.runs import job_run
from identity.tests.factories import link_lead, make_driver, make_person
from recovery.guardrails import guardrails_run_all
from recovery.jobs import recover as recover_module
from recovery.jobs.recover import queue_recover
from recovery.models import IdentityMatchingJob, KpiRedRecoveryQueue
from recovery.queue import queue_ahead, queue_seed
from recovery.sql_views import KpiRedBacklog, KpiRedRecoveryMetricsDaily
from recovery.tests.factories import (
    LEADS,
    assert_nothing_half_written,
    backlog,
    bulk_leads,
    faceless,
    queue_rows,
    recover_process,
    scalar,
    snapshot,
    stranger,
    twin,
)

pytestmark = pytest.mark.django_db


def test_recover_drains_matched_leads_from_the_backlog_and_records_reasons(caplog):
    drivers = [twin(days_ago=d)[0] for d in (1, 2, 3)]
    twins = list(CabinetLead.objects.filter(phone__in=[d.phone for d in drivers]))
    lonely, blank = stranger(days_ago=4), faceless(days_ago=5)
    # Linked by a reviewer after seeding: matched with that link's person, not re-matched.
    reviewed = stranger(days_ago=6)
    drivers_index_refresh()
    queue_seed()
    person = make_person()
    link_lead(reviewed, person, decided_by="ana.revisora")
    logging.getLogger("ct4.jobs").addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ct4.jobs")

    result = queue_recover()

    rows = queue_rows()
    assert (result.processed, result.matched, result.failed) == (6, 4, 2)
    assert (result.linked_now, result.already_linked) == (3, 1)
    assert result.by_reason == {"NO_CANDIDATES": 1, "MISSING_IDENTIFIERS": 1}
    assert backlog() == {lonely.source_pk, blank.source_pk}
    for lead in twins:
        link = IdentityLink.objects.get(source_table=LEADS, source_pk=lead.source_pk)
        assert rows[lead.source_pk].status == "matched" and rows[lead.source_pk].matched_person_id == link.person_id
        assert IdentityOrigin.objects.get(person_id=link.person_id).origin_source_id == lead.source_pk
    assert rows[reviewed.source_pk].matched_person_id == person.pk
    assert not IdentityUnmatched.objects.filter(source_pk=reviewed.source_pk).exists()
    failed = rows[lonely.source_pk]
    assert (failed.status, failed.fail_reason, failed.attempts) == ("failed", "NO_CANDIDATES", 1)
    assert failed.next_attempt_at == failed.last_attempt_at + timedelta(hours=1)
    assert rows[blank.source_pk].fail_reason == "MISSING_IDENTIFIERS"
    jobs = {j.source_id: j for j in IdentityMatchingJob.objects.all()}
    assert len(jobs) == 6 and all(j.attempt_count == 1 for j in jobs.values())
    assert jobs[lonely.source_pk].status == "failed" and jobs[reviewed.source_pk].status == "matched"
    run = JobRun.objects.get(name="recover_kpi_red_leads")
    assert run.status == "succeeded" and run.counts["processed"] == 6 and run.counts["NO_CANDIDATES"] == 1
    batch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recover_kpi_red_leads run=")
                   and " batch=" in r.getMessage()]
    assert batch_lines and all(f" {k}=" in batch_lines[0] for k in ("processed", "matched", "failed", "pending"))
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert not any(d.phone in logged or d.document in logged for d in drivers)

    before = snapshot()
    again = queue_recover()
    assert again.processed == 0 and snapshot() == before


def test_recover_takes_high_risk_and_newest_first_within_the_limit():
    old, month, week, yesterday = (stranger(days_ago=d) for d in (60, 20, 6, 1))
    drivers_index_refresh()
    queue_seed()

    assert queue_recover(limit=2).processed == 2
    tried = {pk for pk, row in queue_rows().items() if row.attempts}
    assert tried == {yesterday.source_pk, week.source_pk}
    assert queue_recover(limit=1).processed == 1
    assert queue_rows()[month.source_pk].attempts == 1 and queue_rows()[old.source_pk].attempts == 0
    assert JobRun.objects.filter(name="recover_kpi_red_leads").count() == 2


def test_command_checks_its_arguments():
    with pytest.raises(CommandError) as error:
        call_command("recover_kpi_red_leads", "--batch-size", "100")
    assert error.value.returncode == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_recovery_processes_drain_one_queue_without_taking_a_lead_twice():
    matchable = bulk_leads(1500)
    drivers_index_refresh()
    assert queue_seed().inserted == 1500

    # Each batch (500 leads) holds its rows for a second before committing, so the three
    # processes (started together) overlap and must skip each other's locked rows.
    procs = [recover_process(sleep=1.0) for _ in range(3)]
    outputs = [proc.communicate(timeout=180) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sum(r["processed"] for r in results) == 1500
    assert sum(1 for r in results if r["processed"]) >= 2
    assert sum(r["matched"] for r in results) == matchable
    assert sum(r["failed"] for r in results) == 1500 - matchable
    assert set(KpiRedRecoveryQueue.objects.values_list("attempts", flat=True)) == {1}
    assert set(IdentityMatchingJob.objects.values_list("attempt_count", flat=True)) == {1}
    assert IdentityMatchingJob.objects.count() == 1500
    links = IdentityLink.objects.filter(source_table=LEADS)
    assert links.count() == links.values("source_pk").distinct().count() == matchable
    runs = JobRun.objects.filter(name="recover_kpi_red_leads")
    assert runs.count() == 3 and sum(r.counts.get("processed", 0) for r in runs) == 1500
    assert_nothing_half_written()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_recovery_killed_mid_batch_then_rerun_loses_nothing_and_does_nothing_twice():
    matchable = bulk_leads(1000, matchable_every=10)
    drivers_index_refresh()
    queue_seed()

    # Two batches of 500; each sleeps 4 s after its writes, before its commit.
    proc = recover_process(sleep=4.0)
    deadline = time.monotonic() + 90
    while KpiRedRecoveryQueue.objects.exclude(status="pending").count() < 500:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)  # the second batch has claimed and written, and not committed
    open_batches = scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND state = 'idle in transaction' AND pid <> pg_backend_pid()")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert open_batches == 1
    assert KpiRedRecoveryQueue.objects.filter(status="pending").count() == 500
    assert set(KpiRedRecoveryQueue.objects.exclude(status="pending").values_list("attempts", flat=True)) == {1}
    assert_nothing_half_written()

    rerun = recover_process()
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-2000:]
    assert json.loads(out)["processed"] == 500
    assert set(KpiRedRecoveryQueue.objects.values_list("attempts", flat=True)) == {1}
    assert set(IdentityMatchingJob.objects.values_list("attempt_count", flat=True)) == {1}
    assert IdentityLink.objects.filter(source_table=LEADS).count() == matchable
    assert_nothing_half_written()
    assert backlog() == set(KpiRedRecoveryQueue.objects.filter(status="failed").values_list("lead_source_pk",
                                                                                            flat=True))
    # The killed run could not record its end; the rerun saw no session holding its lock.
    killed = JobRun.objects.filter(name="recover_kpi_red_leads").order_by("started_at").first()
    assert (killed.status, killed.error.split(":")[0]) == ("failed", "abandoned")
    assert not JobRun.objects.filter(status="running").exists()
    # Every guardrail passes, and the daily metrics add up: each day's end is its start plus what came
    # in minus what was matched, and today's end is the backlog view.
    assert [r.name for r in guardrails_run_all() if not r.ok] == []
    days = list(KpiRedRecoveryMetricsDaily.objects.order_by("metric_date"))
    assert days and all(d.backlog_end == d.backlog_start + d.new_backlog_in - d.matched_out for d in days)
    assert days[-1].backlog_end == KpiRedBacklog.objects.count() == len(backlog())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_workers_option_shares_the_limit_and_records_one_run(monkeypatch):
    bulk_leads(600)
    drivers_index_refresh()
    queue_seed()
    monkeypatch.setenv("CT4_TEST_SLEEP_IN_BATCH", "0.3")

    result = queue_recover(limit=450, workers=2, batch_size=100)

    assert result.processed == 450 and result.matched + result.failed == 450 and result.batches == 5
    assert KpiRedRecoveryQueue.objects.exclude(status="pending").count() == 450
    assert set(KpiRedRecoveryQueue.objects.exclude(status="pending").values_list("attempts", flat=True)) == {1}
    run = JobRun.objects.get(name="recover_kpi_red_leads")
    assert run.status == "succeeded" and run.counts["processed"] == 450 and run.counts["pending"] == 150


def test_a_matcher_failure_fails_its_batch_with_error_and_logs_no_personal_data(monkeypatch, caplog):
    lead = stranger(days_ago=2, phone="951234876")
    make_driver()
    drivers_index_refresh()
    queue_seed()

    def broken(**kwargs):
        raise ValueError("cannot parse phone 951234876")

    monkeypatch.setattr("recovery.jobs.recover.leads_resolve", broken)
    logging.getLogger("ct4.jobs").addHandler(caplog.handler)
    result = queue_recover()

    row = queue_rows()[lead.source_pk]
    assert (row.status, row.fail_reason, row.attempts) == ("failed", "ERROR", 1)
    assert result.by_reason == {"ERROR": 1}
    assert IdentityMatchingJob.objects.get(source_id=lead.source_pk).fail_reason == "ERROR"
    assert JobRun.objects.get(name="recover_kpi_red_leads").status == "succeeded"
    assert "951234876" not in caplog.text and "ValueError" in caplog.text


def test_claims_walk_the_queue_once_even_with_equal_and_missing_lead_times():
    make_driver()
    drivers_index_refresh()
    same_time = timezone.now() - timedelta(days=2)
    leads = [stranger(created_at=same_time) for _ in range(3)] + [stranger(days_ago=d) for d in (1, 5)]
    queue_seed()
    # Rows queued before the lead time was copied into the queue have none.
    legacy = [stranger(days_ago=9), stranger(days_ago=3)]
    for lead in legacy:
        KpiRedRecoveryQueue.objects.create(lead_source_pk=lead.source_pk, status="pending")

    result = queue_recover(batch_size=1)

    assert result.processed == result.batches == 7
    assert set(KpiRedRecoveryQueue.objects.values_list("attempts", flat=True)) == {1}
    assert {lead.source_pk for lead in leads + legacy} == set(queue_rows())


def test_leads_decided_ahead_are_recovered_as_batch_by_batch(settings, monkeypatch):
    """With the index in memory, recovery decides ten batches' leads ahead, outside the claims; the
    queue ends as deciding each batch alone would leave it (the SQL path, batch by batch)."""
    matchable = bulk_leads(300, matchable_every=7)
    drivers_index_refresh()
    queue_seed()
    decided_ahead = []
    real = recover_module.DecidedAhead.prepare
    monkeypatch.setattr(recover_module.DecidedAhead, "prepare",
                        lambda self, **kw: (decided_ahead.append(kw), real(self, **kw))[1])
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    result = queue_recover(batch_size=40)
    assert decided_ahead and result.matched == matchable and result.processed == 300
    rows = queue_rows()
    assert sum(r.status == "matched" for r in rows.values()) == matchable
    assert IdentityLink.objects.filter(source_table="module_ct_cabinet_leads").count() == matchable


@pytest.mark.django_db(transaction=True)
def test_the_next_window_is_decided_on_a_second_thread_while_the_batches_are_written(settings, monkeypatch):
    """Committed leads (the look-ahead thread has its own connection): every window after the first is
    decided in the background, every batch is written from decisions (and evidence) made ahead, and the
    queue ends as batch by batch."""
    import threading  # noqa: PLC0415 (only this test asks which thread decided)

    matchable = bulk_leads(300, matchable_every=7)
    drivers_index_refresh()
    queue_seed()
    threads, from_ahead = [], []
    real_next, real_outcome = recover_module.DecidedAhead._window_in_background, recover_module.DecidedAhead.outcome
    monkeypatch.setattr(recover_module.DecidedAhead, "_window_in_background", lambda self, *a: (
        threads.append(threading.current_thread() is not threading.main_thread()), real_next(self, *a))[1])
    monkeypatch.setattr(recover_module.DecidedAhead, "outcome", lambda self, pks: (
        lambda outcome: (from_ahead.append(outcome is not None and outcome.resolved.evidence is not None),
                         outcome)[1])(real_outcome(self, pks)))
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    result = queue_recover(batch_size=10)  # windows of 100 leads: the 2nd and 3rd decided in the background
    assert (result.processed, result.matched) == (300, matchable)
    assert len(threads) >= 2 and all(threads)
    assert len(from_ahead) == 30 and all(from_ahead)
    assert IdentityLink.objects.filter(source_table="module_ct_cabinet_leads").count() == matchable


def test_a_failing_look_ahead_leaves_each_batch_to_decide_its_own_leads(settings, monkeypatch):
    matchable = bulk_leads(120, matchable_every=6)
    drivers_index_refresh()
    queue_seed()

    def broken(*args, **kwargs):
        raise ValueError("look-ahead broke")

    monkeypatch.setattr(recover_module, "leads_decide_frame", broken)  # the look-ahead's, not the batches'
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    result = queue_recover(batch_size=40)
    assert (result.processed, result.matched) == (120, matchable)
    assert "ERROR" not in result.by_reason


def test_queue_shards_split_the_pending_leads_in_claim_order():
    bulk_leads(90)
    queue_seed()
    every = queue_ahead(limit=1000).source_pks
    parts = [queue_ahead(limit=1000, shard=(k, 3)).source_pks for k in range(3)]
    assert sorted(pk for part in parts for pk in part) == sorted(every)  # disjoint, and nothing left out
    assert all(part for part in parts)
    assert all(part == [pk for pk in every if pk in set(part)] for part in parts)  # each in claim order
    with pytest.raises(ValueError, match="shard 3 of 3"):
        queue_ahead(limit=10, shard=(3, 3))


def test_a_worker_claims_its_part_first_then_what_the_others_left(settings, monkeypatch):
    """One of two workers, alone: it drains its part of the queue (and decides ahead only that part),
    then claims the rest, so no lead is left when another worker stops early."""
    matchable = bulk_leads(200, matchable_every=5)
    drivers_index_refresh()
    queue_seed()
    claims, windows = [], []

    def recording(calls, real):
        return lambda **kw: (calls.append(kw.get("shard")), real(**kw))[1]

    monkeypatch.setattr(recover_module, "queue_claim", recording(claims, recover_module.queue_claim))
    monkeypatch.setattr(recover_module, "queue_ahead", recording(windows, recover_module.queue_ahead))
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    ctx = multiprocessing.get_context("spawn")
    with job_run(recover_module.JOB, singleton=False) as run:
        counts = recover_module.worker_drain_in_process(
            handle=run, budget=recover_module.Budget(ctx.Value("q", -1), ctx.Value("q", 200)), batch_size=20,
            shard=(1, 2))
    assert (counts["processed"], counts["matched"]) == (200, matchable)
    assert not KpiRedRecoveryQueue.objects.filter(status="pending").exists()
    first_unsharded = claims.index(None)
    assert first_unsharded > 0 and set(claims[:first_unsharded]) == {(1, 2)} and set(claims[first_unsharded:]) == {None}
    assert windows[0] == (1, 2) and None in windows
