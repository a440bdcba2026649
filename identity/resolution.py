"""Resolving leads to persons: load and normalize, fetch candidates, decide, write through linking.

`leads_resolve` handles one batch in one transaction; `leads_match` walks every unlinked lead
in batches (the recovery jobs call `leads_resolve` for their own batches).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import polars as pl
from django.conf import settings
from django.db import connection, connections, transaction

from identity import index_image, linking
from identity.bulk import PARAM_ROWS, frame_fetch, frame_read
from identity.candidates import IndexFrame, SqlIndex, frequencies_load, kept_of, stage_hits
from identity.cores import one_core
from identity.matching import (
    LEAD_SCHEMA,
    PAIR_SCHEMA,
    PERSON,
    RULE_VERSION,
    Decision,
    DriverRecord,
    Frequencies,
    LeadKeys,
    Scores,
    Thresholds,
    candidate_weights,
    decisions_make,
    decisions_materialize,
    evidence_json,
    leads_with_identifier,
    pairs_score,
)
from identity.estimate import MIN_PAIRS, ModelEstimate, ShareEstimate, labels_load, m_estimate, match_share_estimate
from identity.fields import FIELDS, LEAD_SOURCES
from identity.index import drivers_index_refresh, index_changed_at, index_is_empty
from identity.models import LEADS_TABLE, MatchModel, ReasonCode
from identity.rules import rules_demoted
from identity.runs import LINK_TABLES, job_run, progress_bar, reconnecting, tables_analyze

log = logging.getLogger("ct4.matching")

DEFAULT_BATCH = 1000
# With the index in memory, leads are decided this many batches at a time (each batch still
# written in its own transaction): a frame operation costs about the same for 1,000 rows or 10,000.
DECIDE_BATCHES = 10
# A run over at least this many leads reads the whole index into memory first (one COPY, a few
# seconds at a million drivers); smaller ones ask the database's indexes lead by lead.
IN_MEMORY_MIN_LEADS = 2000
# From this many leads, a run reads the index from a current image instead of asking the database (below
# CT4_IN_MEMORY_MIN_LEADS; settings.CT4_IN_MEMORY_IMAGE_MIN_LEADS). In a new process at 1M (2-core VM), the
# image memory-mapped (identity.index_image): 25 leads 1.26 / 1.19 s from the image against 1.07 / 1.09 s from
# the database, 100 leads 1.12 / 1.08 against 1.17 / 1.43 s, 250 leads 1.64 / 1.03 against 2.00 / 1.88 s; and
# the process keeps the index for its next runs (CT4_INDEX_KEEP). (Read by copying, the image cost 0.5-0.75 s
# more, and the threshold was 500.)
IN_MEMORY_IMAGE_MIN_LEADS = 100
# Writer threads of a pipelined match run, each with its own connection, each taking every other chunk.
# Each batch's statements hold the lead window's lock from its links to its commit (recovery.lead_window);
# a second writer copies and writes its unmatched rows meanwhile. At 1M, after a first build (100
# batches written at once): 38.2-39.8 s against 40.5-40.8 s for `match_leads --refresh` with one.
WRITERS = 2
SETTLED_BY_KEYS = ("link", ReasonCode.CONFLICT_MULTIPLE_CANDIDATES.value)
_RAW_LEAD_COLUMNS = ("source_pk", "phone", "document", "email", "plate", "birth_date", "first_name", "middle_name",
                     "last_name", "park_id", "lead_date")


def leads_load(source_pks: list[str] | None = None, *, unlinked_only: bool = False, undecided_since=None,
               limit: int | None = None) -> pl.DataFrame:
    """Leads (the named ones, or all) as a frame of normalized keys (LEAD_SCHEMA), newest first.

    `undecided_since` (a time) leaves out the leads whose open unmatched row was written after it by
    this rule version, after the lead last changed and after any judgement on it: deciding them
    again against the same index and model would say the same."""
    where, params = [], []
    if source_pks is not None:
        where.append("c.source_pk = ANY(%s)")
        params.append(source_pks)
    if unlinked_only:
        # One statement per run: a hash anti-join planned with the run's own statistics, never
        # re-planned per batch while the run writes the links it anti-joins against.
        where.append(f"NOT EXISTS (SELECT 1 FROM canon.identity_links l WHERE l.source_table = '{LEADS_TABLE}' "
                     "AND l.source_pk = c.source_pk)")
    if undecided_since is not None:
        where.append(
            f"""NOT EXISTS (SELECT 1 FROM canon.identity_unmatched u
                WHERE u.source_table = '{LEADS_TABLE}' AND u.source_pk = c.source_pk AND u.status = 'open'
                  AND u.updated_at >= %s AND u.updated_at >= c.updated_at AND u.details->>'rule_version' = %s
                  AND NOT EXISTS (SELECT 1 FROM canon.identity_judgements j WHERE j.source_table = u.source_table
                                  AND j.source_pk = u.source_pk AND j.decided_at >= u.updated_at))""")
        params += [undecided_since, RULE_VERSION]
    query = (f"SELECT {', '.join('c.' + c for c in _RAW_LEAD_COLUMNS)} FROM public.module_ct_cabinet_leads c"
             + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY c.created_at DESC, c.source_pk"
             + (f" LIMIT {int(limit)}" if limit else ""))
    raw_schema = {name: pl.String for name in _RAW_LEAD_COLUMNS} | {"birth_date": pl.Date, "lead_date": pl.Date}
    # A few leads (one arriving now) are fetched; more are copied (frame_fetch, frame_read).
    few = source_pks is not None and len(source_pks) <= PARAM_ROWS
    raw = (frame_fetch if few else frame_read)(query, params or None, schema=raw_schema)
    return leads_normalize(raw)


def leads_normalize(raw: pl.DataFrame) -> pl.DataFrame:
    """Raw lead columns to match keys, column-wise, as identity.fields.LEAD_SOURCES declares."""
    keys = [source.normalize(*(raw[column] for column in source.raw)).rename(source.column)
            for source in LEAD_SOURCES]
    return raw.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("lead_i"), "source_pk", "birth_date",
        pl.col("park_id").replace("", None), "lead_date",
    ).with_columns(keys).select(list(LEAD_SCHEMA)).cast(LEAD_SCHEMA)


def leads_load_keys(source_pks: list[str]) -> list[LeadKeys]:
    """The leads' normalized keys as dataclasses, in the order asked (unknown ones left out)."""
    frame = leads_load(source_pks)
    by_pk = {row["source_pk"]: row for row in frame.iter_rows(named=True)}
    return [LeadKeys(**{k: (tuple(v) if k == "name_tokens" else v) for k, v in by_pk[pk].items() if k != "lead_i"})
            for pk in source_pks if pk in by_pk]


@dataclass
class MatchContext:
    """What every batch of a run shares: the data's frequencies, the thresholds, and where
    candidates come from (the index in memory, or the database's indexes)."""

    freq: Frequencies
    thresholds: Thresholds
    index: IndexFrame | None = None

    @classmethod
    def load(cls, *, in_memory: bool = False) -> MatchContext:
        if in_memory:
            return cls.of_index(IndexFrame.load())
        return cls(freq=_with_model(frequencies_load()), thresholds=_thresholds())

    @classmethod
    def of_index(cls, index: IndexFrame) -> MatchContext:
        """Deciding against this in-memory index (the latest match model's m, the settings' thresholds)."""
        return cls(freq=_with_model(index.freq), thresholds=_thresholds(), index=index)

    @classmethod
    def for_leads(cls, count: int) -> MatchContext:
        """In memory for a run of at least CT4_IN_MEMORY_MIN_LEADS leads, of at least
        CT4_IN_MEMORY_IMAGE_MIN_LEADS when the current index has an image on disk, or of any size when this
        process kept the current index from an earlier run (candidates.IndexFrame.load); else the
        database's indexes."""
        minimum = getattr(settings, "CT4_IN_MEMORY_MIN_LEADS", IN_MEMORY_MIN_LEADS)
        if count < minimum:
            version = index_image.index_version()
            kept = kept_of(version)
            if kept is not None:
                return cls.of_index(kept)
            from_image = getattr(settings, "CT4_IN_MEMORY_IMAGE_MIN_LEADS", IN_MEMORY_IMAGE_MIN_LEADS)
            if count >= from_image and index_image.image_exists(version):
                return cls.load(in_memory=True)
        return cls.load(in_memory=count >= minimum)

    @property
    def source(self) -> IndexFrame | SqlIndex:
        return self.index if self.index is not None else SqlIndex(self.freq)


def _thresholds() -> Thresholds:
    # A rule an audit demoted links nobody until a person restores it (identity.rules).
    return dataclasses.replace(Thresholds.from_settings(), demoted_rules=rules_demoted())


def match_model_latest() -> tuple[dict, float | None]:
    """The latest match model: its estimated m ({field: {level: m}}; empty: the registry's declared m
    everywhere) and its share of leads with a driver (None: the declared prior)."""
    latest = MatchModel.objects.order_by("-estimated_at", "-id").values_list("m", "match_share").first()
    return (latest[0] or {}, latest[1]) if latest else ({}, None)


def _with_model(freq: Frequencies) -> Frequencies:
    m, share = match_model_latest()
    return dataclasses.replace(freq, m=m, match_share=share)


def _model_estimated_at():
    return MatchModel.objects.order_by("-estimated_at").values_list("estimated_at", flat=True).first()


def match_inputs_changed_at():
    """When what decides a lead last changed: the drivers index, or the match model (None: never)."""
    times = [t for t in (index_changed_at(), _model_estimated_at()) if t is not None]
    return max(times) if times else None


def match_model_stale() -> bool:
    """No model yet, or the drivers index changed after the latest one was estimated."""
    model_at, index_at = _model_estimated_at(), index_changed_at()
    return model_at is None or (index_at is not None and index_at > model_at)


# A run over at least this many leads estimates m from its own pairs first (identity.estimate), on
# at most ESTIMATE_SAMPLE of them; fewer leads would leave most levels on too few pairs.
ESTIMATE_MIN_LEADS = 2000
ESTIMATE_SAMPLE = 10_000


def run_pairs(leads: pl.DataFrame, context: MatchContext, *, chunk: int = 10_000,
              labels: pl.DataFrame | None = None) -> pl.DataFrame:
    """These leads' scored candidate pairs as a match run makes them (nothing is written): one row per
    (lead, person) with a level column per field, `source_pk`, and the labels people gave the pair
    (`positive_label`, `negative_label`: identity.estimate counts the first and leaves the second out;
    `labels`: labels_load's, read earlier)."""
    frames = []
    for start in range(0, leads.height, chunk):
        batch = leads.slice(start, chunk).with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("lead_i"))
        resolved = leads_decide_frame(batch, context, prune=False)
        frames.append(resolved.scores.candidates.join(batch.select("lead_i", "source_pk"), on="lead_i"))
    if not frames:
        return pl.DataFrame(schema={"source_pk": pl.String, **{name: pl.String for name in FIELDS}})
    pairs = pl.concat(frames, how="diagonal_relaxed")
    labels = (labels_load() if labels is None else labels).select(
        "source_pk", "person_key", pl.col("positive").alias("positive_label"),
        (~pl.col("positive")).alias("negative_label"))
    pairs = pairs.join(labels, on=["source_pk", "person_key"], how="left").with_columns(
        pl.col("positive_label").fill_null(False), pl.col("negative_label").fill_null(False))
    if not context.thresholds.recruit_window_days:
        pairs = pairs.drop("recruitment", strict=False)  # not compared: nothing to estimate
    return pairs


def match_model_estimate(context: MatchContext, *, run_id: int | None = None,
                         labels: pl.DataFrame | None = None) -> MatchContext:
    """Estimate m from the newest ESTIMATE_SAMPLE leads' candidate pairs (with the context's current
    m: levels do not depend on it), store it as the latest match model, and return the context
    scoring with it. A level the data cannot support (too few pairs, outside its
    declared range) keeps its declared m, and the model row and the log say which and why."""
    # Every lead, linked or not, newest first: the leftovers of earlier runs alone are the hard cases.
    sample = leads_load(limit=ESTIMATE_SAMPLE)
    pairs = run_pairs(sample, context, labels=labels)
    estimate = m_estimate(pairs)
    usable = estimate.usable_m()
    # A field no pair compares (no lead or no record carries it) has no estimate and needs none.
    compared = {name for name in pairs.columns if name in FIELDS and pairs[name].null_count() < pairs.height}
    failures = [str(level.error()) for level in estimate.failures if level.field in compared]
    for failure in failures:
        log.warning("match model: %s; the declared m is kept", failure)
    share = share_estimate(sample, pairs, context.freq, usable)
    if share.failed:
        failures.append(share.error())
        log.warning("match model: %s; the declared prior is kept", share.error())
    elif share.status == "bounded":
        log.warning("match model: share of leads with a driver estimated %.4f, outside %g-%g: %.4f is used",
                    share.raw, *share.share_range, share.share)
    MatchModel.objects.create(run_id=run_id, leads=sample.height, pairs=pairs.height, m=usable, failures=failures,
                              match_share=share.share, share_estimate=share.as_dict())
    return dataclasses.replace(context, freq=dataclasses.replace(context.freq, m=usable, match_share=share.share))


def share_estimate(leads: pl.DataFrame, pairs: pl.DataFrame, freq: Frequencies, m: dict) -> ShareEstimate:
    """The share of these leads that have a driver, from their scored candidate pairs (run_pairs, scored
    with freq) re-weighed with the m just estimated; candidates a person rejected are left out."""
    weights = pl.DataFrame(schema={"source_pk": pl.String, "weight": pl.Float64})
    if pairs.height:
        kept = pairs.filter(~pl.col("excluded").fill_null(False) & ~pl.col("negative_label").fill_null(False))
        weights = kept.select("source_pk", candidate_weights(kept, freq, m))
    return match_share_estimate(weights, leads=leads_with_identifier(leads), persons=freq.persons)


def match_model_current(context: MatchContext, *, run_id: int | None = None, stale: bool = False,
                        labels: pl.DataFrame | None = None) -> MatchContext:
    """The context scoring with a current match model: estimated now when there is none, the index
    changed after the latest, or the caller knows it is `stale` (a build not yet committed), by one
    process at a time (recovery workers on several machines start together: the others wait for it,
    then read it). `labels`: labels_load's, read earlier."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('ct4.match_model'))")
        if stale or match_model_stale():
            return match_model_estimate(context, run_id=run_id, labels=labels)
    return dataclasses.replace(context, freq=_with_model(context.freq))


@dataclass
class ModelReport:
    leads: int
    pairs: int
    estimate: ModelEstimate
    # People's labels (identity.estimate.labels_load): all of them, and those among the scored pairs.
    labels: dict = field(default_factory=dict)
    # The share of leads with a driver, from these pairs re-weighed with the estimated m, and the prior it
    # makes beside the declared one (bits).
    share: ShareEstimate | None = None
    prior_bits: float | None = None
    declared_prior_bits: float | None = None

    def as_dict(self) -> dict:
        return {"leads": self.leads, "pairs": self.pairs, "labels": self.labels, **self.estimate.as_dict(),
                "share": self.share.as_dict() if self.share else None, "prior_bits": self.prior_bits,
                "declared_prior_bits": self.declared_prior_bits}


def model_report(*, limit: int | None = None, min_pairs: int = MIN_PAIRS) -> ModelReport:
    """Every lead (or the newest `limit`) scored as match_leads would, nothing written, and each
    level's m estimated from their pairs (manage.py model_report)."""
    leads = leads_load(limit=limit)
    context = MatchContext.load(in_memory=True)
    pairs = run_pairs(leads, context)
    labels = labels_load()
    positive = int(labels["positive"].sum())
    in_pairs = {name: int(pairs[name].sum()) if name in pairs.columns else 0
                for name in ("positive_label", "negative_label")}
    estimate = m_estimate(pairs, min_pairs=min_pairs)
    share = share_estimate(leads, pairs, context.freq, estimate.usable_m())
    declared = dataclasses.replace(context.freq, match_share=None)
    return ModelReport(leads=pairs["source_pk"].n_unique() if pairs.height else 0, pairs=pairs.height,
                       estimate=estimate,
                       labels={"positive": positive, "negative": labels.height - positive,
                               "positive_in_pairs": in_pairs["positive_label"],
                               "negative_in_pairs": in_pairs["negative_label"]},
                       share=share, declared_prior_bits=declared.prior_bits,
                       prior_bits=None if share.failed else dataclasses.replace(declared, match_share=share.share).prior_bits)


@dataclass
class Resolved:
    """A batch's decisions (one row per lead) and the scores behind them."""

    leads: pl.DataFrame
    decisions: pl.DataFrame
    scores: Scores
    hits: pl.DataFrame  # (lead_i, person_key, rule): which blocking rule found each candidate
    # (lead_i, evidence): each decision's evidence JSON, when made ahead (with_evidence); outcome_write
    # makes it otherwise.
    evidence: pl.DataFrame | None = None

    def with_evidence(self, thresholds: Thresholds) -> Resolved:
        """The same, with every decision's evidence JSON made now (recovery makes it on its look-ahead
        thread, for ten batches at once, instead of batch by batch on the thread that writes)."""
        return dataclasses.replace(self, evidence=evidence_json(self.decisions, self.scores, thresholds))


def _pairs(leads: pl.DataFrame, hits: pl.DataFrame, source, rejected: pl.DataFrame) -> pl.DataFrame:
    persons = hits.select("lead_i", "person_key", "person_i").unique(subset=["lead_i", "person_key"])
    if not persons.height:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    excluded = rejected.join(leads.select("lead_i", "source_pk"), on="source_pk").select(
        "lead_i", "person_key", pl.lit(True).alias("excluded"))
    pairs = source.pairs_records(persons).join(excluded, on=["lead_i", "person_key"], how="left")
    return pairs.with_columns(pl.col("excluded").fill_null(False)).select(list(PAIR_SCHEMA)).cast(PAIR_SCHEMA)


def _score(leads, hits, source, rejected, freq, thresholds, per_record=False,
           prune=False) -> tuple[Scores, pl.DataFrame]:
    scores = pairs_score(leads, _pairs(leads, hits, source, rejected), freq, thresholds, per_record=per_record,
                         prune=prune)
    return scores, decisions_make(leads, scores, thresholds)


# A batch of at most this many leads is scored once, with the candidates of both stages (see
# _decide_scored_once): a scoring pass over a few pairs costs ~20 ms whatever their number, and most
# leads arriving one by one go on to stage 2.
SCORE_ONCE_MAX_LEADS = 16


def _scores_of(scores: Scores, keep: pl.DataFrame, *, on: list[str], how: str = "semi") -> Scores:
    """The rows of `scores` whose `on` columns are (how="semi") or are not ("anti") among `keep`'s."""
    def part(frame):
        return frame.join(keep, on=on, how=how)
    return Scores(part(scores.candidates), part(scores.fields),
                  part(scores.records) if scores.records is not None else None)


def _stage_two_merged(first: Resolved, second: Resolved, retry: pl.DataFrame) -> Resolved:
    """`first` (stage 1's decisions, scores and hits) for the leads not in `retry`, `second` (with every
    candidate) for the leads in it."""
    kept = _scores_of(first.scores, retry, on=["lead_i"], how="anti")
    records = None if kept.records is None else pl.concat([kept.records, second.scores.records])
    return Resolved(
        leads=first.leads,
        decisions=pl.concat([first.decisions.join(retry, on="lead_i", how="anti"), second.decisions]).sort("lead_i"),
        scores=Scores(pl.concat([kept.candidates, second.scores.candidates]),
                      pl.concat([kept.fields, second.scores.fields]), records),
        hits=pl.concat([first.hits.join(retry, on="lead_i", how="anti"), second.hits]))


def _decide_scored_once(leads: pl.DataFrame, source, rejected: pl.DataFrame, freq, thresholds, per_record: bool,
                        hits: pl.DataFrame, prune: bool = False) -> Resolved:
    """leads_decide_frame's decisions for a small batch, from one scoring pass over both stages'
    candidates. A candidate's score depends on the lead and that candidate alone, so the stage-1
    decision is decisions_make over the stage-1 candidates' rows of this pass, and an unsettled lead's
    is decisions_make over all of its candidates: the staged path's decisions, evidence and hits, row
    for row (identity/tests/test_engine.py compares them), for one scoring pass instead of two."""
    more = stage_hits(source, 2, leads, freq)
    every = pl.concat([hits, more])
    # Pruning drops no stage-1 candidate (each agrees on the key that found it), so the stage-1 rows
    # are the staged path's either way.
    scores = pairs_score(leads, _pairs(leads, every, source, rejected), freq, thresholds, per_record=per_record,
                         prune=prune)

    def every_lead_again() -> Resolved:
        # What _stage_two_merged gives when every lead is retried, without cutting and joining the frames
        # into the same ones (a lead arriving now saved ~20 frame operations, ~2 ms).
        return Resolved(leads=leads, decisions=decisions_make(leads, scores, thresholds), scores=scores, hits=every)

    if not hits.height and more["lead_i"].n_unique() == leads.height:
        return every_lead_again()  # no key found anyone: no lead is settled by stage 1, each has stage 2's
    first_scores = _scores_of(scores, hits.select(PERSON).unique(), on=PERSON)
    first = Resolved(leads=leads, decisions=decisions_make(leads, first_scores, thresholds), scores=first_scores,
                     hits=hits)
    unsettled = first.decisions.filter(~pl.col("outcome").is_in(SETTLED_BY_KEYS)).select("lead_i")
    retry = more.select("lead_i").unique().join(unsettled, on="lead_i", how="semi")
    if not retry.height:
        return first
    if retry.height == leads.height:
        return every_lead_again()
    again = _scores_of(scores, retry, on=["lead_i"])
    retried = leads.join(retry, on="lead_i", how="semi")
    second = Resolved(leads=retried, decisions=decisions_make(retried, again, thresholds), scores=again,
                      hits=every.join(retry, on="lead_i", how="semi"))
    return _stage_two_merged(first, second, retry)


def leads_decide_frame(leads: pl.DataFrame, context: MatchContext, *, per_record: bool = False,
                       score_once: bool | None = None, prune: bool = True) -> Resolved:
    """Decisions for a batch: the key rules first; the leads they did not settle get the name
    rules too, and are scored again with every candidate. `per_record` keeps every driver
    record's own evidence too (Scores.records). A batch of at most SCORE_ONCE_MAX_LEADS leads (or any,
    with score_once=True) gets the same decisions from one scoring pass (_decide_scored_once).
    `prune`: the second stage drops the candidates no name could make plausible before comparing
    names (matching._hopeless_dropped): the same decisions; False keeps every candidate in the scores
    (the model estimate weighs them all; explain_lead shows them all)."""
    with _small_on_one_core(leads):
        return _decide_frame(leads, context, per_record, score_once, prune)


def _small_on_one_core(leads: pl.DataFrame):
    """identity.cores.one_core for a batch of at most SCORE_ONCE_MAX_LEADS leads; bigger ones keep every core."""
    return one_core(enabled=leads.height <= SCORE_ONCE_MAX_LEADS)


def _decide_frame(leads: pl.DataFrame, context: MatchContext, per_record: bool, score_once: bool | None,
                  prune: bool) -> Resolved:
    source = context.source
    rejected = linking.rejected_frame(source_pks=leads["source_pk"].to_list())
    freq = dataclasses.replace(context.freq, keys=source.key_counts(leads))
    hits = stage_hits(source, 1, leads, freq)
    if score_once or (score_once is None and leads.height <= SCORE_ONCE_MAX_LEADS):
        return _decide_scored_once(leads, source, rejected, freq, context.thresholds, per_record, hits, prune)
    scores, decisions = _score(leads, hits, source, rejected, freq, context.thresholds, per_record)
    unsettled = leads.join(decisions.filter(~pl.col("outcome").is_in(SETTLED_BY_KEYS)), on="lead_i", how="semi")
    more = stage_hits(source, 2, unsettled, freq) if unsettled.height else None
    first = Resolved(leads=leads, decisions=decisions, scores=scores, hits=hits)
    if more is None or not more.height:
        return first
    retry = more.select("lead_i").unique()
    more = pl.concat([hits.join(retry, on="lead_i", how="semi"), more])
    retried = leads.join(retry, on="lead_i", how="semi")
    scores2, decisions2 = _score(retried, more, source, rejected, freq, context.thresholds, per_record, prune)
    return _stage_two_merged(first, Resolved(leads=retried, decisions=decisions2, scores=scores2, hits=more), retry)


def leads_decide(leads: list[LeadKeys], context: MatchContext) -> dict[str, Decision]:
    """Decision objects for a few leads (explain, review, tests)."""
    from identity.matching import leads_frame  # noqa: PLC0415

    resolved = leads_decide_frame(leads_frame(leads), context)
    return decisions_materialize(resolved.decisions, resolved.scores)


@dataclass
class BatchOutcome:
    outcomes: dict[str, str] = field(default_factory=dict)  # source_pk -> "link" or a reason code
    linked: list[str] = field(default_factory=list)
    already_linked: list[str] = field(default_factory=list)
    resolved: Resolved | None = None

    @property
    def decisions(self) -> dict[str, Decision]:
        if self.resolved is None:
            return {}
        return decisions_materialize(self.resolved.decisions, self.resolved.scores)

    def counts(self) -> Counter:
        counts = Counter(self.outcomes.values())
        return Counter({"processed": len(self.outcomes), "linked": len(self.linked),
                        "already_linked": len(self.already_linked),
                        **{str(k).lower(): v for k, v in counts.items() if k != "link"}})


def leads_resolve(*, source_pks: list[str], context: MatchContext | None = None, write: bool = True) -> BatchOutcome:
    """Decide a batch of leads and write the outcomes (links + origins, or unmatched rows) atomically."""
    context = context or MatchContext.load()
    # A lead linked meanwhile (by a reviewer, another job) is not decided again. Two index-driven
    # lookups, whatever the statistics say about the links table.
    linked = set(linking.lead_links(source_pks=source_pks))
    leads = leads_load([pk for pk in source_pks if pk not in linked])
    return leads_resolve_frame(leads, context, write=write)


def leads_resolve_frame(leads: pl.DataFrame, context: MatchContext, *, write: bool = True,
                        write_batch: int | None = None) -> BatchOutcome:
    """Decide a frame of leads at once, then write the outcomes `write_batch` leads per
    transaction (all in one when None)."""
    with _small_on_one_core(leads):  # the writes' frame operations too
        resolved = leads_decide_frame(leads, context)
        decisions = resolved.decisions
        outcome = BatchOutcome(outcomes=dict(zip(decisions["source_pk"], decisions["outcome"], strict=True)),
                               resolved=resolved)
        if not write or not decisions.height:
            return outcome
        return outcome_write(outcome, context, write_batch=write_batch)


def resolved_subset(resolved: Resolved, source_pks: list[str]) -> BatchOutcome:
    """The decisions (not written) of some leads of a bigger decided frame, as a batch's outcome.

    When the evidence is made (Resolved.with_evidence), the batch's writes read the decisions and the
    evidence alone: the scores and hits stay the bigger frame's, every lead's (whoever reads them selects
    its leads by lead_i, as decisions_materialize and evidence_json do). Cutting them too took 7-9 ms of
    each batch of 1,000 out of a window of 10,000 at 1M (2 ms without), on recovery's writing thread."""
    keep = resolved.leads.filter(pl.col("source_pk").is_in(source_pks)).select("lead_i")
    whole = resolved.evidence is not None
    part = Resolved(
        leads=resolved.leads.join(keep, on="lead_i", how="semi"),
        decisions=resolved.decisions.join(keep, on="lead_i", how="semi"),
        scores=resolved.scores if whole else Scores(resolved.scores.candidates.join(keep, on="lead_i", how="semi"),
                                                    resolved.scores.fields.join(keep, on="lead_i", how="semi"), None),
        hits=resolved.hits if whole else resolved.hits.join(keep, on="lead_i", how="semi"),
        evidence=resolved.evidence.join(keep, on="lead_i", how="semi") if whole else None)
    decisions = part.decisions
    return BatchOutcome(outcomes=dict(zip(decisions["source_pk"], decisions["outcome"], strict=True)), resolved=part)


def outcome_write(outcome: BatchOutcome, context: MatchContext, *, write_batch: int | None = None) -> BatchOutcome:
    """Write a decided frame's links (and origins) and unmatched rows, `write_batch` leads per
    transaction (all in one when None); fills outcome.linked and outcome.already_linked."""
    resolved = outcome.resolved
    decisions = resolved.decisions
    outcome.linked, outcome.already_linked = [], []
    if not decisions.height:
        return outcome
    evidence = resolved.evidence if resolved.evidence is not None else evidence_json(decisions, resolved.scores,
                                                                                     context.thresholds)
    written = decisions.join(evidence, on="lead_i")
    step = write_batch or written.height
    for start in range(0, written.height, step):
        part = written.slice(start, step)
        links = part.filter(pl.col("outcome") == "link").select(
            "source_pk", "person_key", pl.col("rule").alias("match_rule"), pl.col("score").alias("match_score"),
            pl.col("confidence").alias("confidence_level"), "evidence", pl.lit(RULE_VERSION).alias("rule_version"))
        unmatched = part.filter(pl.col("outcome") != "link").select(
            "source_pk", pl.col("outcome").alias("reason_code"), pl.col("evidence").alias("details"))
        with transaction.atomic():
            # The unmatched rows first: the links' trigger takes the lead window's lock (recovery.lead_window)
            # until the commit, and a second writer can write its own unmatched rows meanwhile.
            linking.leads_record_unmatched_frame(outcomes=unmatched)
            result = linking.leads_link_frame(links=links)
            outcome.linked += result.linked
            outcome.already_linked += result.already_linked
    return outcome


def leads_unmatched_record(*, source_pks: list[str]) -> dict[str, str]:
    """Decide these leads now and record the reason and candidates of each one the matcher would not
    link (its open unmatched row), writing no link: a lead decided "link" is left to the next
    recovery run. What a person's undo of a link records (the judgement it stored already excludes
    the person). Returns each lead's outcome, "link" or its reason code."""
    context = MatchContext.load()
    outcome = leads_resolve_frame(leads_load(source_pks), context, write=False)
    decisions = outcome.resolved.decisions
    if decisions.height:
        written = decisions.join(evidence_json(decisions, outcome.resolved.scores, context.thresholds), on="lead_i")
        linking.leads_record_unmatched_frame(outcomes=written.filter(pl.col("outcome") != "link").select(
            "source_pk", pl.col("outcome").alias("reason_code"), pl.col("evidence").alias("details")))
    return outcome.outcomes


def _write_in_thread(outcome: BatchOutcome, context: MatchContext, write_batch: int) -> Counter:
    """outcome_write on the writer thread's own connection; a lost connection rolls back the
    transaction in flight, which is written again (links committed before it: already_linked)."""
    return reconnecting(lambda: outcome_write(outcome, context, write_batch=write_batch)).counts()


def unlinked_leads(
    *, limit: int | None = None, source_pks: list[str] | None = None, shard: tuple[int, int] | None = None
) -> list[str]:
    """Leads without a link, newest first; `shard=(i, n)` keeps the i-th of n disjoint slices."""
    params: list = [LEADS_TABLE]
    where = ""
    if source_pks:
        where = "AND c.source_pk = ANY(%s)"
        params.append(source_pks)
    if shard:
        where += " AND mod(abs(hashtext(c.source_pk)::bigint), %s) = %s"
        params += [shard[1], shard[0]]
    sql = f"""
        SELECT c.source_pk FROM public.module_ct_cabinet_leads c
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links l WHERE l.source_table = %s AND l.source_pk = c.source_pk)
        {where}
        ORDER BY c.created_at DESC, c.source_pk
    """
    if limit:
        sql += " LIMIT %s"
        params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


@dataclass
class _RefreshBeside:
    """A drivers index refresh running on its own thread (and connection) beside a match run."""

    done: Future  # its RefreshResult, or its error
    index: IndexFrame | None  # a first build's in-memory index, handed over before the build commits


def _refresh_beside() -> _RefreshBeside:
    """Start `refresh_drivers_index` on another thread and wait until it either hands over a first
    build's in-memory index (it goes on writing and indexing the tables) or ends."""
    index_ready: Future = Future()

    def refresh():
        try:
            return drivers_index_refresh(on_index=index_ready.set_result)
        finally:
            connections.close_all()  # this thread's own connection

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh")
    done = pool.submit(refresh)
    pool.shutdown(wait=False)
    wait([index_ready, done], return_when=FIRST_COMPLETED)
    if index_ready.done():
        return _RefreshBeside(done=done, index=index_ready.result())
    done.result()  # its error is this run's
    return _RefreshBeside(done=done, index=None)


def _held(outcome: BatchOutcome, thresholds: Thresholds) -> BatchOutcome:
    """A decided batch kept until it may be written: its decisions and their evidence, not its scores."""
    resolved = outcome.resolved.with_evidence(thresholds)
    scores = Scores(resolved.scores.candidates.clear(), resolved.scores.fields.clear(), None)
    return dataclasses.replace(outcome, resolved=dataclasses.replace(resolved, scores=scores,
                                                                     hits=resolved.hits.clear()))


def leads_match(
    *, limit: int | None = None, source_pks: list[str] | None = None, batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False, progress: bool | None = None, shard: tuple[int, int] | None = None,
    redecide: bool = False, refresh: bool = False,
) -> Counter:
    """Match every unlinked lead (or the ones named), batch by batch, as a recorded job run.

    The unlinked leads are read once, in one statement; with many of them the drivers index is
    read into memory once too, and every batch is blocked and scored column-wise against it.
    With `shard=(i, n)` only the i-th of n disjoint slices of the leads: n processes, each with its
    own shard, match in parallel without ever deciding the same lead.

    A lead already decided (an open unmatched row) after the index and the match model last changed,
    by this rule version, and not changed or judged since, is not decided again unless `redecide`:
    the same inputs would give the same decision. The match model is estimated anew (from the newest
    leads, linked or not) when there is none or the index changed after it.

    `refresh` refreshes the drivers index first (refresh_drivers_index, its own recorded run). When
    that is a first build, the leads are decided while PostgreSQL writes and indexes it, against the
    in-memory index the build hands over (the same one the next run would read), and written once the
    build has committed; a build that fails leaves nothing written by this run either."""
    if refresh and (dry_run or shard):
        raise ValueError("refresh does not combine with dry_run or shard")
    started = time.monotonic()
    totals: Counter = Counter()
    name = "match_leads" if shard is None else f"match_leads[{shard[0]}/{shard[1]}]"
    params = {"limit": limit, "dry_run": dry_run, "named": bool(source_pks), "shard": shard, "redecide": redecide,
              "refresh": refresh}
    with job_run(name, params=params) as run:
        beside, labels = None, None
        if refresh and index_is_empty():
            # Read first: a first build holds canon.identity_links locked until it commits.
            todo = leads_load(unlinked_leads(limit=limit, source_pks=source_pks) if limit else source_pks,
                              unlinked_only=True)
            labels = labels_load()
            beside = _refresh_beside()
            if beside.index is None:  # the build ended (committed) without handing an index over
                beside = None
        elif refresh:  # an incremental refresh: seconds at most, nothing to decide beside it
            drivers_index_refresh()
        if beside is not None:
            context = MatchContext.of_index(beside.index)
        else:
            if shard or limit:
                todo = leads_load(unlinked_leads(limit=limit, source_pks=source_pks, shard=shard))
            else:
                since = None if (source_pks or redecide) else match_inputs_changed_at()
                todo = leads_load(source_pks, unlinked_only=True, undecided_since=since)
            context = MatchContext.for_leads(todo.height)
        if context.index is not None and todo.height >= ESTIMATE_MIN_LEADS and not dry_run:
            # Beside a first build the model is estimated anew: the index is new, any model is older.
            context = match_model_current(context, run_id=run.run.pk, stale=beside is not None, labels=labels)
            totals["m_levels_estimated"] = sum(len(levels) for levels in context.freq.m.values())
        totals["load_seconds"] = round(time.monotonic() - started, 2)
        # Written only once the build beside this run has committed (its persons exist then).
        gate = beside.done if beside is not None else None
        chunk = batch_size * (DECIDE_BATCHES if context.index is not None else 1)
        # Several chunks: each is written by a writer thread (WRITERS, each its own connection) while the
        # next is decided, so PostgreSQL's work on the writes overlaps the scoring.
        pipelined = (todo.height > chunk or gate is not None) and not dry_run
        writers = ([ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"match-writer-{i}") for i in range(WRITERS)]
                   if pipelined else [])
        with progress_bar(todo.height, "matching", progress) as bar:
            in_flight: deque[tuple[int, Future, int]] = deque()
            held: list[tuple[int, BatchOutcome, int]] = []

            def finish(batch_no: int, counts: Counter, height: int) -> None:
                totals.update(counts)
                run.counts = dict(totals)
                run.log_batch(batch_no, **counts)
                bar.update(height)

            def release() -> None:
                """Hand the decided batches to the writer threads, once the build (if any) committed."""
                if gate is not None:
                    gate.result()  # a failed build's error is this run's, before anything is written
                for batch_no, outcome, height in held:
                    writer = writers[batch_no % len(writers)]
                    in_flight.append((batch_no, writer.submit(_write_in_thread, outcome, context, batch_size), height))
                held.clear()

            def drain(keep: int) -> None:
                while len(in_flight) > keep:
                    batch_no, future, height = in_flight.popleft()
                    finish(batch_no, future.result(), height)

            try:
                for batch_no, start in enumerate(range(0, todo.height, chunk), start=1):
                    batch = todo.slice(start, chunk).with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("lead_i"))
                    if not pipelined:
                        # A lost connection rolls back the write in flight; the chunk is decided and written
                        # again (links committed before it come back as already_linked).
                        finish(batch_no, reconnecting(lambda: leads_resolve_frame(
                            batch, context, write=not dry_run, write_batch=batch_size).counts(), handle=run),
                            batch.height)
                        continue
                    outcome = reconnecting(lambda: leads_resolve_frame(batch, context, write=False), handle=run)
                    if gate is not None and not gate.done():
                        held.append((batch_no, _held(outcome, context.thresholds), batch.height))
                        continue
                    held.append((batch_no, outcome, batch.height))
                    release()
                    drain(keep=len(writers))
                release()
                drain(keep=0)
            finally:
                for writer in writers:
                    writer.submit(connections.close_all).result()  # each writer thread's own connection
                    writer.shutdown()
        if totals["linked"] and not dry_run:
            tables_analyze(*LINK_TABLES, changed=totals["processed"])
        totals["seconds"] = round(time.monotonic() - started, 2)
        run.counts = dict(totals)
    return totals


@dataclass
class Explanation:
    lead: LeadKeys
    decision: Decision
    records: dict[str, list]  # person_key -> its DriverRecords
    thresholds: Thresholds
    rules: dict[str, list[str]] = field(default_factory=dict)  # person_key -> blocking rules that found it
    # (person_key, driver_id) -> {field: level}: the engine's evidence for each driver record
    record_levels: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


def lead_explain(source_pk: str) -> Explanation | None:
    """Everything behind one lead's decision, written nowhere (for explain_lead and review)."""
    leads = leads_load([source_pk])
    if not leads.height:
        return None
    context = MatchContext.load()
    resolved = leads_decide_frame(leads, context, per_record=True, prune=False)
    decision = decisions_materialize(resolved.decisions, resolved.scores)[source_pk]
    record_levels: dict[tuple[str, str], dict[str, str]] = {}
    for row in resolved.scores.records.iter_rows(named=True):
        record_levels.setdefault((row["person_key"], row["driver_id"]), {})[row["field"]] = row["level"]
    persons = resolved.hits["person_key"].unique()
    records: dict[str, list] = {}
    frame = context.source.persons_records(persons).sort("driver_id")
    for row in frame.iter_rows(named=True):
        person_key = row.pop("person_key")
        records.setdefault(person_key, []).append(DriverRecord(**{
            k: (tuple(v) if isinstance(v, list) else v) for k, v in row.items()}))
    found: dict[str, list[str]] = {}
    for row in resolved.hits.unique().sort("rule").iter_rows(named=True):
        found.setdefault(row["person_key"], []).append(row["rule"])
    (keys,) = leads_load_keys([source_pk])
    return Explanation(lead=keys, decision=decision, records=records, thresholds=context.thresholds, rules=found,
                       record_levels=record_levels)


def leads_match_parallel(*, workers: int, limit: int | None = None, batch_size: int = DEFAULT_BATCH,
                         dry_run: bool = False) -> Counter:
    """Run `workers` match_leads processes, one shard each, and add up what they did."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from django.conf import settings  # noqa: PLC0415

    share = None if limit is None else -(-limit // workers)
    commands = []
    for i in range(workers):
        command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "match_leads", "--json",
                   "--shard", f"{i}/{workers}", "--batch-size", str(batch_size)]
        command += ["--limit", str(share)] if share else []
        command += ["--dry-run"] if dry_run else []
        commands.append(command)
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
    totals: Counter = Counter()
    failed = []
    for i, proc in enumerate(procs):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"shard {i}/{workers} exited {proc.returncode}")
            continue
        counts = json.loads(out.strip().splitlines()[-1])
        counts.pop("seconds", None)
        totals.update(counts)
    if failed:
        raise RuntimeError("; ".join(failed))
    return totals
