"""Human review of doubtful leads (CONFLICT_MULTIPLE_CANDIDATES, WEAK_MATCH_ONLY): the selectors
behind the review list and the review screen, and `review_decide`, which applies a decision.

A decision goes through the same services as an automatic match: identity.linking writes the
link, origin and judgements; recovery.queue marks the queue row matched; recovery.tracking
records the attempt. So the canonical rules live in one place, and a reviewed lead leaves the
backlog, the queue and the daily metrics exactly like a lead the recover job linked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from identity import linking
from identity import fields as registry
from identity.fields import AGREEING_FIELDS, shown_as
from identity.matching import RULE_VERSION, Scored, Thresholds
from identity.models import (
    LEADS_TABLE,
    CabinetLead,
    Driver,
    IdentityJudgement,
    IdentityLink,
    IdentityUnmatched,
    ReasonCode,
    Verdict,
)
from identity.resolution import lead_explain

REVIEW_REASONS = (ReasonCode.CONFLICT_MULTIPLE_CANDIDATES.value, ReasonCode.WEAK_MATCH_ONLY.value)
REVIEWER_GROUP = "reviewer"
REVIEW_PERMISSION = "identity.review_lead"
REVIEW_PERMISSION_CODENAME = "review_lead"
# A deferred lead stays in the list, below the undeferred ones, for this long.
DEFER_HOURS = 24
# Candidates shown side by side on the review screen (the matcher's top plausible ones).
MAX_CANDIDATES_SHOWN = 5
MANUAL_MATCH_RULE = "manual_review"
# Fields whose agreement makes a candidate plausible even with a low score (matching.Scored.key_agrees).
AGREEING_KEY_FIELDS = AGREEING_FIELDS


class Action:
    LINK = "link"
    NOT_THIS_PERSON = "not_this_person"
    NONE_OF_THESE = "none_of_these"
    DEFER = "defer"

    ALL = (LINK, NOT_THIS_PERSON, NONE_OF_THESE, DEFER)
    LABELS = {
        LINK: "Link to this candidate",
        NOT_THIS_PERSON: "Not this person",
        NONE_OF_THESE: "None of these",
        DEFER: "Defer",
    }


# --- Money at stake ----------------------------------------------------------------------


def _milestones() -> dict[int, Decimal]:
    from recovery.views import MILESTONE_AMOUNTS  # noqa: PLC0415 - recovery sits above identity

    return MILESTONE_AMOUNTS


def _claim_window_days() -> int:
    from recovery.views import CLAIM_WINDOW_DAYS  # noqa: PLC0415

    return CLAIM_WINDOW_DAYS


def milestone_total() -> Decimal:
    """Everything a lead can earn in its window: the sum of all milestone amounts."""
    return sum(_milestones().values(), Decimal("0"))


def earned_amount(trips: int) -> Decimal:
    """The milestone amounts `trips` trips in the window reach."""
    return sum((amount for m, amount in _milestones().items() if trips >= m), Decimal("0"))


def _earned_sql(trips: str) -> str:
    return " + ".join(f"CASE WHEN {trips} >= {m} THEN {amount} ELSE 0 END" for m, amount in _milestones().items())


# --- The review list ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewRow:
    source_pk: str
    reason_code: str
    lead_date: date
    park_id: str | None
    name: str
    risk_level: str
    window_open: bool
    candidates: int
    best_score: float | None
    earned: Decimal
    at_stake: Decimal
    deferred_until: datetime | None
    deferred_by: str | None
    snapshot_date: date


@dataclass
class ReviewPage:
    rows: list[ReviewRow]
    total: int


def _review_sql(where: str, order_and_limit: str) -> str:
    from recovery.views import TODAY, _risk_level  # noqa: PLC0415 - the views' own risk definition

    window = _claim_window_days()
    return f"""
WITH review AS (
    -- open conflict / weak-match leads that nobody has linked
    SELECT u.source_pk, u.reason_code, u.details, u.snapshot_date,
           l.lead_date, l.park_id, concat_ws(' ', l.first_name, l.middle_name, l.last_name) AS name
    FROM canon.identity_unmatched u
    JOIN public.module_ct_cabinet_leads l ON l.source_pk = u.source_pk
    WHERE u.source_table = %(leads)s AND u.status = 'open' AND u.reason_code = ANY(%(reasons)s)
      AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                      WHERE il.source_table = %(leads)s AND il.source_pk = u.source_pk)
),
candidate AS (
    -- each lead's plausible candidates (score above the weak threshold, or a key agreeing) not rejected
    SELECT r.source_pk, (c->>'person_key')::uuid AS person_key, (c->>'score')::float8 AS score
    FROM review r
    CROSS JOIN LATERAL jsonb_array_elements(coalesce(r.details->'candidates', '[]'::jsonb)) c
    WHERE NOT coalesce((c->>'excluded_by_judgement')::boolean, false)
      AND ((c->>'score')::float8 >= %(weak)s OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(coalesce(c->'fields', '[]'::jsonb)) f
            WHERE f->>'field' = ANY(%(key_fields)s) AND f->>'level' IN ('exact', 'one_typo')))
      AND NOT EXISTS (SELECT 1 FROM canon.identity_judgements j
                      WHERE j.source_table = %(leads)s AND j.source_pk = r.source_pk
                        AND j.person_key = (c->>'person_key')::uuid AND j.verdict = %(rejected)s)
),
candidate_trips AS (
    -- trips of each candidate's driver records in the lead's claim window (ops.person_window_trips,
    -- the one definition, installed by recovery.lead_window)
    SELECT c.source_pk, c.person_key, c.score, coalesce(sum(w.trips), 0)::bigint AS trips
    FROM candidate c
    JOIN review r ON r.source_pk = c.source_pk
    LEFT JOIN LATERAL ops.person_window_trips(c.person_key, r.lead_date) w ON true
    GROUP BY c.source_pk, c.person_key, c.score
),
per_lead AS (
    -- per lead: live candidates, the best score, the most any candidate has already earned
    SELECT ct.source_pk, count(*) AS candidates, max(ct.score) AS best_score,
           max({_earned_sql("ct.trips")})::numeric(12, 2) AS earned
    FROM candidate_trips ct
    GROUP BY ct.source_pk
),
last_judgement AS (
    -- each lead's latest judgement: a recent deferral pushes the lead down the list
    SELECT DISTINCT ON (j.source_pk) j.source_pk, j.verdict, j.decided_at, j.decided_by_name
    FROM canon.identity_judgements j
    WHERE j.source_table = %(leads)s AND j.source_pk IN (SELECT source_pk FROM per_lead)
    ORDER BY j.source_pk, j.decided_at DESC, j.id DESC
),
listed AS (
    SELECT r.source_pk, r.reason_code, r.lead_date, r.park_id, r.name,
           {_risk_level("r.lead_date")} AS risk_level,
           {TODAY} < r.lead_date + {window} AS window_open,
           p.candidates, p.best_score, p.earned,
           -- open window: the whole milestone schedule can still be earned; closed: what was earned
           CASE WHEN {TODAY} < r.lead_date + {window} THEN %(total)s::numeric(12, 2) ELSE p.earned END AS at_stake,
           CASE WHEN lj.verdict = %(defer)s AND lj.decided_at > now() - interval '{DEFER_HOURS} hours'
                THEN lj.decided_at + interval '{DEFER_HOURS} hours' END AS deferred_until,
           CASE WHEN lj.verdict = %(defer)s THEN lj.decided_by_name END AS deferred_by,
           r.snapshot_date
    FROM review r
    JOIN per_lead p ON p.source_pk = r.source_pk
    LEFT JOIN last_judgement lj ON lj.source_pk = r.source_pk
)
SELECT listed.*, count(*) OVER () AS total
FROM listed
WHERE true {where}
{order_and_limit}
"""


REVIEW_ORDER = """
ORDER BY (deferred_until IS NOT NULL),
         CASE risk_level WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END,
         at_stake DESC, earned DESC, lead_date, source_pk
"""


def _params(**extra) -> dict:
    return {
        "leads": LEADS_TABLE,
        "reasons": list(REVIEW_REASONS),
        "weak": Thresholds.from_settings().weak_bits,
        "key_fields": list(AGREEING_KEY_FIELDS),
        "rejected": Verdict.NOT_THIS_PERSON.value,
        "defer": Verdict.DEFER.value,
        "total": milestone_total(),
        **extra,
    }


def review_queue(
    *, reason: str | None = None, risk: str | None = None, park: str | None = None,
    limit: int = 50, offset: int = 0, source_pks: list[str] | None = None,
) -> ReviewPage:
    """The leads waiting for a reviewer, most urgent first.

    Order: leads not deferred in the last DEFER_HOURS first; then risk (high: the 14-day window
    is open); then money at stake, then money already earned by a candidate, then the lead
    whose window closes first. Money at stake is the whole milestone schedule while the window
    is open (all of it can still be earned once the lead is linked) and, once it closed, what
    the lead's best candidate already earned in the window (the milestones its trips reached).
    """
    conditions, params = [], _params(limit=limit, offset=offset)
    if reason:
        conditions.append("reason_code = %(reason)s")
        params["reason"] = reason
    if risk:
        conditions.append("risk_level = %(risk)s")
        params["risk"] = risk
    if park:
        conditions.append("park_id = %(park)s")
        params["park"] = park
    if source_pks is not None:
        conditions.append("source_pk = ANY(%(source_pks)s)")
        params["source_pks"] = source_pks
    where = "".join(f" AND {c}" for c in conditions)
    sql = _review_sql(where, REVIEW_ORDER + " LIMIT %(limit)s OFFSET %(offset)s")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [c.name for c in cursor.description]
        rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
    total = rows[0]["total"] if rows else (0 if offset == 0 else review_count(reason=reason, risk=risk, park=park))
    return ReviewPage(
        rows=[ReviewRow(**{k: v for k, v in row.items() if k != "total"}) for row in rows], total=total
    )


def review_count(*, reason: str | None = None, risk: str | None = None, park: str | None = None) -> int:
    return review_queue(reason=reason, risk=risk, park=park, limit=1).total


def review_parks() -> list[str]:
    """Parks of the leads waiting for review (for the list's filter)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT l.park_id FROM canon.identity_unmatched u
            JOIN public.module_ct_cabinet_leads l ON l.source_pk = u.source_pk
            WHERE u.source_table = %s AND u.status = 'open' AND u.reason_code = ANY(%s) AND l.park_id IS NOT NULL
            ORDER BY 1
            """,
            [LEADS_TABLE, list(REVIEW_REASONS)],
        )
        return [row[0] for row in cursor.fetchall()]


def backlog_count() -> int:
    """The red KPI now: leads with no identity link and no claim."""
    from recovery.queue import backlog_count as count  # noqa: PLC0415

    return count()


# --- The review screen -------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    value: str
    status: str  # agree, near, disagree, missing, info


@dataclass
class FieldRow:
    field: str
    label: str
    lead_value: str
    cells: list[Cell]
    # The lead has a value, but normalization found nothing usable in it (a placeholder, junk).
    lead_unusable: bool = False
    level: str | None = None
    bits: float | None = None
    shared_by: int | None = None


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


def _rows_shown() -> tuple[tuple[str, str], ...]:
    """The registry's fields a lead carries (name first), then the park as context."""
    fields = sorted((f for f in registry.FIELDS.values() if f.lead_column), key=lambda f: f.name != "name")
    return (*((f.name, f.label) for f in fields), ("park_id", "Park"))


def _plausible(scored: Scored, thresholds: Thresholds) -> bool:
    """As the matcher has it: a key agrees, or the score is above the weak threshold."""
    return scored.key_agrees or scored.bits >= thresholds.weak_bits


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
    shown = [s for s in decision.candidates if not s.excluded and _plausible(s, thresholds)][:MAX_CANDIDATES_SHOWN]
    excluded = [s for s in decision.candidates if s.excluded]
    records = explanation.records
    driver_ids = [r.driver_id for s in shown + excluded for r in records.get(s.person_key, [])]
    raw = Driver.objects.in_bulk(driver_ids)
    trips = _driver_trips(driver_ids, lead.lead_date)
    window = _claim_window_days()
    today = linking.lima_today()
    window_open = today < lead.lead_date + timedelta(days=window)

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
            rows=_field_rows(lead, keys, scored, person_records, raw, explanation.record_levels),
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
        window_last_date=lead.lead_date + timedelta(days=window - 1),
        at_stake=milestone_total() if window_open else best_earned,
    )


def _driver_trips(driver_ids: list[str], lead_date: date) -> dict[str, tuple[int, int]]:
    """Per driver: trips in the last 14 days (today included) and in the lead's claim window
    (ops.in_claim_window, installed by recovery.lead_window)."""
    if not driver_ids:
        return {}
    today = linking.lima_today()
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


def _field_rows(lead: CabinetLead, keys, scored: Scored, person_records, raw: dict, record_levels: dict) -> list[FieldRow]:
    evidence = {f.field: f for f in scored.fields}
    rows = []
    for name, label in _rows_shown():
        lead_value = _lead_display(lead, name)
        cells = [_cell(name, lead, record, raw.get(record.driver_id),
                       record_levels.get((scored.person_key, record.driver_id), {})) for record in person_records]
        ev = evidence.get(name)
        unusable = bool(lead_value) and name in AGREEING_FIELDS and getattr(keys, name) is None
        rows.append(FieldRow(name, label, lead_value, cells, unusable, ev.level if ev else None,
                             round(ev.bits, 1) if ev else None, ev.shared_by if ev else None))
    return rows


def _lead_display(lead: CabinetLead, name: str) -> str:
    if name == "name":
        return " ".join(p for p in (lead.first_name, lead.middle_name, lead.last_name) if p) or ""
    value = getattr(lead, name)
    return "" if value is None else str(value)


def _driver_display(driver: Driver | None, record, name: str) -> str:
    if name == "name":
        if driver is not None:
            return " ".join(p for p in (driver.first_name, driver.middle_name, driver.last_name) if p)
        return " ".join(record.given_tokens + record.surname_tokens)
    if name == "document":
        values = [getattr(driver, "document", None) or record.document]
        licence = getattr(driver, "license_number", None)
        if licence:
            values.append(f"licence {licence}")
        return " / ".join(v for v in values if v)
    value = getattr(driver, name, None) if driver is not None else getattr(record, name, None)
    return "" if value is None else str(value)


def _cell(name: str, lead: CabinetLead, record, driver: Driver | None, levels: dict[str, str]) -> Cell:
    """A driver record's value with the engine's own verdict on it (identity.fields levels)."""
    shown = _driver_display(driver, record, name)
    if name == "park_id":
        return Cell(shown, "agree" if shown and shown == (lead.park_id or "") else "info")
    return Cell(shown, shown_as(name, levels.get(name)))


# --- Deciding ------------------------------------------------------------------------------


@dataclass
class ReviewOutcome:
    status: str  # linked, rejected, deferred, already_linked, stale, invalid, not_found
    message: str
    source_pk: str
    person_keys: list[str] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.status in ("linked", "rejected", "deferred")


def review_decide(
    *, source_pk: str, action: str, user, person_key: str | None = None, seen: int | None = None, note: str = "",
) -> ReviewOutcome:
    """Apply a reviewer's decision on a lead, all or nothing.

    - link: the lead is linked to `person_key` through identity.linking.leads_link (decided_by =
      the reviewer's username, origin written, unmatched row resolved), the queue row is marked
      matched and the attempt tracked, as the recover job does for a lead linked elsewhere;
    - not_this_person: a negative judgement for `person_key` (no automatic run links them again);
    - none_of_these: a negative judgement for every candidate still standing;
    - defer: a judgement without a person; the lead stays listed, below the others, DEFER_HOURS.

    Every decision is also stored as a judgement (who and when). The lead's row is locked first,
    so two decisions on one lead run one after the other; the second finds the lead linked
    (already_linked) or decided since the reviewer's page was drawn (stale, when `seen`, the
    newest judgement id the page showed, is given) and changes nothing.
    """
    if action not in Action.ALL:
        return ReviewOutcome("invalid", f"Unknown action {action!r}.", source_pk)
    with transaction.atomic():
        if not _lead_lock(source_pk):
            return ReviewOutcome("not_found", f"There is no lead {source_pk}.", source_pk)
        existing = IdentityLink.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).first()
        if existing is not None:
            return _already_linked(source_pk, existing)
        if seen is not None:
            newer = (IdentityJudgement.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk, id__gt=seen)
                     .exclude(verdict=Verdict.DEFER).order_by("-id").first())
            if newer is not None:
                return ReviewOutcome(
                    "stale",
                    f"{newer.decided_by_name} decided \u201c{newer.get_verdict_display()}\u201d on lead {source_pk} "
                    f"at {timezone.localtime(newer.decided_at):%Y-%m-%d %H:%M} after you opened it. "
                    "Nothing was applied: look at the lead again.",
                    source_pk,
                )
        explanation = lead_explain(source_pk)
        if explanation is None:
            return ReviewOutcome("not_found", f"There is no lead {source_pk}.", source_pk)
        decision, thresholds = explanation.decision, explanation.thresholds
        live = {s.person_key: s for s in decision.candidates if not s.excluded}
        username = user.get_username()

        if action == Action.DEFER:
            linking.judgement_record(source_pk=source_pk, person_key=None, verdict=Verdict.DEFER, user=user, note=note)
            return ReviewOutcome("deferred", f"Lead {source_pk} deferred for {DEFER_HOURS} hours.", source_pk)

        if action == Action.NONE_OF_THESE:
            standing = sorted(
                {s.person_key for s in live.values() if _plausible(s, thresholds)} | _stored_candidates(source_pk)
            )
            for key in standing:
                linking.judgement_record(source_pk=source_pk, person_key=key, verdict=Verdict.NOT_THIS_PERSON,
                                         user=user, note=note)
            return ReviewOutcome(
                "rejected", f"Lead {source_pk}: {len(standing)} candidate(s) rejected; none will be linked automatically.",
                source_pk, standing,
            )

        person_key = str(person_key or "")
        if person_key not in live and not (action == Action.NOT_THIS_PERSON and person_key in _stored_candidates(source_pk)):
            return ReviewOutcome("invalid", f"That person is not a standing candidate of lead {source_pk}.", source_pk)

        if action == Action.NOT_THIS_PERSON:
            linking.judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.NOT_THIS_PERSON,
                                     user=user, note=note)
            return ReviewOutcome("rejected", f"Lead {source_pk}: noted, it is not person {person_key}.", source_pk,
                                 [person_key])

        chosen = live[person_key]
        evidence = decision.evidence(thresholds)
        evidence["review"] = {"action": Action.LINK, "decided_by": username, "person_key": person_key,
                              "automatic_outcome": str(decision.outcome), "candidate": chosen.as_dict()}
        written = linking.leads_link(
            links=[linking.LeadLink(source_pk=source_pk, person_key=person_key, match_rule=MANUAL_MATCH_RULE,
                                    match_score=chosen.bits, confidence_level="manual", evidence=evidence,
                                    rule_version=RULE_VERSION)],
            decided_by=username,
        )
        if written.already_linked:  # an automatic job got there first (it does not lock the lead)
            return _already_linked(
                source_pk, IdentityLink.objects.get(source_table=LEADS_TABLE, source_pk=source_pk)
            )
        linking.judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.LINK, user=user,
                                 note=note)
        _drain(source_pk, person_key)
        return ReviewOutcome("linked", f"Lead {source_pk} linked to person {person_key}.", source_pk, [person_key])


def _drain(source_pk: str, person_key: str) -> None:
    """What the recover job does for a lead linked elsewhere: queue row matched, attempt tracked."""
    from recovery.queue import queue_mark_linked  # noqa: PLC0415 - recovery sits above identity
    from recovery.tracking import attempts_record  # noqa: PLC0415

    queue_mark_linked(source_pks=[source_pk])
    attempts_record(outcomes={}, linked={source_pk: person_key})


def _lead_lock(source_pk: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM public.module_ct_cabinet_leads WHERE source_pk = %s FOR UPDATE", [source_pk])
        return cursor.fetchone() is not None


def _already_linked(source_pk: str, existing: IdentityLink) -> ReviewOutcome:
    by = "the automatic matching" if existing.decided_by == "system" else existing.decided_by
    return ReviewOutcome(
        "already_linked",
        f"Lead {source_pk} was already linked to person {existing.person_id} by {by} at "
        f"{timezone.localtime(existing.linked_at):%Y-%m-%d %H:%M}. Your decision was not applied.",
        source_pk, [str(existing.person_id)],
    )


def _stored_candidates(source_pk: str) -> set[str]:
    """Plausible candidates in the lead's unmatched record (what the review list counts)."""
    unmatched = IdentityUnmatched.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).first()
    if unmatched is None:
        return set()
    weak = Thresholds.from_settings().weak_bits
    keys = set()
    for c in (unmatched.details or {}).get("candidates", []):
        if c.get("excluded_by_judgement") or not c.get("person_key"):
            continue
        agrees = any(f.get("field") in AGREEING_KEY_FIELDS and f.get("level") in ("exact", "one_typo")
                     for f in c.get("fields", []))
        if agrees or (c.get("score") is not None and c["score"] >= weak):
            keys.add(str(c["person_key"]))
    return keys


# --- The reviewer group --------------------------------------------------------------------


def reviewer_group_ensure(*, apps_labels: tuple[str, ...] = ("identity", "recovery")) -> None:
    """Create (or bring up to date) the `reviewer` group and the `identity.review_lead` permission.

    The group may review leads and view every identity and recovery table in the admin, nothing
    else: no add, change or delete anywhere. Idempotent; runs after every migrate.
    """
    from django.apps import apps  # noqa: PLC0415
    from django.contrib.auth.models import Group, Permission  # noqa: PLC0415
    from django.contrib.contenttypes.models import ContentType  # noqa: PLC0415

    review, _ = Permission.objects.get_or_create(
        codename=REVIEW_PERMISSION_CODENAME,
        content_type=ContentType.objects.get_for_model(IdentityJudgement),
        defaults={"name": "Can review doubtful leads and decide them"},
    )
    wanted = [review]
    for label in apps_labels:
        for model in apps.get_app_config(label).get_models():
            content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
            permission, _ = Permission.objects.get_or_create(
                codename=f"view_{model._meta.model_name}", content_type=content_type,
                defaults={"name": f"Can view {model._meta.verbose_name_raw}"},
            )
            wanted.append(permission)
    group, _ = Group.objects.get_or_create(name=REVIEWER_GROUP)
    group.permissions.set(wanted)
