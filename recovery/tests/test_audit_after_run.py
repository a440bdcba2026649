"""The audit sample after each run (recovery.review.audit.audit_sample_after_run on
identity.runs.job_run_succeeded): a matching or recovery run that made links draws a sample of that
run's links; no links, the setting off, a dry run: nothing drawn; a failing sample fails no job.

These tests commit (transaction=True): the signal is only sent outside a transaction, and a run's
links are the ones whose linked_at (the database's transaction time) falls inside the run."""

import logging
from datetime import datetime
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command

from identity.index import drivers_index_refresh
from identity.models import IdentityLink, JobRun
from identity.resolution import leads_match
from identity.runs import job_run_succeeded
from identity.tests.factories import link_lead, make_lead, make_person
from recovery.jobs.recover import queue_recover
from recovery.models import AuditItem
from recovery.queue import queue_seed
from recovery.tests.factories import stranger, twin

pytestmark = pytest.mark.django_db(transaction=True)
LEADS = "module_ct_cabinet_leads"


@pytest.fixture
def sampling_on(settings, monkeypatch):
    """The production default (conftest.py turns it off for every other test)."""
    settings.CT4_AUDIT = {**settings.CT4_AUDIT, "sample_after_runs": True}
    monkeypatch.setenv("CT4_AUDIT_SAMPLE_AFTER_RUNS", "true")


@pytest.fixture
def jobs_log(caplog):
    logging.getLogger("ct4.jobs").addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ct4.jobs")
    yield caplog
    logging.getLogger("ct4.jobs").removeHandler(caplog.handler)


def _samples() -> list[JobRun]:
    return list(JobRun.objects.filter(name="audit_sample").order_by("pk"))


def test_a_matching_run_that_links_draws_audit_items_of_that_run(sampling_on, jobs_log):
    earlier = link_lead(make_lead(), make_person(), match_rule="document_exact", evidence={"score": 35.0},
                        match_score=35.0, linked_at=datetime(2026, 1, 10, 12, tzinfo=ZoneInfo("America/Lima")))
    leads = [twin(days_ago=d)[1] for d in (1, 2, 3)]
    stranger()
    drivers_index_refresh()

    totals = leads_match()

    assert totals["linked"] == 3
    run = JobRun.objects.get(name="match_leads")
    [sample] = _samples()
    assert (sample.status, sample.trigger, sample.params["source_run_id"]) == ("succeeded", "after_run", run.pk)
    assert sample.counts["drawn"] == 3
    items = AuditItem.objects.all()
    assert {item.source_pk for item in items} == {lead.source_pk for lead in leads}
    assert {item.run_id for item in items} == {sample.pk} and {item.kind for item in items} == {"link"}
    assert earlier.source_pk not in {item.source_pk for item in items}  # an earlier run's link
    assert f"match_leads run={run.pk}: drew 3 audit items of its 3 links" in jobs_log.text


def test_a_recovery_run_that_links_draws_audit_items_of_that_run(sampling_on):
    leads = [twin(days_ago=d)[1] for d in (1, 2)]
    stranger()
    drivers_index_refresh()
    queue_seed()

    result = queue_recover()

    assert result.linked_now == 2
    [sample] = _samples()
    assert sample.params["source_run_id"] == result.run_id
    assert set(AuditItem.objects.values_list("source_pk", flat=True)) == {lead.source_pk for lead in leads}


@pytest.mark.slow
def test_a_recovery_run_with_two_workers_draws_one_sample(sampling_on):
    leads = [twin(days_ago=d)[1] for d in (1, 2, 3, 4)]
    drivers_index_refresh()
    queue_seed()

    result = queue_recover(workers=2, batch_size=1)

    assert result.linked_now == 4 and JobRun.objects.filter(name="recover_kpi_red_leads").count() == 1
    [sample] = _samples()
    assert sample.params["source_run_id"] == result.run_id
    assert set(AuditItem.objects.values_list("source_pk", flat=True)) == {lead.source_pk for lead in leads}


def test_a_run_without_links_draws_nothing(sampling_on):
    stranger()
    stranger()
    drivers_index_refresh()
    queue_seed()

    assert leads_match()["linked"] == 0
    assert queue_recover().linked_now == 0

    assert JobRun.objects.filter(name__in=["match_leads", "recover_kpi_red_leads"], status="succeeded").count() == 2
    assert not _samples() and not AuditItem.objects.exists()


def test_the_setting_off_draws_nothing(settings):
    settings.CT4_AUDIT = {**settings.CT4_AUDIT, "sample_after_runs": False}
    twin()
    drivers_index_refresh()

    assert leads_match()["linked"] == 1
    assert not _samples() and not AuditItem.objects.exists()


def test_a_dry_run_sends_nothing_and_draws_nothing(sampling_on):
    twin()
    twin()
    drivers_index_refresh()
    queue_seed()
    heard = []

    def listen(sender, **kwargs):
        heard.append(kwargs["name"])

    job_run_succeeded.connect(listen)
    try:
        # Rolled back whole: the run and its links are never kept, so nobody hears of it.
        call_command("recover_kpi_red_leads", "--dry-run", stdout=StringIO())
        assert heard == []
        # Decides without writing: the run is kept and heard of, but it wrote no links (linked=0) to sample.
        call_command("match_leads", "--dry-run", stdout=StringIO())
        assert heard == ["match_leads"]
    finally:
        job_run_succeeded.disconnect(listen)

    assert JobRun.objects.get(name="match_leads").counts["linked"] == 0
    assert not IdentityLink.objects.filter(source_table=LEADS).exists()
    assert not _samples() and not AuditItem.objects.exists()


def test_a_failing_sample_does_not_fail_the_job(sampling_on, jobs_log, monkeypatch):
    twin()
    drivers_index_refresh()
    queue_seed()

    def broken(**kwargs):
        raise RuntimeError("the sample went wrong")

    monkeypatch.setattr("recovery.review.audit.audit_sample", broken)
    result = queue_recover()

    assert result.linked_now == 1
    assert JobRun.objects.get(name="recover_kpi_red_leads").status == "succeeded"
    assert not AuditItem.objects.exists()
    # One line (caplog may hear it through two handlers).
    [line] = {r.getMessage(): r for r in jobs_log.records if r.levelno == logging.ERROR}.values()
    assert f"recover_kpi_red_leads run={result.run_id}: the audit sample of its 1 links failed" in line.getMessage()
    assert "RuntimeError: the sample went wrong" in line.getMessage()
    assert (line.run_id, line.event) == (result.run_id, "audit_sample_failed")
