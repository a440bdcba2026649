"""recovery.claims: the expected claims of reached milestones, only where no row exists."""

from datetime import timedelta

import pytest

from identity.models import Claim
from identity.tests.factories import link_driver, link_lead, make_claim, make_driver, make_lead, make_person, make_trips
from recovery.claims import claims_create_expected

pytestmark = pytest.mark.django_db


def test_claims_create_expected_only_fills_missing_milestones():
    person, driver = make_person(), make_driver()
    link_driver(driver, person)
    lead = make_lead(days_ago=20)
    link_lead(lead, person)
    make_trips(driver, start=lead.lead_date, counts=[1])
    make_claim(lead, milestone=1, status="rejected")
    assert claims_create_expected(source_pks=[lead.source_pk]) == 0
    make_trips(driver, {lead.lead_date + timedelta(days=13): 4})
    assert claims_create_expected() == 1
    assert claims_create_expected() == 0
    assert Claim.objects.get(lead_source_pk=lead.source_pk, milestone=1).status == "rejected"
