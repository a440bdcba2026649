"""Fixtures of the recovery tests."""

import pytest

from recovery.tests.factories import reviewer


@pytest.fixture
def ana(db):
    """A reviewer: a staff user in the reviewer group."""
    return reviewer("ana.revisora")
