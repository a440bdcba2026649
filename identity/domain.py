"""The business definitions every layer reads: the park's time zone and day, the claim window, the
milestone schedule and its amounts, a lead's risk level, and the earliest lead linked to a person.
One home: identity, recovery's views, jobs and review screens all import these; nothing here
imports the rest of the project.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils import timezone

# The source tables' names in canon.identity_links.source_table (SPEC §2).
LEADS_TABLE = "module_ct_cabinet_leads"
DRIVERS_TABLE = "drivers"

# The park's time zone: a lead's date is the calendar day of its creation in Lima.
PARK_TIME_ZONE = "America/Lima"
PARK_ZONE = ZoneInfo(PARK_TIME_ZONE)
# "Today" in SQL is the park's calendar day. Django runs sessions in UTC, so current_date would be
# wrong for five hours every evening.
TODAY = f"((now() AT TIME ZONE '{PARK_TIME_ZONE}')::date)"

# Days after the lead date in which trips count toward milestones.
CLAIM_WINDOW_DAYS = int(settings.CT4["CLAIM_WINDOW_DAYS"])
# The milestones the platform pays for (trips in the claim window); the claims table accepts only these.
MILESTONES = (1, 5, 25)
# A lead stays "medium" risk up to this many days after its date, then becomes "low".
MEDIUM_RISK_MAX_DAYS = 45


def lima_today() -> date:
    """The park's calendar day now."""
    return timezone.now().astimezone(PARK_ZONE).date()


def _milestone_amounts() -> dict[int, Decimal]:
    """Milestone -> amount from settings, in milestone order."""
    amounts = {int(m): Decimal(str(a)) for m, a in settings.CT4["MILESTONES"].items()}
    if set(amounts) != set(MILESTONES):
        raise ImproperlyConfigured(f"CT4['MILESTONES'] must define exactly the milestones {MILESTONES}")
    return dict(sorted(amounts.items()))


MILESTONE_AMOUNTS = _milestone_amounts()


def milestone_total() -> Decimal:
    """Everything a lead can earn in its window: the sum of all milestone amounts."""
    return sum(MILESTONE_AMOUNTS.values(), Decimal("0"))


def earned_amount(trips: int) -> Decimal:
    """The milestone amounts `trips` trips in the window reach."""
    return sum((amount for m, amount in MILESTONE_AMOUNTS.items() if trips >= m), Decimal("0"))


def earned_sql(trips: str) -> str:
    """earned_amount as a SQL expression over the column or expression `trips`."""
    return " + ".join(f"CASE WHEN {trips} >= {m} THEN {amount} ELSE 0 END" for m, amount in MILESTONE_AMOUNTS.items())


def window_open_sql(lead_date: str) -> str:
    """True while the lead's claim window is open (today is within CLAIM_WINDOW_DAYS of lead_date)."""
    return f"{TODAY} < {lead_date} + {CLAIM_WINDOW_DAYS}"


class RiskLevel(models.TextChoices):
    HIGH = "high", "14-day claim window open"
    MEDIUM = "medium", f"Up to {MEDIUM_RISK_MAX_DAYS} days old"
    LOW = "low", f"Older than {MEDIUM_RISK_MAX_DAYS} days"


def risk_level_sql(lead_date: str) -> str:
    """A lead's risk level as a SQL expression over its `lead_date` (SPEC §2)."""
    return (
        f"CASE WHEN {TODAY} - {lead_date} < {CLAIM_WINDOW_DAYS} THEN '{RiskLevel.HIGH}'"
        f" WHEN {TODAY} - {lead_date} <= {MEDIUM_RISK_MAX_DAYS} THEN '{RiskLevel.MEDIUM}'"
        f" ELSE '{RiskLevel.LOW}' END"
    )


# The earliest lead linked to each person, the lead its origin must name (SPEC §2): the lead's
# created_at, ties broken by source_pk. Rows (person_key, source_pk); identity.linking.origins_refresh
# writes origins in the same order, and the guardrail checks them with a copy of its own.
EARLIEST_LEAD_SQL = f"""
    SELECT DISTINCT ON (il.person_key) il.person_key, il.source_pk
    FROM canon.identity_links il
    JOIN public.module_ct_cabinet_leads c ON c.source_pk = il.source_pk
    WHERE il.source_table = '{LEADS_TABLE}'
    ORDER BY il.person_key, c.created_at, il.source_pk"""
