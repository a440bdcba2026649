"""m probabilities from the data (issue 12 item 3): each comparison level's P(level | same person), counted
over candidate pairs that other, independent fields settle beyond doubt and over people's verdicts (labels,
issue 13 item 5), bounded by the registry's prior ranges, and failing loudly when the data cannot support an
estimate.

A field's levels are counted over its *anchor* pairs: pairs where fields other than this one say
"same person" beyond doubt (`ANCHORS`), plus the positive labels (pairs a reviewer linked, links an
auditor confirmed), minus the negative ones (a pair a person said is not one person never teaches m,
however well its keys agree). Under the model's own
assumption (fields agree independently given the pair is a match) and blocking's (the anchor
pairs were found whatever this field says), the share of each level among the anchor pairs
estimates its m. u is not estimated here: it stays the registry's (declared, or term frequency).
docs/matching.md, "How m is estimated".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from identity.fields import FIELDS, Field, Kind

# Fewer anchor pairs than this behind a field and its levels are not estimated: an error.
MIN_PAIRS = 100
# Width of the interval that decides whether the data contradict a level's declared range
# (Wilson score interval, 99 %): a rare level seen 0 times in 150 pairs does not contradict m = .01.
Z = 2.576
# The strong keys an anchor counts, exact agreement only.
ANCHOR_KEYS = ("document", "phone", "email", "birth_date")
# Keys one human's own: with the whole name exact, one of them is enough. A phone is not (a father
# and a son "Juan Quispe" share the family's number).
PERSONAL_KEYS = ("document", "email", "birth_date")
# The name agrees with no token contradicting a given name and a surname (swapped surnames excluded).
NAME_AGREES = ("exact", "typo", "subset", "partial")


@dataclass(frozen=True)
class Anchor:
    """Which pairs are matches beyond doubt when estimating one field's m: at least `at_least` of
    `keys` agree exactly (and the name agrees, when `name` is set), or the whole name is exact and
    one of `personal` keys agrees exactly. Never mentions its own field."""

    keys: tuple[str, ...]
    at_least: int = 2
    name: bool = True
    personal: tuple[str, ...] = ()

    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.keys, *self.personal, *(("name",) if self.name else ()))))

    def expr(self, columns: list[str]) -> pl.Expr:
        def exact(keys):
            return [(pl.col(k) == "exact").fill_null(False).cast(pl.Int8) for k in keys if k in columns]

        keys = exact(self.keys)
        agreed = pl.sum_horizontal(keys) >= self.at_least if keys else pl.lit(False)
        if self.name:
            agreed = agreed & pl.col("name").is_in(list(NAME_AGREES)).fill_null(False)
        personal = exact(self.personal)
        if self.name and personal:
            agreed = agreed | ((pl.col("name") == "exact").fill_null(False) & (pl.sum_horizontal(personal) >= 1))
        return agreed

    def describe(self) -> str:
        text = f"{self.at_least} of {', '.join(self.keys)} exact"
        if not self.name:
            return text
        text = f"name agrees and {text}"
        return f"{text}, or name exact and one of {', '.join(self.personal)} exact" if self.personal else text


def _anchor(field_name: str) -> Anchor:
    others = lambda keys: tuple(k for k in keys if k != field_name)  # noqa: E731
    if field_name == "name":
        return Anchor(keys=ANCHOR_KEYS, name=False)
    return Anchor(keys=others(ANCHOR_KEYS), personal=others(PERSONAL_KEYS))


ANCHORS: dict[str, Anchor] = {name: _anchor(name) for name in FIELDS}


class MEstimateError(Exception):
    """An m the data cannot support. The message names the field, the level, the estimate, the
    declared range and the pairs behind it (counts only: no personal data)."""

    def __init__(self, estimate: LevelEstimate, message: str):
        super().__init__(message)
        self.estimate = estimate
        self.field = estimate.field
        self.level = estimate.level


class EstimateOutOfRange(MEstimateError):
    pass


class TooFewPairs(MEstimateError):
    pass


@dataclass(frozen=True)
class LevelEstimate:
    field: str
    level: str
    declared_m: float
    m_range: tuple[float, float]
    pairs: int  # anchor and positively labelled pairs where both sides carry the field
    judged_pairs: int  # of which a person labelled a match (a reviewer's link, an auditor's confirmation)
    count: int  # of those pairs, how many are at this level
    raw: float | None  # count / pairs
    interval: tuple[float, float] | None  # Wilson interval of raw at Z
    m: float | None  # raw bounded by m_range; None when the estimate failed
    status: str  # ok | bounded (raw outside the range, interval inside) | out_of_range | too_few_pairs
    u: float | None  # the registry's u; None = term frequency
    weighed: bool
    min_pairs: int = MIN_PAIRS
    # Pairs carrying the field that an anchor would have counted but a person labelled "not this person"
    # (a rejection, an audit's "not the same person"): left out.
    rejected_pairs: int = 0

    @property
    def failed(self) -> bool:
        return self.status in ("out_of_range", "too_few_pairs")

    @property
    def weight_bits(self) -> float | None:
        """log2(m / u) with the estimated m; None for term-frequency levels (the weight depends on the value)."""
        return None if self.m is None or self.u is None else math.log2(self.m / self.u)

    @property
    def declared_weight_bits(self) -> float | None:
        return None if self.u is None else math.log2(self.declared_m / self.u)

    def error(self) -> MEstimateError | None:
        lo, hi = self.m_range
        where = f"m of {self.field}.{self.level}"
        if self.status == "too_few_pairs":
            return TooFewPairs(self, f"{where} rests on {self.pairs} pairs, fewer than the {self.min_pairs} required "
                                     f"(declared range {lo:g}-{hi:g}, estimate {_fmt(self.raw)})")
        if self.status == "out_of_range":
            ilo, ihi = self.interval
            return EstimateOutOfRange(self, f"{where} estimated {self.raw:.4f} from {self.pairs} pairs (99% interval "
                                            f"{ilo:.4f}-{ihi:.4f}) is outside its declared range {lo:g}-{hi:g}")
        return None

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(weight_bits=self.weight_bits, declared_weight_bits=self.declared_weight_bits,
                    u="term frequency" if self.u is None else self.u)
        return data


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


@dataclass
class ModelEstimate:
    """Every level's estimate, in registry order, and each field's anchor."""

    levels: list[LevelEstimate] = field(default_factory=list)
    anchors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # field -> why it was not estimated

    @property
    def failures(self) -> list[LevelEstimate]:
        return [e for e in self.levels if e.failed]

    def raise_for_failures(self) -> ModelEstimate:
        failures = self.failures
        if failures:
            first = failures[0].error()
            more = f" (and {len(failures) - 1} more level(s) failed)" if len(failures) > 1 else ""
            raise type(first)(first.estimate, str(first) + more)
        return self

    def m(self) -> dict[str, dict[str, float]]:
        """Bounded m by field and level; raises when any estimate failed."""
        self.raise_for_failures()
        return self.usable_m()

    def usable_m(self) -> dict[str, dict[str, float]]:
        """Bounded m by field and level of the estimates that passed (a failed level is left out: it keeps
        its declared m)."""
        result: dict[str, dict[str, float]] = {}
        for e in self.levels:
            if not e.failed:
                result.setdefault(e.field, {})[e.level] = e.m
        return result

    def as_dict(self) -> dict:
        return {"levels": [e.as_dict() for e in self.levels], "anchors": self.anchors, "skipped": self.skipped,
                "failures": [str(e.error()) for e in self.failures]}


def wilson(count: int, n: int, z: float = Z) -> tuple[float, float]:
    if not n:
        return (0.0, 1.0)
    p = count / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _field_estimate(f: Field, observed: pl.DataFrame, *, min_pairs: int, z: float,
                    rejected: int = 0) -> list[LevelEstimate]:
    n = observed.height
    judged = int(observed["positive_label"].sum()) if n else 0
    counts = dict(observed.group_by(f.name).len().iter_rows()) if n else {}
    estimates = []
    for level in f.levels:
        count = counts.get(level.name, 0)
        lo, hi = level.m_range
        raw = count / n if n else None
        interval = wilson(count, n, z) if n else None
        if n < min_pairs:
            status, m = "too_few_pairs", None
        elif interval[1] < lo or interval[0] > hi:
            status, m = "out_of_range", None
        else:
            m = min(max(raw, lo), hi)
            status = "ok" if m == raw else "bounded"
        estimates.append(LevelEstimate(
            field=f.name, level=level.name, declared_m=level.m, m_range=level.m_range, pairs=n,
            judged_pairs=judged, count=count, raw=raw, interval=interval, m=m, status=status, u=level.u,
            weighed=f.weighed, min_pairs=min_pairs, rejected_pairs=rejected))
    return estimates


def m_estimate(pairs: pl.DataFrame, *, min_pairs: int = MIN_PAIRS, z: float = Z,
               fields: dict[str, Field] | None = None) -> ModelEstimate:
    """Estimate every level's m from scored candidate pairs (identity.matching `Scores.candidates`:
    one level column per field, null where either side lacks the value), with optional labels:
    `positive_label` (a person said the pair is one person: it joins every field's anchors) and
    `negative_label` or `excluded` (a person said it is not: it leaves them). Never raises for the
    data: failures are in the result (`raise_for_failures`, `m`)."""
    fields = FIELDS if fields is None else fields
    columns = pairs.columns

    def flag(name: str) -> pl.Expr:
        return pl.col(name).fill_null(False) if name in columns else pl.lit(False)

    negative = flag("negative_label") | flag("excluded")
    frame = pairs.with_columns((flag("positive_label") & ~negative).alias("positive_label"),
                               negative.alias("negative_label"))
    result = ModelEstimate()
    for f in fields.values():
        if f.name not in columns:
            result.skipped[f.name] = "not compared in these pairs"
            continue
        anchor = ANCHORS.get(f.name) or _anchor(f.name)
        result.anchors[f.name] = anchor.describe() + ", or a reviewer linked the pair"
        chosen = frame.filter(anchor.expr(columns) | pl.col("positive_label"))
        rejected = chosen.filter(pl.col("negative_label"))
        chosen = chosen.filter(~pl.col("negative_label"))
        if f.kind == Kind.RECRUITMENT:
            # Computed only where it agrees (every lead has a park and a date, every record a hire date):
            # a missing level is "not hired in the lead's park within the window".
            observed = chosen.select(pl.col(f.name).fill_null("__not__"), "positive_label")
            rejected_n = rejected.height
        else:
            observed = chosen.select(f.name, "positive_label").drop_nulls(f.name)
            rejected_n = rejected.select(f.name).drop_nulls().height
        result.levels.extend(_field_estimate(f, observed, min_pairs=min_pairs, z=z, rejected=rejected_n))
    return result


def m_probabilities(pairs: pl.DataFrame, *, min_pairs: int = MIN_PAIRS, z: float = Z) -> dict[str, dict[str, float]]:
    """Bounded m by field and level, for the scorer; raises MEstimateError when any estimate fails."""
    return m_estimate(pairs, min_pairs=min_pairs, z=z).m()


# --- From the database: a match run's pairs and reviewers' judgements -----------------------------


def labels_load() -> pl.DataFrame:
    """People's verdicts on (lead, person) pairs, as labels (source_pk, person_key, positive): the latest
    judgement on the pair that names it, a link (a reviewer's link, an auditor's "same person") or
    not this person (a reviewer's rejection, an auditor's "not the same person", any undone link);
    and a link a person made by hand without a judgement, positive."""
    from identity.bulk import frame_read  # noqa: PLC0415
    from identity.models import LEADS_TABLE, Verdict  # noqa: PLC0415

    return frame_read(
        """
        WITH latest AS (
            -- each pair's latest verdict that says match or no match (a deferral says neither)
            SELECT DISTINCT ON (source_pk, person_key) source_pk, person_key::text AS person_key, verdict
            FROM canon.identity_judgements
            WHERE source_table = %(leads)s AND person_key IS NOT NULL AND verdict = ANY(%(verdicts)s)
            ORDER BY source_pk, person_key, decided_at DESC, id DESC
        )
        SELECT source_pk, person_key, verdict = %(link)s AS positive FROM latest
        UNION ALL
        SELECT l.source_pk, l.person_key::text, true FROM canon.identity_links l
        WHERE l.source_table = %(leads)s AND l.decided_by <> 'system'
          AND NOT EXISTS (SELECT 1 FROM latest
                          WHERE latest.source_pk = l.source_pk AND latest.person_key = l.person_key::text)
        """,
        {"leads": LEADS_TABLE, "link": Verdict.LINK.value,
         "verdicts": [Verdict.LINK.value, Verdict.NOT_THIS_PERSON.value]},
        schema={"source_pk": pl.String, "person_key": pl.String, "positive": pl.Boolean})


# --- The share of leads that have a driver (the prior) ---------------------------------------------

# The prior range of the share of leads whose human is among the persons: a source where fewer than
# one lead in a hundred, or every single lead, has a driver is not what the product is for; the
# estimate is clipped to it (bounded) and reported so.
SHARE_RANGE = (0.01, 0.99)
# Fewer leads with an identifier than this in the sample, and the share is not estimated: an error
# in the result (the declared prior is kept), never a silent default.
MIN_SHARE_LEADS = 500
SHARE_ITERATIONS = 500
SHARE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ShareEstimate:
    """The share of leads whose human is one of the persons (Splink's "probability two random records
    match", per lead): the prior odds that a lead is one given person are share / (N - share)."""

    leads: int  # sampled leads with an identifier
    with_candidates: int  # of which some person was a candidate
    persons: int
    raw: float | None
    share: float | None  # raw clipped to share_range; None when the estimate failed
    status: str  # ok | bounded | too_few_leads
    iterations: int = 0
    share_range: tuple[float, float] = SHARE_RANGE
    min_leads: int = MIN_SHARE_LEADS

    @property
    def failed(self) -> bool:
        return self.share is None

    def error(self) -> str | None:
        if self.status == "too_few_leads":
            return (f"share of leads with a driver rests on {self.leads} leads with an identifier, fewer than the "
                    f"{self.min_leads} required")
        return None

    def as_dict(self) -> dict:
        return asdict(self)


def match_share_estimate(weights: pl.DataFrame, *, leads: int, persons: int,
                         share_range: tuple[float, float] = SHARE_RANGE,
                         min_leads: int | None = None) -> ShareEstimate:
    """Estimate the share of leads that have a driver from their candidates' weights, by EM on the mixture
    weight alone (every m and u held fixed).

    `weights` holds one row per (lead, candidate person) with `source_pk` and `weight`: the candidate's
    log2 likelihood ratio, its score without the prior (identity.matching.candidate_weights), rejected
    candidates left out. `leads` counts the sampled leads with an identifier, those without candidates
    included (they are evidence of a lead without a driver). With share s, a lead is one of its candidates
    with probability s A / (s A + 1 - s), where A is the sum of its candidates' likelihood ratios over the
    N persons (a person blocking did not find agrees on nothing, a likelihood ratio near 0); the next s is
    the mean of that over the leads. Converges to the share the model, with its m and u, says the sample
    holds; a model that overrates evidence overrates the share too."""
    lo, hi = share_range
    min_leads = MIN_SHARE_LEADS if min_leads is None else min_leads
    if leads < min_leads:
        return ShareEstimate(leads=leads, with_candidates=0, persons=persons, raw=None, share=None,
                             status="too_few_leads", share_range=share_range, min_leads=min_leads)
    # Sum of likelihood ratios per lead, in log space first: a document and a birth date agreeing are
    # 2^40, which float64 holds, but their sum over a family's records is taken without overflow.
    per_lead = (weights.group_by("source_pk")
                .agg(pl.col("weight").max().alias("top"),
                     (2.0 ** (pl.col("weight") - pl.col("weight").max())).sum().alias("rest")))
    log_a = (per_lead["top"].to_numpy() + np.log2(per_lead["rest"].to_numpy())) - math.log2(max(persons, 1))
    share, iterations = 0.5, 0
    for iterations in range(1, SHARE_ITERATIONS + 1):  # noqa: B007 (the count is reported)
        # P(lead has a driver) = 1 / (1 + (1 - s) / (s A)), in log2 to keep A from overflowing.
        odds_bits = np.clip(math.log2(share / (1 - share)) + log_a, -1000, 1000)
        posterior = 1.0 / (1.0 + np.exp2(-odds_bits))
        new = float(posterior.sum()) / leads
        new = min(max(new, 1e-6), 1 - 1e-9)
        done = abs(new - share) < SHARE_TOLERANCE
        share = new
        if done:
            break
    bounded = min(max(share, lo), hi)
    return ShareEstimate(leads=leads, with_candidates=per_lead.height, persons=persons, raw=share, share=bounded,
                         status="ok" if bounded == share else "bounded", iterations=iterations,
                         share_range=share_range, min_leads=min_leads)
