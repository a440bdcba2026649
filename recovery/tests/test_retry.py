"""The retry job (recovery.jobs.retry): missing links and origins, every lead tracked, filters and limit."""


import pytest
from django.core.management import call_command

from identity.index import drivers_index_refresh
from identity.models import IdentityLink, IdentityOrigin
from identity.tests.factories import link_lead, make_lead, make_person, set_origin
from recovery.jobs.retry import identity_matching_retry
from recovery.models import IdentityMatchingJob
from recovery.tests.factories import snapshot, stranger, twin

pytestmark = pytest.mark.django_db


def test_retry_creates_missing_links_and_origins_and_tracks_every_lead():
    _, no_identity = twin(days_ago=2)
    lonely = stranger(days_ago=30)
    person = make_person()
    no_origin = make_lead(days_ago=50)
    link_lead(no_origin, person)
    other = make_person()
    first, later = make_lead(days_ago=40), make_lead(days_ago=3)
    link_lead(first, other)
    link_lead(later, other)
    set_origin(other, later)  # not the earliest lead: inconsistent
    drivers_index_refresh()

    result = identity_matching_retry()

    assert result.processed == 5 and result.newly_linked == 1 and result.failed == 1
    assert result.origins_written == 2 and result.by_reason == {"NO_CANDIDATES": 1}
    assert IdentityLink.objects.filter(source_pk=no_identity.source_pk).exists()
    assert IdentityOrigin.objects.get(person=person).origin_source_id == no_origin.source_pk
    assert IdentityOrigin.objects.get(person=other).origin_source_id == first.source_pk
    jobs = dict(IdentityMatchingJob.objects.values_list("source_id", "status"))
    assert jobs == {no_identity.source_pk: "matched", lonely.source_pk: "failed", no_origin.source_pk: "matched",
                    first.source_pk: "matched", later.source_pk: "matched"}

    before = snapshot()
    again = identity_matching_retry()
    assert again.processed == 0 and again.skipped_not_due == 1 and snapshot() == before


def test_retry_filters_and_limit():
    twin(days_ago=2)
    stranger(days_ago=20)
    stranger(days_ago=100)
    drivers_index_refresh()
    assert identity_matching_retry(risk_level="low").processed == 1
    assert identity_matching_retry(gap_reason="no_origin").processed == 0
    result = identity_matching_retry(limit=1)
    assert result.processed == 1 and result.newly_linked == 1  # high risk first
    call_command("retry_identity_matching", "5", "--risk-level", "medium", "--json")
    assert IdentityMatchingJob.objects.count() == 3
