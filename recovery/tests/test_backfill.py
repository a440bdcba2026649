"""The backfill job (recovery.jobs.backfill): missing and not-earliest origins; --dry-run writes nothing."""


import pytest

from identity.models import IdentityOrigin
from identity.tests.factories import link_lead, make_lead, make_person, set_origin
from recovery.jobs.backfill import origins_backfill
from recovery.tests.factories import snapshot

pytestmark = pytest.mark.django_db


def test_backfill_writes_missing_and_not_earliest_origins_and_dry_run_writes_nothing():
    missing, wrong, fine = make_person(), make_person(), make_person()
    link_lead(make_lead(days_ago=5), missing)
    early, late = make_lead(days_ago=30), make_lead(days_ago=2)
    link_lead(early, wrong)
    link_lead(late, wrong)
    set_origin(wrong, late)
    ok = make_lead(days_ago=9)
    link_lead(ok, fine)
    set_origin(fine, ok)

    before = snapshot()
    dry = origins_backfill(dry_run=True)
    assert (dry.persons, dry.missing_origin, dry.not_earliest, dry.origins_written) == (2, 1, 1, 2)
    assert snapshot() == before

    result = origins_backfill()
    assert result.origins_written == 2
    assert IdentityOrigin.objects.get(person=wrong).origin_source_id == early.source_pk
    assert IdentityOrigin.objects.filter(person=missing).exists()

    before = snapshot()
    assert origins_backfill().persons == 0 and snapshot() == before
