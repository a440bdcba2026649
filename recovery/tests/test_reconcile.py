"""The reconcile job (recovery.jobs.reconcile): links, drivers mapped, expected claims, recent and limbo leads."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import call_command

from identity.index import drivers_index_refresh
from identity.models import Claim, IdentityLink
from identity.tests.factories import (
    lima_today,
    link_driver,
    link_lead,
    make_claim,
    make_driver,
    make_lead,
    make_person,
    make_trips,
)
from recovery.jobs.reconcile import pipeline_reconcile
from recovery.models import IdentityMatchingJob
from recovery.tests.factories import backlog, snapshot, stranger, twin

pytestmark = pytest.mark.django_db


def test_reconcile_links_maps_drivers_and_creates_expected_claims_once(tmp_csv):
    today = lima_today()
    # A recent lead with no identity whose driver reached 5 trips in the window.
    driver, fresh = twin(days_ago=10)
    make_trips(driver, start=today - timedelta(days=10), counts=[2, 2, 1])
    # A linked lead whose person has two drivers (27 trips in 14 days; the busier one is named),
    # and an imported paid claim for milestone 1.
    person = make_person()
    busy, quiet = make_driver(), make_driver()
    link_driver(busy, person)
    link_driver(quiet, person)
    paid = make_lead(days_ago=40)
    link_lead(paid, person)
    start = paid.lead_date
    make_trips(busy, start=start, counts=[10, 10])
    make_trips(quiet, start=start, counts=[5, 2])
    make_trips(quiet, {start + timedelta(days=14): 50})  # outside the window
    make_claim(paid, milestone=1, status="paid", driver_id=busy)
    # A lead whose person has no driver mapping left (NO_DRIVER): then the same human registers
    # as a driver in a second park, and the index refresh joins that record to the person.
    old_record = make_driver(document="43211234", park_id="park-lima-sur")
    drivers_index_refresh()
    mapped_person = IdentityLink.objects.get(source_table="drivers", source_pk=old_record.driver_id).person
    IdentityLink.objects.filter(source_table="drivers", source_pk=old_record.driver_id).delete()
    no_driver = make_lead(days_ago=70)
    link_lead(no_driver, mapped_person)
    lonely = stranger(days_ago=5)
    make_driver(document="43211234", park_id="park-lima-norte")

    result = pipeline_reconcile(refresh_index=True)

    assert result.index_refreshed and result.newly_linked == 1 and result.newly_driver_mapped == 1
    assert result.still_no_candidates == 1 and result.conflicts == 0 and result.errors == 0
    claims = {(c.lead_source_pk, c.milestone): c for c in Claim.objects.all()}
    assert set(claims) == {(fresh.source_pk, 1), (fresh.source_pk, 5), (paid.source_pk, 1), (paid.source_pk, 5),
                           (paid.source_pk, 25)}
    assert result.claims_created == 4
    assert claims[(paid.source_pk, 1)].status == "paid" and claims[(paid.source_pk, 1)].created_by == "import"
    expected = claims[(paid.source_pk, 25)]
    assert (expected.status, expected.created_by, expected.driver_id) == ("expected", "reconcile", busy.driver_id)
    assert expected.amount == Decimal(settings.CT4["MILESTONES"][25])
    assert claims[(fresh.source_pk, 5)].driver_id == driver.driver_id
    assert lonely.source_pk in backlog()

    before = snapshot()
    again = pipeline_reconcile(refresh_index=False)
    assert again.newly_linked == again.claims_created == again.newly_driver_mapped == 0
    assert again.skipped_not_due == 1 and snapshot() == before

    # The platform pays milestone 5: the import updates the expected row, never duplicates it,
    # and a later reconcile leaves the paid status alone.
    csv = tmp_csv("claims.csv", "lead_source_pk,driver_id,milestone,amount,status,claimed_at\n"
                                f"{paid.source_pk},{busy.driver_id},5,35.00,paid,2026-01-10 10:00\n")
    call_command("import_source", "claims", str(csv))
    assert Claim.objects.filter(lead_source_pk=paid.source_pk, milestone=5).get().status == "paid"
    assert pipeline_reconcile().claims_created == 0
    assert Claim.objects.get(lead_source_pk=paid.source_pk, milestone=5).status == "paid"
    assert Claim.objects.count() == 5


def test_reconcile_options_select_recent_and_limbo_leads():
    stranger(days_ago=3)
    stranger(days_ago=100)
    drivers_index_refresh()
    assert pipeline_reconcile(process_limbo=False).processed == 1
    assert pipeline_reconcile(process_recent=False, limbo_stages=["NO_DRIVER"]).processed == 0
    call_command("reconcile_cabinet_leads_pipeline", "--no-recent", "--limbo-stages", "NO_IDENTITY", "--json")
    assert IdentityMatchingJob.objects.count() == 2
