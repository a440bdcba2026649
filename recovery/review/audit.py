"""Audit sampling: a stratified random sample of automatic lead links (by rule and score band) and of
leads scored just below the link threshold, stored as audit items for a blind verdict (docs/review.md,
"Audit sampling"). After each matching or recovery run that made links, a sample of that run's links is
drawn (audit_sample_after_run, on identity.runs.job_run_succeeded). A "not the same person" verdict on a
link undoes that link (recovery.review.undo), in the verdict's transaction, as the reviewer who gave it;
a "same person" verdict on a link stores a link judgement, so both are labels for the matching model
(identity.estimate.labels_load)."""

from __future__ import annotations

import json
import logging
import math
import secrets
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from identity import linking
from identity.matching import Thresholds
from identity.models import LEADS_TABLE, JobRun, ReasonCode, UndoneVia, Verdict
from identity.runs import JobLocked, job_run, safe_error
from recovery.db import sql_rows
from recovery.jobs.reconcile import JOB as RECONCILE_JOB
from recovery.jobs.recover import JOB as RECOVER_JOB
from recovery.jobs.retry import JOB as RETRY_JOB
from recovery.models import AuditItem, AuditKind, AuditVerdict
from recovery.review.undo import UndoOutcome, link_undo

JOB_NAME = "audit_sample"
logger = logging.getLogger("ct4.jobs")
# The jobs that write automatic lead links, each with the key of its run's counts that says how many
# links that run wrote (not the ones found already made). match_leads names its runs "match_leads",
# or "match_leads[i/n]" for one shard of a parallel run (identity.resolution.leads_match).
LINKING_JOBS = {"match_leads": "linked", RECOVER_JOB: "linked_now", RETRY_JOB: "newly_linked",
                RECONCILE_JOB: "newly_linked"}
AFTER_RUN_TRIGGER = "after_run"
# The score bands of the link strata, in bits (the evidence's score): (lower bound, upper bound, name),
# lower bound included. The only place they are declared; the sampler and the report read them.
SCORE_BANDS: tuple[tuple[float | None, float | None, str], ...] = (
    (None, 12.0, "<12"),
    (12.0, 20.0, "12-20"),
    (20.0, 30.0, "20-30"),
    (30.0, None, "30+"),
)
# "Just below the threshold": an open conflict / weak-match lead whose score is under the link
# threshold by at most this many bits (its best candidate is the person audited).
BELOW_THRESHOLD_BITS = 6.0
BELOW_THRESHOLD_STRATUM = "below_threshold"
BELOW_THRESHOLD_REASONS = (ReasonCode.WEAK_MATCH_ONLY.value, ReasonCode.CONFLICT_MULTIPLE_CANDIDATES.value)
# The score of a link: the evidence's, else the link's own column.
LINK_SCORE_SQL = "coalesce((l.evidence->>'score')::float8, l.match_score)"


def score_band(score: float | None) -> str:
    """The band of a score (SCORE_BANDS); a link without a score falls in the lowest band."""
    for low, high, name in SCORE_BANDS:
        if (low is None or (score is not None and score >= low)) and (high is None or score is None or score < high):
            return name
    return SCORE_BANDS[-1][2]


def band_sql(score: str) -> str:
    """score_band in SQL over the expression `score`."""
    whens = [f"WHEN {score} < {high} THEN '{name}'" for _, high, name in SCORE_BANDS if high is not None]
    return f"CASE WHEN {score} IS NULL THEN '{SCORE_BANDS[0][2]}' {' '.join(whens)} ELSE '{SCORE_BANDS[-1][2]}' END"


def audit_settings() -> dict:
    return {"precision_half_width": 0.005, "confidence": 0.95, "expected_proportion": 0.5, "max_per_run": 200,
            "precision_target": 0.999, "sample_after_runs": True, **getattr(settings, "CT4_AUDIT", {})}


def sample_size(*, population: int, half_width: float, confidence: float, proportion: float = 0.5) -> int:
    """Items to judge in a stratum of `population` for a `confidence` interval of +/- `half_width` on a
    proportion near `proportion`: n0 = z^2 p (1 - p) / e^2, then the finite population correction
    n = n0 / (1 + (n0 - 1) / N), rounded up, at most N."""
    if population <= 0:
        return 0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    n0 = z * z * proportion * (1 - proportion) / (half_width * half_width)
    return min(population, math.ceil(n0 / (1 + (n0 - 1) / population)))


def allocate(wanted: dict[str, int], *, cap: int) -> dict[str, int]:
    """Cut the strata's wanted draws down to `cap` in all, evenly: each stratum gets an equal share,
    a stratum that wants less gives the rest to the others (so every estimate, per rule and band and
    below the threshold, gets its sample, however small its population). Deterministic: when fewer
    items are left than strata, the strata that still want most get one each (ties by name)."""
    given = dict.fromkeys(wanted, 0)
    if sum(wanted.values()) <= cap:
        return dict(wanted)
    asking, left = sorted(h for h, n in wanted.items() if n > 0), cap
    while left > 0 and asking:
        share = left // len(asking)
        if share == 0:
            for h in sorted(asking, key=lambda h: (-(wanted[h] - given[h]), h))[:left]:
                given[h] += 1
            break
        for h in asking:
            take = min(share, wanted[h] - given[h])
            given[h] += take
            left -= take
        asking = [h for h in asking if given[h] < wanted[h]]
    return given


@dataclass
class StratumPlan:
    stratum: str
    kind: str
    population: int  # links (or below-threshold leads) in the stratum
    target: int  # the sample the settings ask for (sample_size)
    already: int  # sampled before (never drawn again)
    drawn: int = 0


@dataclass
class AuditSample:
    seed: str
    run_id: int | None
    source_run_id: int | None
    strata: list[StratumPlan] = field(default_factory=list)

    @property
    def drawn(self) -> int:
        return sum(s.drawn for s in self.strata)

    def as_dict(self) -> dict:
        return {"seed": self.seed, "run_id": self.run_id, "source_run_id": self.source_run_id, "drawn": self.drawn,
                "strata": [asdict(s) for s in self.strata]}


def _population_sql(window: bool) -> str:
    link_window = "AND l.linked_at >= %(start)s AND l.linked_at <= %(end)s" if window else ""
    below_window = "AND u.updated_at >= %(start)s AND u.updated_at <= %(end)s" if window else ""
    return f"""
    -- automatic lead links, stratum <rule>|<score band>
    SELECT l.source_pk, l.person_key, %(link)s AS kind, l.match_rule || '|' || {band_sql(LINK_SCORE_SQL)} AS stratum
    FROM canon.identity_links l
    WHERE l.source_table = %(leads)s AND l.decided_by = 'system' {link_window}
    UNION ALL
    -- open conflict / weak-match leads just below the link threshold, with their best candidate
    SELECT u.source_pk, (u.details->'candidates'->0->>'person_key')::uuid, %(below)s, %(below)s
    FROM canon.identity_unmatched u
    WHERE u.source_table = %(leads)s AND u.status = 'open' AND u.reason_code = ANY(%(reasons)s)
      AND u.details->'candidates'->0->>'person_key' IS NOT NULL
      AND NOT coalesce((u.details->'candidates'->0->>'excluded_by_judgement')::boolean, false)
      AND (u.details->>'score')::float8 < coalesce((u.details->'thresholds'->>'link')::float8, %(link_bits)s)
      AND (u.details->>'score')::float8
          >= coalesce((u.details->'thresholds'->>'link')::float8, %(link_bits)s) - %(below_bits)s
      AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                      WHERE il.source_table = %(leads)s AND il.source_pk = u.source_pk)
      {below_window}
    """


def audit_sample(
    *, n: int | None = None, source_run_id: int | None = None, seed: str | None = None, trigger: str = "command",
) -> AuditSample:
    """Draw the audit sample and store it as audit items (one audit_sample job run).

    Each stratum's target is sample_size() of its population (CT4_AUDIT); what earlier runs drew
    counts towards it and is never drawn again; the draws of one run are capped at `n` (default
    CT4_AUDIT max_per_run), shared evenly between the strata by allocate(). Within a stratum the
    order is md5(seed, lead, person): the same seed on the same data draws the same items.
    `source_run_id` limits the population to the links (and unmatched rows) written during that run.
    """
    config = audit_settings()
    cap = config["max_per_run"] if n is None else n
    seed = seed if seed is not None else secrets.token_hex(8)
    params = {"leads": LEADS_TABLE, "link": AuditKind.LINK.value, "below": AuditKind.BELOW_THRESHOLD.value,
              "reasons": list(BELOW_THRESHOLD_REASONS), "link_bits": Thresholds.from_settings().link_bits,
              "below_bits": BELOW_THRESHOLD_BITS, "seed": seed}
    if source_run_id is not None:
        source = JobRun.objects.get(pk=source_run_id)
        params.update(start=source.started_at, end=source.finished_at or timezone.now())
    population = _population_sql(source_run_id is not None)
    with job_run(JOB_NAME, params={"n": cap, "source_run_id": source_run_id, "seed": seed}, trigger=trigger) as run:
        result = AuditSample(seed=seed, run_id=run.run.pk, source_run_id=source_run_id)
        with transaction.atomic():
            counts = sql_rows(f"""
                WITH population AS ({population})
                SELECT p.stratum, p.kind, count(*) AS population,
                       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM ops.audit_items a
                                        WHERE a.source_pk = p.source_pk AND a.person_key = p.person_key)) AS already
                FROM population p GROUP BY p.stratum, p.kind ORDER BY p.kind, p.stratum
                """, params)
            for row in counts:
                target = sample_size(population=row["population"], half_width=config["precision_half_width"],
                                     confidence=config["confidence"], proportion=config["expected_proportion"])
                result.strata.append(StratumPlan(row["stratum"], row["kind"], row["population"], target,
                                                 row["already"]))
            quota = allocate({s.stratum: max(s.target - s.already, 0) for s in result.strata}, cap=cap)
            with connection.cursor() as cursor:
                cursor.execute(f"""
                    WITH population AS ({population}),
                    fresh AS (
                        -- never an item twice: pairs sampled before are left out
                        SELECT p.*, row_number() OVER (PARTITION BY p.stratum
                                                       ORDER BY md5(%(seed)s || p.source_pk || p.person_key::text)) AS n
                        FROM population p
                        WHERE NOT EXISTS (SELECT 1 FROM ops.audit_items a
                                          WHERE a.source_pk = p.source_pk AND a.person_key = p.person_key)
                    )
                    INSERT INTO ops.audit_items (source_pk, person_key, kind, stratum, run_id, sampled_at,
                                                 decided_by_name, note)
                    SELECT f.source_pk, f.person_key, f.kind, f.stratum, %(run_id)s, now(), '', ''
                    FROM fresh f
                    WHERE f.n <= coalesce((%(quota)s::jsonb ->> f.stratum)::int, 0)
                    RETURNING stratum
                    """, {**params, "run_id": run.run.pk, "quota": json.dumps(quota)})
                drawn: dict[str, int] = {}
                for (stratum,) in cursor.fetchall():
                    drawn[stratum] = drawn.get(stratum, 0) + 1
            for s in result.strata:
                s.drawn = drawn.get(s.stratum, 0)
        run.counts.update(drawn=result.drawn, strata=len(result.strata))
    return result


def audit_sample_after_run(sender, *, name: str, run_id: int, params: dict, counts: dict,
                           **kwargs) -> AuditSample | None:
    """The receiver of identity.runs.job_run_succeeded: after a run of a linking job (LINKING_JOBS) that
    wrote links, draw the audit sample of that run's links (audit_sample with source_run_id, trigger
    "after_run"), unless CT4_AUDIT sample_after_runs is off.

    Never raises: the run succeeded and stays so. A failure is one error line on the jobs' logger naming
    the job and its run id; `manage.py audit_sample --run RUN` draws that run's sample later. A dry run
    sends nothing (rolled back) or counts no link written (match_leads --dry-run)."""
    counts_key = LINKING_JOBS.get(name.split("[", 1)[0])
    if counts_key is None or not counts.get(counts_key):
        return None
    if not audit_settings()["sample_after_runs"]:
        return None
    fields = {"job": name, "run_id": run_id, "links": counts[counts_key]}
    try:
        result = audit_sample(source_run_id=run_id, trigger=AFTER_RUN_TRIGGER)
    except JobLocked as exc:
        # Another audit sample is drawing (the shards of one parallel match_leads end together).
        logger.error("%s run=%s: no audit sample of its %s links: %s Draw it with manage.py audit_sample --run %s",
                     name, run_id, counts[counts_key], exc, run_id, extra={**fields, "event": "audit_sample_locked"})
        return None
    except Exception as exc:  # noqa: BLE001 - whatever the sample hit, the run it follows succeeded
        logger.error("%s run=%s: the audit sample of its %s links failed: %s. Draw it with manage.py audit_sample "
                     "--run %s", name, run_id, counts[counts_key], safe_error(exc), run_id,
                     extra={**fields, "event": "audit_sample_failed", "error_type": type(exc).__name__})
        return None
    logger.info("%s run=%s: drew %s audit items of its %s links (audit_sample run=%s)", name, run_id,
                result.drawn, counts[counts_key], result.run_id,
                extra={**fields, "event": "audit_sample_drawn", "drawn": result.drawn, "audit_run_id": result.run_id})
    return result


@dataclass
class AuditOutcome:
    status: str  # recorded, already_decided, invalid, not_found, forbidden
    message: str
    # A "not the same person" verdict on a link: what undoing the link did (None for any other verdict).
    undo: UndoOutcome | None = None

    @property
    def applied(self) -> bool:
        return self.status == "recorded"

    @property
    def link_undone(self) -> bool:
        return self.undo is not None and self.undo.undone


def audit_verdict_record(*, item_id: int, verdict: str, user, note: str = "") -> AuditOutcome:
    """Store a reviewer's verdict on an audit item, once: the item's row is locked, so of two verdicts
    the second finds it decided and is refused (and undoes nothing).

    "Same person" stores a link judgement (a positive label for the matching model); below the threshold
    it links nothing. "Not the same person" on a below-threshold item stores a "not this person"
    judgement (a negative label; no automatic run links the two).
    "Not the same person" on a link item undoes the link (recovery.review.undo.link_undo) in the same
    transaction, the reviewer as the person who undid it and the note as the reason: the lead goes back
    to the queue and the backlog, and no automatic run links the two again. When the link is gone
    already (undone, or the lead linked to someone else since) the verdict is recorded and the outcome
    says nothing was undone. A reviewer without the review permission changes nothing (forbidden)."""
    if verdict not in AuditVerdict.values:
        return AuditOutcome("invalid", f"Unknown answer {verdict!r}.")
    with transaction.atomic():
        item = AuditItem.objects.select_for_update().filter(pk=item_id).first()
        if item is None:
            return AuditOutcome("not_found", f"There is no audit item {item_id}.")
        if item.verdict is not None:
            return AuditOutcome(
                "already_decided",
                f"{item.decided_by_name} already answered \u201c{item.get_verdict_display()}\u201d on this audit item "
                f"at {timezone.localtime(item.decided_at):%Y-%m-%d %H:%M}. Your answer was not recorded.",
            )
        undo = None
        if verdict == AuditVerdict.NOT_SAME and item.kind == AuditKind.LINK:
            reason = f"audit item {item.pk}: not the same person" + (f" ({note})" if note else "")
            undo = link_undo(source_pk=item.source_pk, person_key=str(item.person_id), user=user, reason=reason,
                             undone_via=UndoneVia.AUDIT, audit_item_id=item.pk)
            if undo.status == "forbidden":
                return AuditOutcome("forbidden", f"{undo.message} Your answer was not recorded.", undo)
        elif verdict == AuditVerdict.SAME:
            # A confirmed pair is a positive label for the matching model, as a reviewer's link is. Below
            # the threshold it links nothing: the lead stays in the review list, its judgement shown there.
            confirmed = f"audit item {item.pk}: same person" + (f" ({note})" if note else "")
            linking.judgement_record(source_pk=item.source_pk, person_key=str(item.person_id), verdict=Verdict.LINK,
                                     user=user, note=confirmed)
        elif verdict == AuditVerdict.NOT_SAME:
            # Below the threshold, "not the same person" is the review screen's "not this person": a
            # negative label, and no automatic run links the two (on a link item the undo stores it).
            rejected = f"audit item {item.pk}: not the same person" + (f" ({note})" if note else "")
            linking.judgement_record(source_pk=item.source_pk, person_key=str(item.person_id),
                                     verdict=Verdict.NOT_THIS_PERSON, user=user, note=rejected)
        item.verdict, item.decided_by, item.decided_by_name = verdict, user, user.get_username()
        item.decided_at = timezone.now()
        item.note = note
        item.save(update_fields=["verdict", "decided_by", "decided_by_name", "decided_at", "note"])
    message = f"Answer recorded: \u201c{AuditVerdict(verdict).label}\u201d."
    if undo is not None:
        message += f" {undo.message}" if undo.undone else f" The link was not undone: {undo.message}"
    return AuditOutcome("recorded", message, undo)
