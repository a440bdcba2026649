"""recovery.review.listing: doubtful leads reach the review list, high risk first, then money at stake."""

from datetime import timedelta
from decimal import Decimal

import pytest

from identity.domain import milestone_total
from identity.index import drivers_index_refresh
from identity.tests.factories import make_trips
from recovery.models import KpiRedRecoveryQueue
from recovery.review.listing import review_queue
from recovery.review.rules import stored_plausible
from recovery.tests.factories import conflict, recover, weak

pytestmark = pytest.mark.django_db


def test_recovery_sends_conflicts_and_weak_matches_to_the_review_list():
    lead_c, a, b = conflict()
    lead_w, _ = weak()
    drivers_index_refresh()
    recover()
    reasons = dict(KpiRedRecoveryQueue.objects.values_list("lead_source_pk", "fail_reason"))
    assert reasons == {lead_c.source_pk: "CONFLICT_MULTIPLE_CANDIDATES", lead_w.source_pk: "WEAK_MATCH_ONLY"}
    rows = {row.source_pk: row for row in review_queue().rows}
    assert set(rows) == {lead_c.source_pk, lead_w.source_pk}
    assert rows[lead_c.source_pk].candidates == 2 and rows[lead_w.source_pk].candidates == 1
    assert review_queue(reason="WEAK_MATCH_ONLY").total == 1


def test_list_is_high_risk_first_then_money_at_stake():
    low, *_ = conflict(days_ago=60)
    medium_idle, *_ = conflict(days_ago=20)
    medium_earning, driver, _ = conflict(days_ago=25)
    high, *_ = conflict(days_ago=3)
    # The candidate drove 6 trips in the lead's 14-day window: milestones 1 and 5 reached.
    make_trips(driver, start=medium_earning.lead_date + timedelta(days=2), counts=[2, 2, 2])
    # Trips after the window earn nothing for this lead.
    make_trips(driver, {medium_earning.lead_date + timedelta(days=15): 30})
    drivers_index_refresh()
    recover()
    rows = review_queue().rows
    assert [r.source_pk for r in rows] == [high.source_pk, medium_earning.source_pk, medium_idle.source_pk,
                                           low.source_pk]
    by_pk = {r.source_pk: r for r in rows}
    amounts = milestone_total(), Decimal("60.00"), Decimal("0.00"), Decimal("0.00")
    assert [by_pk[pk].at_stake for pk in (high.source_pk, medium_earning.source_pk, medium_idle.source_pk,
                                          low.source_pk)] == list(amounts)
    assert milestone_total() == Decimal("160.00")
    assert [r.risk_level for r in rows] == ["high", "medium", "medium", "low"]
    assert review_queue(risk="medium").total == 2
    assert review_queue(limit=2, offset=2).total == 4
    assert [r.source_pk for r in review_queue(limit=2, offset=2).rows] == [medium_idle.source_pk, low.source_pk]


def test_a_stored_candidate_one_typo_off_alone_is_not_plausible():
    """The review screens read the matcher's rule (identity.fields.AGREEING_LEVELS): a key one typo off
    makes a candidate worth a look only when its score reaches the weak threshold."""
    different_name = {"field": "name", "level": "different"}
    typo = {"score": -15.0, "fields": [{"field": "document", "level": "one_typo"}, different_name]}
    exact = {"score": -15.0, "fields": [{"field": "phone", "level": "exact"}, different_name]}
    assert not stored_plausible(typo, weak_bits=-6.0)
    assert stored_plausible({**typo, "score": -5.0}, weak_bits=-6.0)
    assert stored_plausible(exact, weak_bits=-6.0)
