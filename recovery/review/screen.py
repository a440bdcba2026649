"""The review screen's selector: one lead beside each plausible candidate's driver records, field by
field, with the matcher's evidence, the score, the rule version and the money at stake."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from identity.domain import CLAIM_WINDOW_DAYS, earned_amount, lima_today
from identity.matching import RULE_VERSION, Scored, Thresholds
from identity.models import (
    LEADS_TABLE,
    REVIEW_REASONS,
    CabinetLead,
    Driver,
    IdentityJudgement,
    IdentityLink,
    IdentityUnmatched,
    Verdict,
)
from identity.resolution import lead_explain
from recovery.review.display import FieldRow, field_rows
from recovery.review.money import at_stake
from recovery.review.rules import DEFER_HOURS, MAX_CANDIDATES_SHOWN, scored_plausible


@dataclass
class DriverSummary:
    driver_id: str
    park_id: str | None
    status: str | None
    hire_date: date | None
    trips_last_14d: int
    trips_in_window: int


@dataclass
class CandidateReview:
    rank: int
    person_key: str
    score: float
    corroborated: bool
    drivers: list[DriverSummary]
    rows: list[FieldRow]
    trips_in_window: int
    earned: Decimal
    rejected_by: str | None = None
    rejected_at: datetime | None = None


@dataclass
class LeadReview:
    lead: CabinetLead
    reason_code: str | None
    snapshot_date: date | None
    outcome: str
    score: float | None
    margin: float | None
    rule_version: str
    thresholds: Thresholds
    candidates: list[CandidateReview]
    rejected: list[CandidateReview]
    link: IdentityLink | None
    judgements: list[IdentityJudgement]
    last_judgement_id: int
    deferred_until: datetime | None
    window_open: bool
    window_last_date: date
    at_stake: Decimal

    @property
    def in_review(self) -> bool:
        return self.link is None and self.reason_code in REVIEW_REASONS and bool(self.candidates)


def review_lead(source_pk: str) -> LeadReview | None:
    """Everything the review screen shows for one lead: its values beside each candidate's driver
    records, field by field, with the matcher's evidence, the score and the rule version."""
    lead = CabinetLead.objects.filter(source_pk=source_pk).first()
    explanation = lead_explain(source_pk)
    if lead is None or explanation is None:
        return None
    decision, keys, thresholds = explanation.decision, explanation.lead, explanation.thresholds
    unmatched = IdentityUnmatched.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).first()
    judgements = list(
        IdentityJudgement.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).order_by("-decided_at", "-id")
    )
    rejections = {}
    for j in reversed(judgements):
        if j.verdict == Verdict.NOT_THIS_PERSON and j.person_id:
            rejections[str(j.person_id)] = j
    plausible = [s for s in decision.candidates if not s.excluded and scored_plausible(s, thresholds)]
    shown = plausible[:MAX_CANDIDATES_SHOWN]
    excluded = [s for s in decision.candidates if s.excluded]
    records = explanation.records
    driver_ids = [r.driver_id for s in shown + excluded for r in records.get(s.person_key, [])]
    raw = Driver.objects.in_bulk(driver_ids)
    trips = _driver_trips(driver_ids, lead.lead_date)
    window_open = lima_today() < lead.lead_date + timedelta(days=CLAIM_WINDOW_DAYS)

    def build(rank: int, scored: Scored) -> CandidateReview:
        person_records = records.get(scored.person_key, [])
        summaries = [
            DriverSummary(r.driver_id, r.park_id, getattr(raw.get(r.driver_id), "status", None),
                          getattr(raw.get(r.driver_id), "hire_date", None), *trips.get(r.driver_id, (0, 0)))
            for r in person_records
        ]
        in_window = sum(d.trips_in_window for d in summaries)
        candidate = CandidateReview(
            rank=rank, person_key=scored.person_key, score=scored.bits, corroborated=scored.corroborated,
            drivers=summaries,
            rows=field_rows(lead, keys, scored, person_records, raw, explanation.record_levels),
            trips_in_window=in_window, earned=earned_amount(in_window),
        )
        if rejection := rejections.get(scored.person_key):
            candidate.rejected_by, candidate.rejected_at = rejection.decided_by_name, rejection.decided_at
        return candidate

    candidates = [build(n, s) for n, s in enumerate(shown, start=1)]
    last = judgements[0] if judgements else None
    deferred_until = None
    if last is not None and last.verdict == Verdict.DEFER:
        until = last.decided_at + timedelta(hours=DEFER_HOURS)
        deferred_until = until if until > timezone.now() else None
    best_earned = max((c.earned for c in candidates), default=Decimal("0"))
    return LeadReview(
        lead=lead,
        reason_code=unmatched.reason_code if unmatched and unmatched.status == "open" else None,
        snapshot_date=unmatched.snapshot_date if unmatched else None,
        outcome=str(decision.outcome),
        score=decision.score,
        margin=None if decision.margin is None or math.isinf(decision.margin) else decision.margin,
        rule_version=RULE_VERSION,
        thresholds=thresholds,
        candidates=candidates,
        rejected=[build(0, s) for s in excluded],
        link=IdentityLink.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).first(),
        judgements=judgements,
        last_judgement_id=max((j.id for j in judgements), default=0),
        deferred_until=deferred_until,
        window_open=window_open,
        window_last_date=lead.lead_date + timedelta(days=CLAIM_WINDOW_DAYS - 1),
        at_stake=at_stake(window_open=window_open, earned=best_earned),
    )


def _driver_trips(driver_ids: list[str], lead_date: date) -> dict[str, tuple[int, int]]:
    """Per driver: trips in the last 14 days (today included) and in the lead's claim window
    (ops.in_claim_window, installed by recovery.lead_window)."""
    if not driver_ids:
        return {}
    today = lima_today()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT driver_id,
                   coalesce(sum(trips) FILTER (WHERE date > %(today)s - 14 AND date <= %(today)s), 0),
                   coalesce(sum(trips) FILTER (WHERE ops.in_claim_window(date, %(lead_date)s)), 0)
            FROM public.driver_trips
            WHERE driver_id = ANY(%(ids)s)
              AND ((date > %(today)s - 14 AND date <= %(today)s) OR ops.in_claim_window(date, %(lead_date)s))
            GROUP BY driver_id
            """,
            {"ids": driver_ids, "today": today, "lead_date": lead_date},
        )
        return {row[0]: (int(row[1]), int(row[2])) for row in cursor.fetchall()}
