"""recovery.review.screen (and display): a lead beside each candidate, field by field, with the engine's evidence."""

from datetime import timedelta

import pytest

from identity.index import drivers_index_refresh
from identity.matching import RULE_VERSION
from identity.tests.factories import lima_today, make_trips
from recovery.review.screen import review_lead
from recovery.tests.factories import conflict, person_of, recover

pytestmark = pytest.mark.django_db


def test_review_screen_puts_the_lead_beside_each_candidate_field_by_field():
    lead, a, b = conflict(days_ago=4)
    make_trips(a, {lima_today() - timedelta(days=1): 3, lima_today() - timedelta(days=20): 9})
    drivers_index_refresh()
    recover()
    screen = review_lead(lead.source_pk)
    assert screen.in_review and screen.reason_code == "CONFLICT_MULTIPLE_CANDIDATES"
    assert screen.rule_version == RULE_VERSION and screen.score is not None
    assert {c.person_key for c in screen.candidates} == {person_of(a), person_of(b)}
    first = next(c for c in screen.candidates if c.person_key == person_of(a))
    rows = {row.field: row for row in first.rows}
    assert rows["phone"].cells[0].status == "agree" and rows["phone"].level == "exact"
    assert rows["name"].cells[0].status == "agree"
    assert rows["document"].cells[0].status == "missing"  # the lead has no DNI
    assert rows["park_id"].cells[0].value == "park-lima-norte"
    assert first.drivers[0].trips_last_14d == 3 and first.drivers[0].park_id == "park-lima-norte"
    # A disagreeing value is marked as such.
    lead.document = "40000999"
    lead.save()
    screen = review_lead(lead.source_pk)
    doc = {row.field: row for row in screen.candidates[0].rows}["document"]
    assert doc.cells[0].status == "disagree" and doc.level == "different"
