"""The read cache of the API and the dashboard (recovery.read_cache): same figures as an uncached read,
kept CT4_API_CACHE_SECONDS, dropped when a job run starts or finishes, never bypassing permissions."""

from __future__ import annotations

import time

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from identity.models import JobRun, JobRunStatus
from identity.tests.factories import make_lead
from recovery.read_cache import cache_key, read_cached
from recovery.tests.test_api import READS, V1, client_for, park, user_with  # noqa: F401 - park is a fixture

GAPS = f"{V1}/ops/identity-gaps"
LIMBO = f"{V1}/ops/cabinet-leads/limbo"
# Every test runs on test_api's park: three leads, two drivers, an index and a seeded queue.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("park")]


@pytest.fixture(autouse=True)
def _cache_on(settings):
    settings.CT4_API_CACHE_SECONDS = 60
    cache.clear()
    yield
    cache.clear()


def _new_lead() -> None:
    """A lead no one can match: one more lead in every summary (and in the red backlog)."""
    make_lead(first_name="Otro", last_name="Desconocido Total", phone="955123123", days_ago=1)


def _job_run_finished() -> None:
    JobRun.objects.create(name="reconcile_cabinet_leads_pipeline", status=JobRunStatus.SUCCEEDED,
                          finished_at=timezone.now())


@pytest.mark.parametrize(("method", "path", "perm"), READS)
def test_a_cached_answer_is_the_uncached_answer(settings, method, path, perm):
    client = client_for(user_with(perm))
    first = client.open(path, method=method)
    cached = client.open(path, method=method)
    settings.CT4_API_CACHE_SECONDS = 0
    uncached = client.open(path, method=method)
    assert first.status_code == cached.status_code == uncached.status_code == 200
    assert first.json == cached.json == uncached.json


def test_the_summary_is_kept_until_a_job_run_finishes():
    client = client_for(user_with("recovery.view_identitygapanalysis"))
    before = client.get(GAPS).json["total_leads"]
    _new_lead()
    assert client.get(GAPS).json["total_leads"] == before  # cached: the lead is not there yet
    _job_run_finished()
    assert client.get(GAPS).json["total_leads"] == before + 1


def test_a_job_run_that_starts_drops_the_cache_too():
    client = client_for(user_with("recovery.view_identitygapanalysis"))
    before = client.get(GAPS).json["total_leads"]
    _new_lead()
    JobRun.objects.create(name="recover_kpi_red_leads")  # running
    assert client.get(GAPS).json["total_leads"] == before + 1


def test_the_answer_expires_after_the_ttl(settings):
    settings.CT4_API_CACHE_SECONDS = 1
    client = client_for(user_with("recovery.view_cabinetleadslimbo"))
    before = client.get(LIMBO).json["count"]
    _new_lead()
    assert client.get(LIMBO).json["count"] == before
    time.sleep(1.1)
    assert client.get(LIMBO).json["count"] == before + 1


def test_zero_turns_the_cache_off(settings):
    settings.CT4_API_CACHE_SECONDS = 0
    client = client_for(user_with("recovery.view_identitygapanalysis"))
    before = client.get(GAPS).json["total_leads"]
    _new_lead()
    assert client.get(GAPS).json["total_leads"] == before + 1


def test_each_query_string_is_its_own_answer_and_bad_parameters_are_never_cached():
    client = client_for(user_with("recovery.view_cabinetleadslimbo"))
    assert len(client.get(LIMBO, query_string={"page_size": 1}).json["results"]) == 1
    assert len(client.get(LIMBO, query_string={"page_size": 2}).json["results"]) == 2
    for _ in range(2):
        assert client.get(LIMBO, query_string={"lead_date_from": "not-a-date"}).status_code == 400
        assert client.get(LIMBO, query_string={"page": 99}).status_code == 404


def test_permissions_are_checked_before_the_cache():
    allowed = client_for(user_with("recovery.view_identitygapanalysis", name="ana"))
    assert allowed.get(GAPS).status_code == 200
    denied = client_for(user_with("recovery.view_cabinetleadslimbo", name="luis"))
    assert denied.get(GAPS).status_code == 403
    assert client_for(None).get(GAPS).status_code == 401


def test_the_job_run_endpoint_is_never_cached():
    run = JobRun.objects.create(name="recover_kpi_red_leads")
    client = client_for(user_with("identity.view_jobrun"))
    assert client.get(f"{V1}/ops/jobs/{run.pk}").json["status"] == "running"
    # A progress update writes the row without starting or finishing a run: still seen at once.
    JobRun.objects.filter(pk=run.pk).update(counts={"processed": 500})
    assert client.get(f"{V1}/ops/jobs/{run.pk}").json["counts"] == {"processed": 500}


def test_the_dashboard_figures_are_kept_until_a_job_run_finishes():
    client = Client()
    client.force_login(user_with("recovery.view_kpiredrecoveryqueue"))
    before = client.get("/ops/").context["data"]["red_kpi"]["backlog"]
    _new_lead()
    assert client.get("/ops/").context["data"]["red_kpi"]["backlog"] == before
    _job_run_finished()
    after = client.get("/ops/")
    assert after.status_code == 200
    assert after.context["data"]["red_kpi"]["backlog"] == before + 1


def test_a_stale_answer_is_served_only_while_another_worker_recomputes_it():
    assert read_cached("figures", lambda: "old") == "old"
    assert read_cached("figures", lambda: "new") == "old"  # fresh: kept
    _job_run_finished()
    cache.add(cache_key("figures") + ":lock", 1)  # another worker is recomputing
    assert read_cached("figures", lambda: "new") == "old"
    cache.delete(cache_key("figures") + ":lock")
    assert read_cached("figures", lambda: "new") == "new"
    assert read_cached("figures", lambda: "newer") == "new"


def test_with_nothing_to_serve_a_locked_read_computes_without_storing():
    cache.add(cache_key("figures") + ":lock", 1)
    assert read_cached("figures", lambda: "mine") == "mine"
    cache.delete(cache_key("figures") + ":lock")
    assert read_cached("figures", lambda: "stored") == "stored"


def test_an_exception_is_not_cached_and_releases_the_lock():
    def fails():
        raise ValueError("bad parameter")

    with pytest.raises(ValueError):
        read_cached("figures", fails)
    assert cache.get(cache_key("figures") + ":lock") is None
    assert read_cached("figures", lambda: "ok") == "ok"


def test_the_shared_database_cache_keeps_and_drops_answers_the_same_way(settings):
    """CT4_CACHE=database: Django's DatabaseCache in the table ct4_cache, shared by every worker."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",
                                   "LOCATION": "ct4_cache"}}
    call_command("createcachetable", verbosity=0)
    client = client_for(user_with("recovery.view_identitygapanalysis"))
    before = client.get(GAPS).json["total_leads"]
    _new_lead()
    assert client.get(GAPS).json["total_leads"] == before
    _job_run_finished()
    assert client.get(GAPS).json["total_leads"] == before + 1
