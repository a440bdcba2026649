"""Money at stake on a doubtful lead: the whole milestone schedule while its claim window is open
(all of it can still be earned once the lead is linked); once closed, what its best candidate
already earned in the window. The amounts and the window are identity.domain's."""

from __future__ import annotations

from decimal import Decimal

from identity.domain import milestone_total, window_open_sql


def at_stake(*, window_open: bool, earned: Decimal) -> Decimal:
    return milestone_total() if window_open else earned


def at_stake_sql(*, lead_date: str, earned: str) -> str:
    """at_stake as SQL over a lead date and an earned amount (the parameter `total` is milestone_total())."""
    return f"CASE WHEN {window_open_sql(lead_date)} THEN %(total)s::numeric(12, 2) ELSE {earned} END"
