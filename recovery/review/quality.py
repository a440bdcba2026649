"""Precision in production, from the audit verdicts: per rule and overall, per month, the links made,
audited, confirmed, rejected and "cannot tell", the stratified precision estimate with a Wilson
interval, and the share of true matches among the below-threshold sample (docs/review.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

from django.conf import settings

from identity.models import LEADS_TABLE
from recovery.db import sql_rows
from recovery.models import AuditKind, AuditVerdict
from recovery.review.audit import LINK_SCORE_SQL, band_sql

CONFIDENCE = 0.95
ALL_MONTHS = "all"


def wilson_interval(p: float, n: float, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion `p` observed on `n` items (n may be an effective size)."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Cell:
    """One stratum's figures: its links and the verdicts on its audit items."""

    links: int = 0
    audited: int = 0
    confirmed: int = 0
    rejected: int = 0
    cannot_tell: int = 0

    def add(self, other: Cell) -> None:
        for name in ("links", "audited", "confirmed", "rejected", "cannot_tell"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Estimate:
    links: int
    audited: int
    confirmed: int
    rejected: int
    cannot_tell: int
    precision: float | None
    precision_low: float | None
    precision_high: float | None


def stratified_estimate(strata: list[Cell], *, confidence: float = CONFIDENCE) -> Estimate:
    """p = sum_h W_h p_h over the strata with a decided verdict, W_h = N_h / sum N (their links), p_h =
    confirmed_h / n_h (n_h = confirmed_h + rejected_h). The interval is Wilson's at an effective sample
    size from the stratified variance, each stratum's variance taken Agresti-Coull style: p~_h = (confirmed_h
    + z^2/2) / (n_h + z^2), var = sum_h W_h^2 p~_h (1 - p~_h) / (n_h + z^2), n_eff = p~ (1 - p~) / var - z^2
    with p~ = sum_h W_h p~_h. With one stratum this is Wilson's interval of p_h on n_h exactly. A stratum
    whose sample is all confirmed (or all rejected) still counts its uncertainty: with p_h (1 - p_h) as its
    variance it counted none, and a big stratum whose 76 audited links happened to be all right made the
    overall interval miss a true precision of 0.970 (bench/audit_simulation.py --wrong-links, seed 3)."""
    total = Cell()
    for cell in strata:
        total.add(cell)
    judged = [c for c in strata if c.confirmed + c.rejected > 0 and c.links > 0]
    population = sum(c.links for c in judged)
    if not judged:
        return Estimate(**asdict(total), precision=None, precision_low=None, precision_high=None)
    z2 = NormalDist().inv_cdf(1 - (1 - confidence) / 2) ** 2
    p = p_adjusted = variance = 0.0
    for c in judged:
        n_h = c.confirmed + c.rejected
        w = c.links / population
        p += w * c.confirmed / n_h
        p_h = (c.confirmed + z2 / 2) / (n_h + z2)
        p_adjusted += w * p_h
        variance += w * w * p_h * (1 - p_h) / (n_h + z2)
    n_eff = p_adjusted * (1 - p_adjusted) / variance - z2
    low, high = wilson_interval(p, n_eff, confidence=confidence)
    return Estimate(**asdict(total), precision=round(p, 6), precision_low=round(low, 6),
                    precision_high=round(high, 6))


@dataclass
class BelowThreshold:
    sampled: int
    audited: int
    confirmed: int
    rejected: int
    cannot_tell: int
    true_match_share: float | None
    share_low: float | None
    share_high: float | None


def _below(sampled: int, confirmed: int, rejected: int, cannot_tell: int) -> BelowThreshold:
    judged = confirmed + rejected
    share = low = high = None
    if judged:
        share = confirmed / judged
        low, high = (round(x, 6) for x in wilson_interval(share, judged))
        share = round(share, 6)
    return BelowThreshold(sampled, judged + cannot_tell, confirmed, rejected, cannot_tell, share, low, high)


# Every automatic lead link ever made: the ones a person undid since included (the matcher made them;
# an audit verdict undoes the links it rejects). Parameter %(leads)s. The estimates and the rule
# demotion (recovery.review.demotion) read it.
AUTOMATIC_LINKS_SQL = """
    SELECT source_pk, person_key, match_rule, evidence, match_score, linked_at
    FROM (SELECT source_table, source_pk, person_key, match_rule, evidence, match_score, linked_at, decided_by
          FROM canon.identity_links
          UNION ALL
          SELECT source_table, source_pk, person_key, match_rule, evidence, match_score, linked_at, decided_by
          FROM canon.identity_link_history) l
    WHERE l.source_table = %(leads)s AND l.decided_by = 'system'
"""

_LINK_CELLS_SQL = f"""
WITH link AS (
    -- automatic lead links, undone ones included: month (park time), rule, score band
    SELECT l.source_pk, l.person_key, l.match_rule AS rule, {band_sql(LINK_SCORE_SQL)} AS band,
           to_char(timezone(%(tz)s, l.linked_at), 'YYYY-MM') AS month
    FROM ({AUTOMATIC_LINKS_SQL}) l
)
SELECT link.month, link.rule, link.band, count(*) AS links,
       count(a.id) FILTER (WHERE a.verdict IS NOT NULL) AS audited,
       count(a.id) FILTER (WHERE a.verdict = %(same)s) AS confirmed,
       count(a.id) FILTER (WHERE a.verdict = %(not_same)s) AS rejected,
       count(a.id) FILTER (WHERE a.verdict = %(cannot_tell)s) AS cannot_tell
FROM link
LEFT JOIN ops.audit_items a ON a.kind = %(link_kind)s AND a.source_pk = link.source_pk
                           AND a.person_key = link.person_key
GROUP BY link.month, link.rule, link.band
"""

_BELOW_SQL = """
-- the below-threshold sample by the month it was drawn
SELECT to_char(timezone(%(tz)s, a.sampled_at), 'YYYY-MM') AS month, count(*) AS sampled,
       count(*) FILTER (WHERE a.verdict = %(same)s) AS confirmed,
       count(*) FILTER (WHERE a.verdict = %(not_same)s) AS rejected,
       count(*) FILTER (WHERE a.verdict = %(cannot_tell)s) AS cannot_tell
FROM ops.audit_items a WHERE a.kind = %(below_kind)s
GROUP BY 1
"""


def audit_report() -> dict:
    """The estimates per month (and over all months, `month` "all"), overall and per rule."""
    params = {"tz": settings.TIME_ZONE, "leads": LEADS_TABLE, "same": AuditVerdict.SAME.value,
              "not_same": AuditVerdict.NOT_SAME.value, "cannot_tell": AuditVerdict.CANNOT_TELL.value,
              "link_kind": AuditKind.LINK.value, "below_kind": AuditKind.BELOW_THRESHOLD.value}
    cells: dict[str, dict[tuple[str, str], Cell]] = {}
    for row in sql_rows(_LINK_CELLS_SQL, params):
        cell = Cell(row["links"], row["audited"], row["confirmed"], row["rejected"], row["cannot_tell"])
        for month in (row["month"], ALL_MONTHS):
            cells.setdefault(month, {}).setdefault((row["rule"], row["band"]), Cell()).add(cell)
    below: dict[str, list[int]] = {}
    for row in sql_rows(_BELOW_SQL, params):
        for month in (row["month"], ALL_MONTHS):
            figures = below.setdefault(month, [0, 0, 0, 0])
            for i, name in enumerate(("sampled", "confirmed", "rejected", "cannot_tell")):
                figures[i] += row[name]
    periods = []
    for month in sorted(set(cells) | set(below), key=lambda m: (m == ALL_MONTHS, m)):
        strata = cells.get(month, {})
        rules = sorted({rule for rule, _ in strata})
        periods.append({
            "month": month,
            "overall": asdict(stratified_estimate(list(strata.values()))),
            "rules": [{"rule": rule, **asdict(stratified_estimate([c for (r, _), c in strata.items() if r == rule]))}
                      for rule in rules],
            "below_threshold": asdict(_below(*below.get(month, [0, 0, 0, 0]))),
        })
    return {"confidence": CONFIDENCE, "periods": periods}
