"""Fixtures of the recovery tests."""

import time

import pytest

from recovery.review import decide as decide_module
from recovery.tests.factories import reviewer


@pytest.fixture
def ana(db):
    """A reviewer: a staff user in the reviewer group."""
    return reviewer("ana.revisora")


@pytest.fixture
def slow_decision_checks(monkeypatch):
    """Widen the window between a review decision's checks and its writes (0.5 s after the lead is
    explained): without the lead's row lock, two decisions at once would both pass the checks."""
    explain = decide_module.lead_explain

    def slow_explain(source_pk):
        result = explain(source_pk)
        time.sleep(0.5)
        return result

    monkeypatch.setattr(decide_module, "lead_explain", slow_explain)
