"""JSON logs (CT4_LOG_FORMAT=json): one object per line with the jobs' figures as fields, and no personal
data in any log line, job-run record or API error body while every job works a lead full of it."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from datetime import date

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from rest_framework.authtoken.models import Token

from ct4site.logs import logging_config
from identity.models import JobRun
from identity.tests.factories import make_driver, make_lead

# A lead as a recruiter types it, and every form its values take once normalized.
PHONE, DOCUMENT, EMAIL, BIRTH = "987 654 321", "45871236", "Rosa.Quispe.Mamani@Correo.pe", date(1991, 4, 23)
PERSONAL = {
    "phone": ["987 654 321", "987654321", "+51987654321", "51987654321"],
    "document": [DOCUMENT],
    "email": [EMAIL, EMAIL.lower()],
    "birth_date": ["1991-04-23", "23/04/1991", "19910423", "1991/04/23"],
}
# A second lead nobody resembles (it fails, so its values reach the unmatched rows' evidence).
STRANGER = {"phone": "913 572 468", "document": "70314295", "email": "w.ccahua.t@inbox.pe",
            "birth_date": date(1988, 12, 2)}
PERSONAL["phone"] += ["913 572 468", "913572468", "+51913572468"]
PERSONAL["document"] += ["70314295"]
PERSONAL["email"] += ["w.ccahua.t@inbox.pe"]
PERSONAL["birth_date"] += ["1988-12-02", "02/12/1988", "19881202"]
EVERY_VALUE = [value for values in PERSONAL.values() for value in values]
JOBS = (
    ("refresh_drivers_index",), ("seed_kpi_red_queue",), ("recover_kpi_red_leads",), ("retry_identity_matching",),
    ("reconcile_cabinet_leads_pipeline",), ("match_leads", "--redecide"), ("run_guardrails",),
)
# The names the jobs' runs carry in ops.job_runs (run_guardrails records "guardrails").
RUN_NAMES = {"refresh_drivers_index", "seed_kpi_red_queue", "recover_kpi_red_leads", "retry_identity_matching",
             "reconcile_cabinet_leads_pipeline", "match_leads", "guardrails"}


@pytest.fixture
def json_log():
    """The project's JSON logging, written to a buffer; the settings' logging comes back afterwards."""
    buffer = io.StringIO()
    logging.config.dictConfig(logging_config(log_format="json", level="DEBUG", stream=buffer))
    yield buffer
    logging.config.dictConfig(settings.LOGGING)


def leaks(text: str) -> list[str]:
    return [value for value in EVERY_VALUE if value in text]


def test_each_line_is_one_json_object_with_the_fields_passed_as_extra(json_log):
    logging.getLogger("ct4.jobs").info("seed run=7 batch=2", extra={"job": "seed_kpi_red_queue", "run_id": 7,
                                                                     "batch": 2, "counts": {"processed": 500}})
    logging.getLogger("django.request").warning("Not Found: /x")
    lines = json_log.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert {k: first[k] for k in ("level", "logger", "message", "job", "run_id", "batch", "counts")} == {
        "level": "INFO", "logger": "ct4.jobs", "message": "seed run=7 batch=2", "job": "seed_kpi_red_queue",
        "run_id": 7, "batch": 2, "counts": {"processed": 500}}
    assert "time" in first and "pid" in first
    assert json.loads(lines[1])["logger"] == "django.request"


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="CT4_LOG_FORMAT"):
        logging_config(log_format="xml")


@pytest.mark.django_db(transaction=True)
def test_every_job_works_a_lead_full_of_personal_data_and_none_of_it_is_logged_recorded_or_echoed(json_log):
    lead = make_lead(days_ago=2, first_name="Rosa", last_name="Quispe Mamani", phone=PHONE, document=DOCUMENT,
                     email=EMAIL, birth_date=BIRTH)
    make_driver(first_name="Rosa", last_name="Quispe Mamani", phone="+51 987654321", document=DOCUMENT,
                license_number=f"Q{DOCUMENT}", email=EMAIL.lower(), birth_date=BIRTH)
    make_lead(days_ago=3, first_name="Wilber", last_name="Ccahua Torres", **STRANGER)
    outputs = []
    for job in JOBS:
        out, err = io.StringIO(), io.StringIO()
        call_command(*job, stdout=out, stderr=err)
        outputs.append(out.getvalue() + err.getvalue())

    # The jobs really worked the leads: the first one is linked, the stranger was tried and failed.
    assert JobRun.objects.filter(name="recover_kpi_red_leads").get().counts["matched"] == 1
    assert set(JobRun.objects.values_list("name", flat=True)) == RUN_NAMES

    lines = json_log.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    finished = {r["job"] for r in records if r.get("event") == "finished"}
    assert finished == RUN_NAMES
    batches = [r for r in records if r.get("event") == "batch"]
    assert {r["job"] for r in batches} >= {"seed_kpi_red_queue", "recover_kpi_red_leads", "match_leads"}
    for record in batches:
        assert isinstance(record["run_id"], int) and record["batch"] >= 1
        assert isinstance(record["counts"], dict) and record["batch_seconds"] >= 0
    assert leaks("\n".join(outputs)) == []

    runs = list(JobRun.objects.values("name", "params", "counts", "error", "host"))
    assert leaks(json.dumps(runs, default=str)) == []

    bodies = api_error_bodies(lead.source_pk)
    assert [status for status, _ in bodies] == [400, 400, 404, 400, 401, 404]
    assert leaks("\n".join(body for _, body in bodies)) == []
    # Django's lines about those requests name the URL pattern, not the path the caller typed.
    assert "/api/v1/ops/jobs/<int:run_id>" in json_log.getvalue()
    assert leaks(json_log.getvalue()) == []


def api_error_bodies(source_pk: str) -> list[tuple[int, str]]:
    """Error answers of the API to requests that carry the personal values themselves."""
    cache.clear()  # the job-start throttle
    user = User.objects.create_user("ana.ops", password="lima-2026-secret")
    user.user_permissions.add(*Permission.objects.filter(codename__in=[
        "view_cabinetleadslimbo", "view_cabinetfinancial14d", "view_jobrun", "run_recovery"]))
    token = Token.objects.create(user=user).key
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    v1 = "/api/v1"
    responses = [
        client.get(f"{v1}/ops/cabinet-leads/limbo", {"lead_date_from": "23/04/1991", "limbo_stage": DOCUMENT,
                                                      "has_identity": EMAIL}),
        client.get(f"{v1}/ops/payments/cabinet-financial-14d", {"min_expected_amount": EMAIL,
                                                                 "window_open": "913572468"}),
        client.get(f"{v1}/ops/jobs/{DOCUMENT}"),
        client.post(f"{v1}/ops/identity-gaps/run-recovery?limit=987654321x"),
        Client().get(f"{v1}/ops/cabinet-leads/limbo", {"park_id": PHONE}),
        client.get(f"{v1}/ops/cabinet-leads/{source_pk}/{EMAIL}"),
    ]
    return [(r.status_code, r.content.decode()) for r in responses]
