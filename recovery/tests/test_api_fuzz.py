"""Fuzz the API from its own OpenAPI schema (schemathesis) against a live server: never a 500.

Each operation gets generated requests, valid and invalid (dates, numbers, enums, pages, odd
strings), sent over HTTP with a superuser's token. Every answer must be a non-5xx status the
schema declares, with a body of the declared shape.
"""

import json

import pytest
import schemathesis
from django.contrib.auth.models import User
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from identity.tests.factories import make_driver, make_lead

pytestmark = [pytest.mark.slow]
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def generated_schema():
    """The document /api/schema/ serves, generated in-process (no database needed)."""
    document = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
    return schemathesis.openapi.from_dict(document)


SCHEMA = generated_schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
# Negative mode needs a parameter to break; an operation without any has no forbidden request.
CASES = [pytest.param(op, mode, id=f"{op.label} {mode.value}")
         for op in OPERATIONS for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or any(p.location in ("query", "path") for p in op.iter_parameters())]


@pytest.fixture
def fuzz_token(transactional_db):
    make_driver(driver_id="d1", first_name="Rosa", last_name="Quispe Mamani", phone="987111222")
    make_lead(id=1, first_name="Rosa", last_name="Quispe Mamani", phone="987111222", days_ago=2)
    make_lead(id=2, first_name="Luz", last_name="Condori Apaza", phone="955222333", days_ago=9)
    admin = User.objects.create_superuser("fuzz", "fuzz@example.pe", "fuzz-pass-2026")
    return Token.objects.create(user=admin).key


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_api_never_answers_500(operation, mode, live_server, fuzz_token):
    """Positive mode: requests the schema allows; negative mode: requests it forbids (must be 4xx)."""
    headers = {"Authorization": f"Token {fuzz_token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case):
        case.call_and_validate(base_url=live_server.url, headers=headers, checks=CHECKS)

    call()
