"""Scoring and deciding, column-wise: candidate pairs as a Polars frame in, decisions with evidence out.

The model is Fellegi–Sunter over the comparisons declared in identity.fields: each level has
m = P(level | same person) and u = P(level | different persons); its weight is log2(m / u) bits.
Exact agreement on a value uses the value's own frequency as u (term-frequency adjustment: a phone
three people share or the surname "Quispe" says less than a unique one). The posterior log-odds
is the prior (one person in N, times the estimated share of leads that have a driver) plus the weights.

Independence fails exactly where families share phones and friends share cars, so a link also
needs corroboration: given name and surname must agree, and some key (document, phone, e-mail,
plate or birth date) must agree too. See docs/matching.md.

Every lead of a batch is scored by the same expressions over one frame of pairs (one row per
lead and candidate driver record); a single lead is a one-lead batch. `lead_decide` and
`candidate_score` wrap one lead's dataclasses into frames for callers and tests that hold them.
"""

from __future__ import annotations

import math
from functools import cache
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler, Levenshtein

from identity.fields import AGREEING_FIELDS, AGREEING_LEVELS, FIELDS, KEY_FIELDS, Field, Kind
from identity.models import ReasonCode

RULE_VERSION = "fs-2026.12-v15"  # v2: the vectorized engine; v3: no recruitment rule, swapped surnames;
# v4: m estimated from each run's data (identity.estimate), the birth_date_initials blocking rule;
# v5: a link names its corroboration path (LINK_RULES), and a demoted path sends its leads to review;
# v6: the prior from the estimated share of leads that have a driver (identity.estimate.match_share_estimate);
# v7: the document_one_typo and phone_one_typo blocking rules, a word typed in two pieces joined (and, deciding
# nothing differently, the candidates no name could make plausible dropped before names are compared);
# v8: the fs_document_birth_date path (the document and the birth date exact corroborate whatever the name says);
# v9: the document's two_typos level (two digits typed wrong: weight, never an agreeing key)
# v10: the fs_document_typo_birth_date path (the document one typo off, the birth date exact and the given
# name agreeing), and document_one_typo blocking with one shared initial
# v11: that path also with the surnames agreeing instead, when the documents are not numbered in sequence (twins)
# v12: a key's one_typo level counts one character dropped or added (documents without their leading
# zeros), and document_one_typo blocking finds the documents a digit shorter or longer
# v13: a key one typo off alone no longer makes a candidate plausible (AGREEING_LEVELS): its score must
# reach weak_bits, so a stranger the typo rules met by chance is no review
# v14: the name level part_missing (a side lacks a given name or a surname, and nothing it gives
# disagrees) and the fs_personal_key_name_part path
# v15: a name block of the lead's four rarest tokens together, where their triple is a block (candidates.name_blocks)

# The paths by which a link is corroborated, strongest first (docs/matching.md §5). A link is named by
# the first path that holds and is not demoted (identity.rules), so an audit that finds one path
# linking wrong people can stop that path alone and leave the others linking.
LINK_RULES = (
    "fs_document_plus_key",  # the document and another exact key (phone, e-mail, birth date) agree
    "fs_personal_key",  # a key one human owns (document, e-mail, birth date) with a given name and a surname
    "fs_shared_key",  # only a key relatives share (phone, plate, an e-mail one typo off) with the names
    "fs_document_birth_date",  # the document and the birth date exact, and no name agreeing (a wrong name box)
    "fs_document_typo_birth_date",  # the document one typo off, the birth date exact, the given name agreeing
    "fs_personal_key_name_part",  # the document or e-mail exact, a side without a given name or surname, nothing differing
)
# The rule of a decision that links through no path (review, no candidates, ...).
NO_LINK_RULE = "fellegi_sunter"

# Name levels in which both a given name and a surname agree. Swapped surnames are usually two
# families ("Cruz Choque" / "Choque Cruz"): only a personal key makes them one person.
NAME_CORROBORATES = ("exact", "typo", "subset", "partial", "surnames_swapped")
# ...and with no token on either side contradicting the other.
NAME_AGREES_WITHOUT_CONFLICT = ("exact", "typo", "subset")
FUZZY_TOKEN_MIN = 0.90  # Jaro-Winkler similarity for two name tokens to count as a typo
FUZZY_TOKEN_WEIGHT = 0.8  # a typo'd token carries this share of an exact token's information
NEAR_EXACT = 1.0 - 1e-9  # one edit, or three letters swapped: a typo whatever Jaro-Winkler says

# Pseudo-counts: the population a lead could come from is larger than a small index, and a
# token seen once among ten drivers is not one in ten of all Peruvians. Frequencies are smoothed
# toward these priors; at a million drivers the smoothing is negligible.
PSEUDO_PERSONS = 10_000
PSEUDO_DRIVERS = 10_000
BASE_TOKEN_F = 0.002  # a name token's frequency before the data says otherwise
EVIDENCE_TOP = 5  # candidates kept in a decision's evidence

# --- Frame schemas ---------------------------------------------------------------------------

LEAD_SCHEMA = {
    "lead_i": pl.UInt32, "source_pk": pl.String, "phone": pl.String, "document": pl.String,
    "email": pl.String, "plate": pl.String, "birth_date": pl.Date, "name_tokens": pl.List(pl.String),
    "park_id": pl.String, "lead_date": pl.Date, "surname_tokens": pl.List(pl.String),
}
RECORD_SCHEMA = {
    "driver_id": pl.String, "person_key": pl.String, "park_id": pl.String, "phone": pl.String,
    "document": pl.String, "license_document": pl.String, "email": pl.String, "plate": pl.String,
    "birth_date": pl.Date, "given_tokens": pl.List(pl.String), "surname_tokens": pl.List(pl.String),
    "hire_date": pl.Date,
}
# Pairs: one row per (lead, candidate driver record), the record's columns beside the lead's index.
PAIR_SCHEMA = {"lead_i": pl.UInt32, **RECORD_SCHEMA, "excluded": pl.Boolean}


# --- Inputs as dataclasses (one lead at a time: tests, explain, review) --------------------


@dataclass(frozen=True)
class LeadKeys:
    """A lead's normalized keys (identity.normalize); None where the lead has nothing usable."""

    source_pk: str
    phone: str | None = None
    document: str | None = None
    email: str | None = None
    plate: str | None = None
    birth_date: date | None = None
    name_tokens: tuple[str, ...] = ()
    park_id: str | None = None
    lead_date: date | None = None  # the calendar day of the lead in Lima
    surname_tokens: tuple[str, ...] = ()  # the surname box's words, in order (paternal, maternal)

    @property
    def has_full_name(self) -> bool:
        return len(set(self.name_tokens)) >= 2

    @property
    def has_identifier(self) -> bool:
        return any((self.phone, self.document, self.email, self.plate)) or self.has_full_name


@dataclass(frozen=True)
class DriverRecord:
    """One driver record of a candidate person, as the drivers index holds it."""

    driver_id: str
    park_id: str | None = None
    phone: str | None = None
    document: str | None = None
    license_document: str | None = None
    email: str | None = None
    plate: str | None = None
    birth_date: date | None = None
    given_tokens: tuple[str, ...] = ()
    surname_tokens: tuple[str, ...] = ()
    hire_date: date | None = None


@dataclass(frozen=True)
class Candidate:
    person_key: str
    records: tuple[DriverRecord, ...]


def leads_frame(leads: list[LeadKeys]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "lead_i": list(range(len(leads))),
            "source_pk": [x.source_pk for x in leads],
            **{name: [getattr(x, name) for x in leads] for name in
               ("phone", "document", "email", "plate", "birth_date")},
            "name_tokens": [list(x.name_tokens) for x in leads],
            "park_id": [x.park_id for x in leads],
            "lead_date": [x.lead_date for x in leads],
            "surname_tokens": [list(x.surname_tokens) for x in leads],
        },
        schema=LEAD_SCHEMA,
    )


def pairs_frame(rows: list[tuple[int, str, DriverRecord, bool]]) -> pl.DataFrame:
    """Pairs from (lead_i, person_key, record, excluded) tuples."""
    data: dict[str, list] = {name: [] for name in PAIR_SCHEMA}
    for lead_i, person_key, record, excluded in rows:
        data["lead_i"].append(lead_i)
        data["person_key"].append(person_key)
        data["excluded"].append(excluded)
        for name in RECORD_SCHEMA:
            if name != "person_key":
                value = getattr(record, name)
                data[name].append(list(value) if isinstance(value, tuple) else value)
    return pl.DataFrame(data, schema=PAIR_SCHEMA)


# --- What the data says ----------------------------------------------------------------------


def _frame(value, schema: dict) -> pl.DataFrame:
    if isinstance(value, pl.DataFrame):
        return value
    if isinstance(value, dict):
        names = list(schema)
        if len(names) == 2:
            return pl.DataFrame({names[0]: list(value), names[1]: list(value.values())}, schema=schema)
        return pl.DataFrame({names[0]: [k[0] for k in value], names[1]: [k[1] for k in value],
                             names[2]: list(value.values())}, schema=schema)
    raise TypeError(f"expected a dict or a DataFrame, got {type(value).__name__}")


TOKENS_SCHEMA = {"token": pl.String, "drivers": pl.Int64}
KEYS_SCHEMA = {"field": pl.String, "value": pl.String, "persons": pl.Int64}
HIRES_SCHEMA = {"park_id": pl.String, "hire_date": pl.Date, "hired": pl.Int64}


@dataclass(frozen=True)
class Frequencies:
    """What the data says about how common things are. Each table is a dict or a frame:
    tokens {token: driver records carrying it}; keys {(field, value): persons carrying it};
    hires {(park_id, hire_date): driver records hired that day} (or {park_id: {hire_date: n}})."""

    persons: int  # N: persons in the registry
    drivers: int  # driver records in the index (denominator of token frequencies)
    tokens: dict | pl.DataFrame = field(default_factory=dict)
    keys: dict | pl.DataFrame = field(default_factory=dict)
    hires: dict | pl.DataFrame = field(default_factory=dict)
    # m estimated from the data (identity.estimate), {field: {level: m}}, bounded by each level's
    # m_range; a level not here keeps the registry's declared m.
    m: dict = field(default_factory=dict)
    # The share of leads whose human is among the persons (identity.estimate.match_share_estimate);
    # None: not estimated, the declared prior (one person in N + PSEUDO_PERSONS).
    match_share: float | None = None

    @property
    def population(self) -> int:
        return self.persons + PSEUDO_PERSONS

    @property
    def prior_bits(self) -> float:
        """The prior log-odds that a lead is one given person: log2(share / (N - share)) with an estimated
        share of leads that have a driver, or -log2(N + PSEUDO_PERSONS) (declared) without one."""
        share = self.match_share
        if share is None:
            return -math.log2(self.population)
        return math.log2(share / max(self.persons - share, share))

    def tokens_frame(self) -> pl.DataFrame:
        return _frame(self.tokens, TOKENS_SCHEMA)

    def keys_frame(self) -> pl.DataFrame:
        return _frame(self.keys, KEYS_SCHEMA)

    def hires_frame(self) -> pl.DataFrame:
        hires = self.hires
        if isinstance(hires, dict) and hires and isinstance(next(iter(hires.values())), dict):
            hires = {(park, day): n for park, days in hires.items() for day, n in days.items()}
        return _frame(hires, HIRES_SCHEMA)



@dataclass(frozen=True)
class Thresholds:
    link_bits: float = 8.0  # posterior log-odds a link needs
    margin_bits: float = 6.0  # how far the best must be ahead of the second
    weak_bits: float = -6.0  # below this, with no key agreeing, a candidate is noise
    # Recruitment: a record hired in the lead's park 0..N days after the lead date (0 turns the
    # comparison and the recruitment rule off).
    recruit_window_days: int = 7
    # Link rules (LINK_RULES) an audit demoted to "review instead of link" (identity.rules): a lead
    # that would link only through them goes to review. Not a setting: MatchContext reads the database.
    demoted_rules: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls) -> Thresholds:
        from django.conf import settings  # noqa: PLC0415

        return cls(**getattr(settings, "CT4_MATCHING", {}))

    def as_dict(self) -> dict:
        return {"link": self.link_bits, "margin": self.margin_bits, "weak": self.weak_bits}


# --- Comparisons, column-wise ---------------------------------------------------------------

PERSON = ["lead_i", "person_key"]
# A lead's candidates, best first. Scores equal but for the last bits of a float (sums of the same terms
# in another order, as different batches make them) are a tie, settled by person_key: the same lead gets
# the same best candidate and the same evidence whatever batch it is scored in.
CANDIDATE_ORDER = ["lead_i", pl.col("bits").round(9), "person_key"]


def _log2(expr: pl.Expr) -> pl.Expr:
    return expr.clip(lower_bound=1e-12).log(2)


@cache  # constant per field: a replacement's mapping made each call cost a one-lead batch ~0.1 ms
def _level_m(f: Field) -> pl.Expr:
    """The declared m of a pair's level (column "level")."""
    return pl.col("level").replace_strict({lv.name: lv.m for lv in f.levels}, return_dtype=pl.Float64)


# Below this many pairs rapidfuzz compares on the calling thread: starting its worker threads costs
# about a millisecond a call, more than a few thousand comparisons take (the single-lead path calls it
# a few times per lead).
THREADED_MIN_PAIRS = 10_000


def _workers(pairs: int) -> int:
    return -1 if pairs >= THREADED_MIN_PAIRS else 1


def _distances(a: pl.Series, b: pl.Series, cutoff: int = 1) -> np.ndarray:
    """Damerau-Levenshtein distance of each pair, capped at cutoff + 1 (we only ask "at most `cutoff` edits?")."""
    return _edits(a.to_list(), b.to_list(), cutoff)


def _edits(a: list[str], b: list[str], cutoff: int) -> np.ndarray:
    """_distances of two lists. Levenshtein first, at about half Damerau-Levenshtein's cost: a swap of two
    neighbours is two Levenshtein edits, so a pair more than 2 * cutoff Levenshtein edits apart is more than
    `cutoff` Damerau-Levenshtein edits apart, and only the pairs within that are measured again (a million
    unrelated 9-digit numbers: 0.25 s instead of 0.5 s; docs/benchmarks.md, session 23)."""
    distance = np.full(len(a), cutoff + 1, dtype=np.uint32)  # as cpdist gives it
    if not a:
        return distance
    near = np.flatnonzero(process.cpdist(a, b, scorer=Levenshtein.distance, score_cutoff=2 * cutoff,
                                         workers=_workers(len(a))) <= 2 * cutoff)
    if len(near):
        distance[near] = process.cpdist([a[i] for i in near], [b[i] for i in near], scorer=DamerauLevenshtein.distance,
                                        score_cutoff=cutoff, workers=_workers(len(near)))
    return distance


def _compare_keys(fields: list[Field], leads: pl.DataFrame, pairs: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """exact (u from the value's frequency) / one_typo / two_typos (the fields that declare it) / different,
    over each key field's index columns,
    every key field in one frame (one distance call; a one-lead frame paid ~12 frame operations per
    key field when they were compared one by one)."""
    compared = _key_comparison(tuple(fields))
    columns = compared.columns
    lead_values = (leads.select("lead_i", *(pl.col(f.lead_column).alias(f.name) for f in fields))
                   .unpivot(index="lead_i", variable_name="field", value_name="lead_value").drop_nulls("lead_value"))
    values = (pairs.select("lead_i", "person_key", "driver_id", *compared.column_names)
              .unpivot(index=["lead_i", "person_key", "driver_id"], variable_name="column", value_name="value")
              .drop_nulls("value").join(columns, on="column").join(lead_values, on=["lead_i", "field"]))
    # One frame operation for all the columns the passes read (a one-lead frame pays ~0.1 ms each).
    values = values.with_columns(compared.derived)
    # One typo: a character changed, dropped or added, or two swapped (Damerau-Levenshtein 1). Two typos:
    # two characters changed or swapped, same length (the level's u counts those neighbours only).
    not_exact = ~values["exact"].to_numpy()
    edits, same_length_two = np.full(values.height, 3, dtype=np.int32), np.zeros(values.height, dtype=bool)
    for a, b, gaps, where in (("value", "lead_value", values["gap"].to_numpy(), not_exact),
                              ("stripped", "lead_stripped", values["stripped_gap"].to_numpy(),
                               not_exact & values["zeros_went"].to_numpy())):  # elsewhere the first pass's strings
        rows = np.flatnonzero(where & (gaps <= 1))
        if not len(rows):
            continue
        distance = _distances(values[a].gather(rows), values[b].gather(rows), cutoff=2)
        edits[rows] = np.minimum(edits[rows], distance)
        same_length_two[rows] |= (distance == 2) & (gaps[rows] == 0)
    values = values.with_columns(
        pl.when(pl.col("exact")).then(0).when(pl.Series(edits) <= 1).then(1)
        .when(pl.Series(same_length_two) & pl.col("field").is_in(list(compared.two_typos))).then(2).otherwise(3)
        .alias("rank"))
    # A record's best value per field (its document before its licence DNI on a tie). A record is one row per
    # column, so (rank, column_order) is unique within its field: the row holding the least is the one.
    choice = pl.col("rank") * (columns["column_order"].max() + 1) + pl.col("column_order")
    best = values.filter(choice == choice.min().over("lead_i", "driver_id", "field"))
    best = best.join(freq.keys_frame().select("field", "value", "persons"), on=["field", "value"], how="left")
    others = pl.max_horizontal(pl.col("persons").fill_null(1), pl.lit(1)) - 1
    exact_u = (others + compared.share_rate) / freq.population
    return best.select(
        "lead_i", "person_key", compared.level,
        pl.when(pl.col("rank") == 0).then(_log2(compared.exact_m / exact_u))
        .when(pl.col("rank") == 1).then(compared.typo_bits).when(pl.col("rank") == 2).then(compared.two_typos_bits)
        .otherwise(compared.different_bits).alias("bits"),
        "driver_id",
        pl.when(pl.col("rank") == 0).then(pl.col("persons").fill_null(1)).alias("shared_by"),
        pl.col("rank").cast(pl.Float64).alias("order"),
        "field",
    )


@dataclass(frozen=True)
class _KeyComparison:
    """What comparing a set of key fields needs that depends on the fields alone (_key_comparison)."""

    columns: pl.DataFrame  # column, field, column_order: each field's index columns
    column_names: tuple[str, ...]
    derived: tuple[pl.Expr, ...]  # stripped, lead_stripped, exact, gap, stripped_gap, zeros_went
    two_typos: tuple[str, ...]  # the fields with a two_typos level
    level: pl.Expr  # the level's name, from "rank"
    share_rate: pl.Expr  # per field (column "field")
    exact_m: pl.Expr
    typo_bits: pl.Expr
    two_typos_bits: pl.Expr
    different_bits: pl.Expr


@cache  # constant per set of fields: building these cost a one-lead batch ~1 ms a call
def _key_comparison(fields: tuple[Field, ...]) -> _KeyComparison:
    columns = pl.DataFrame(
        [(column, f.name, order) for f in fields for order, column in enumerate(f.index_columns)],
        schema={"column": pl.String, "field": pl.String, "column_order": pl.Int32}, orient="row")
    # A spreadsheet's dropped leading zeros are no typo: such a field's numbers also compare without them
    # (00844210 and 844210 are one document; 844210 and 00844211 one typo). A typed 0 can be a typo too
    # (02759585 for 22059585: two digits changed), so the typos are counted both ways and the fewer count.
    stripped, lead_stripped = pl.col("value"), pl.col("lead_value")
    zeros = [f.name for f in fields if f.leading_zeros_equal]
    if zeros:
        numbers = (pl.col("field").is_in(zeros) & pl.col("value").str.contains(r"^[0-9]+$")
                   & pl.col("lead_value").str.contains(r"^[0-9]+$"))
        stripped = pl.when(numbers).then(pl.col("value").str.strip_chars_start("0"))
        lead_stripped = pl.when(numbers).then(pl.col("lead_value").str.strip_chars_start("0"))
    exact = (pl.col("value") == pl.col("lead_value")) | ((stripped == lead_stripped) & (stripped != "")).fill_null(False)

    def gap(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return (a.str.len_chars().cast(pl.Int32) - b.str.len_chars().cast(pl.Int32)).abs()

    def per_field(values: dict[str, float]) -> pl.Expr:
        return pl.col("field").replace_strict(values, return_dtype=pl.Float64)

    two_typos = [f.name for f in fields if "two_typos" in f.level_names]
    return _KeyComparison(
        columns=columns,
        column_names=tuple(columns["column"].unique(maintain_order=True)),
        derived=(stripped.alias("stripped"), lead_stripped.alias("lead_stripped"), exact.alias("exact"),
                 gap(pl.col("value"), pl.col("lead_value")).alias("gap"),
                 gap(stripped, lead_stripped).fill_null(9).alias("stripped_gap"),
                 ((stripped != pl.col("value")) | (lead_stripped != pl.col("lead_value"))).fill_null(False)
                 .alias("zeros_went")),
        two_typos=tuple(two_typos),
        level=pl.col("rank").replace_strict({0: "exact", 1: "one_typo", 2: "two_typos", 3: "different"},
                                            return_dtype=pl.String).alias("level"),
        share_rate=per_field({f.name: f.share_rate for f in fields}),
        exact_m=per_field({f.name: f.level("exact").m for f in fields}),
        typo_bits=per_field({f.name: math.log2(f.level("one_typo").m / f.level("one_typo").u) for f in fields}),
        two_typos_bits=per_field({f.name: math.log2(f.level("two_typos").m / f.level("two_typos").u)
                                  if f.name in two_typos else 0.0 for f in fields}),
        different_bits=per_field({f.name: math.log2(f.level("different").m / f.level("different").u) for f in fields}),
    )


def _compare_date(f: Field, leads: pl.DataFrame, pairs: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """exact / near (day and month swapped, or one of day, month, year differs) / different."""
    lead_values = leads.select("lead_i", pl.col(f.lead_column).alias("lead_value")).drop_nulls("lead_value")
    column = f.index_columns[0]
    rows = pairs.select("lead_i", "person_key", "driver_id", pl.col(column).alias("value")).drop_nulls("value")
    rows = rows.join(lead_values, on="lead_i").with_columns(_date_rank())
    return rows.select("lead_i", "person_key", *_date_levels(f), "driver_id", pl.lit(None, pl.Int64).alias("shared_by"),
                       pl.col("rank").cast(pl.Float64).alias("order"))


@cache  # constant, as _level_m
def _date_rank() -> pl.Expr:
    """0 the same date, 1 near (day and month swapped, or one of day, month, year differs), 2 different."""
    a, b = pl.col("value"), pl.col("lead_value")
    same_parts = ((a.dt.year() == b.dt.year()).cast(pl.Int8) + (a.dt.month() == b.dt.month()).cast(pl.Int8)
                  + (a.dt.day() == b.dt.day()).cast(pl.Int8))
    swapped = (a.dt.year() == b.dt.year()) & (a.dt.month() == b.dt.day()) & (a.dt.day() == b.dt.month())
    return pl.when(a == b).then(0).when((same_parts == 2) | swapped).then(1).otherwise(2).alias("rank")


@cache  # constant per field, as _level_m
def _date_levels(f: Field) -> tuple[pl.Expr, pl.Expr]:
    """A date pair's level and bits from its rank (0 exact, 1 near, 2 different)."""
    names = {0: "exact", 1: "near", 2: "different"}
    return (pl.col("rank").replace_strict(names, return_dtype=pl.String).alias("level"),
            pl.col("rank").replace_strict({r: math.log2(f.level(n).m / f.level(n).u) for r, n in names.items()},
                                          return_dtype=pl.Float64).alias("bits"))


def _token_similarity(pairs: pl.DataFrame) -> pl.Series:
    """Similarity of each distinct (lead token, record token) pair that may be a typo:
    Jaro-Winkler for tokens of four letters or more (one edit counts as NEAR_EXACT), NEAR_EXACT
    for three-letter tokens with the same letters (luz / lzu) and for a three-letter token one letter
    short of a four-letter one (lui / luis, lor / flor, jse / jose); -1 where no typo is possible."""
    a, b = pairs["lead_token"].to_list(), pairs["token"].to_list()
    if not a:
        return pl.Series("similarity", [], dtype=pl.Float64)
    lead_len, token_len = pairs["lead_token"].str.len_chars().to_numpy(), pairs["token"].str.len_chars().to_numpy()
    long_ = (lead_len >= 4) & (token_len >= 4)
    one_edit = _edits(a, b, 1) <= 1
    similarity = np.full(len(a), -1.0)
    # Jaro-Winkler where it decides: two long tokens more than one edit apart.
    jaro = np.flatnonzero(long_ & ~one_edit)
    if len(jaro):
        similarity[jaro] = process.cpdist([a[i] for i in jaro], [b[i] for i in jaro], scorer=JaroWinkler.similarity,
                                          workers=_workers(len(jaro)), dtype=np.float64)
    similarity[long_ & one_edit] = NEAR_EXACT
    short = ((lead_len == 3) & (token_len == 4)) | ((lead_len == 4) & (token_len == 3))
    similarity[short & one_edit] = NEAR_EXACT
    three = np.flatnonzero((lead_len == 3) & (token_len == 3))
    anagrams = [i for i in three if sorted(a[i]) == sorted(b[i])]
    similarity[anagrams] = NEAR_EXACT
    return pl.Series("similarity", similarity, dtype=pl.Float64)


def _split_words(lead_tokens: pl.DataFrame, records: pl.DataFrame, missing: pl.DataFrame,
                 pool_tokens: pl.DataFrame) -> pl.DataFrame:
    """(r, first, second, token): neighbouring lead tokens, both missing from record r, whose
    concatenation is a token of r; a lead token joins at most one neighbour."""
    if not missing.height or not missing.group_by("r").len().filter(pl.col("len") >= 2).height:
        return pl.DataFrame(schema={"r": pl.UInt32, "first": pl.String, "second": pl.String, "token": pl.String})
    neighbours = (lead_tokens.filter(pl.col("lead_n") >= 2)
                  .select("lead_i", pl.col("lead_token").list.head(pl.col("lead_n") - 1).alias("first"),
                          pl.col("lead_token").list.tail(pl.col("lead_n") - 1).alias("second"))
                  .explode("first", "second")
                  .with_columns((pl.col("first") + pl.col("second")).alias("token"),
                                pl.int_range(pl.len()).over("lead_i").alias("at")))
    found = (records.select("r", "lead_i").join(neighbours, on="lead_i")
             .join(pool_tokens, on=["r", "token"], how="semi")
             .join(missing, left_on=["r", "first"], right_on=["r", "lead_token"], how="semi")
             .join(missing, left_on=["r", "second"], right_on=["r", "lead_token"], how="semi")
             .sort("r", "at"))
    # "a b c" where both "ab" and "bc" are the record's: the first pair only.
    return (found.filter(pl.col("first") != pl.col("second").shift(1).over("r").fill_null(""))
            .select("r", "first", "second", "token"))


def _compare_name(f: Field, leads: pl.DataFrame, pairs: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """The lead's words against each record's given names and surnames, token by token.

    A lead token hits a record token when equal, or else the most similar record token at
    Jaro-Winkler >= FUZZY_TOKEN_MIN (a typo). The level says which sides agree; u is the chance
    that a random person carries all the hit tokens (typo'd ones count FUZZY_TOKEN_WEIGHT).
    A person's name evidence is its best record's.
    """
    # Which parts each side gives: a lead's given names are its tokens outside the surname box.
    lead_tokens = (leads.select("lead_i", pl.col(f.lead_column).list.unique(maintain_order=True).alias("lead_token"),
                                pl.col(f.lead_column).list.set_difference("surname_tokens").list.len().gt(0)
                                .alias("lead_has_given"),
                                pl.col("surname_tokens").list.len().gt(0).alias("lead_has_surname"))
                   .filter(pl.col("lead_token").list.len() > 0)
                   .with_columns(pl.col("lead_token").list.len().alias("lead_n")))
    records = (pairs.select("lead_i", "person_key", "driver_id", "given_tokens", "surname_tokens")
               .filter((pl.col("given_tokens").list.len() + pl.col("surname_tokens").list.len()) > 0)
               .join(lead_tokens.select("lead_i", "lead_n", "lead_has_given", "lead_has_surname"), on="lead_i")
               .with_columns(
                   (~pl.col("lead_has_given").fill_null(False) | pl.col("given_tokens").list.len().eq(0)).alias("no_given"),
                   (~pl.col("lead_has_surname").fill_null(False) | pl.col("surname_tokens").list.len().eq(0))
                   .alias("no_surname"))
               .with_row_index("r"))
    if not records.height:
        return pl.DataFrame(schema={c: t for c, t in _EVIDENCE_SCHEMA.items()})
    given, surnames = f.index_columns
    pool = pl.concat([
        records.select("r", pl.col(column).alias("token"), pl.lit(column == given).alias("is_given")).explode("token")
        for column in (given, surnames)
    ]).drop_nulls("token")
    pool = pool.with_columns(pl.int_range(pl.len()).over("r").alias("position"))  # given names first
    pool_n = pool.group_by("r").agg(pl.len().alias("pool_n"))
    wanted = records.select("r", "lead_i").join(lead_tokens.select("lead_i", "lead_token").explode("lead_token"),
                                                on="lead_i").drop("lead_i")
    pool_tokens = pool.select("r", "token").unique()
    exact = wanted.join(pool_tokens, left_on=["r", "lead_token"], right_on=["r", "token"], how="semi")
    missing = wanted.join(pool_tokens, left_on=["r", "lead_token"], right_on=["r", "token"], how="anti")
    # A word the lead typed in two pieces ("cla rke", "soph ie"): two neighbouring lead tokens that are
    # not the record's but whose concatenation is one of its tokens are that one token, hit exactly.
    joined = _split_words(lead_tokens, records, missing, pool_tokens)
    if joined.height:
        exact = pl.concat([exact, joined.select("r", pl.col("token").alias("lead_token"))])
        parts = pl.concat([joined.select("r", pl.col(side).alias("lead_token")) for side in ("first", "second")])
        missing = missing.join(parts, on=["r", "lead_token"], how="anti")
        records = records.join(joined.group_by("r").agg(pl.len().alias("joins")), on="r", how="left").with_columns(
            (pl.col("lead_n") - pl.col("joins").fill_null(0)).alias("lead_n")).drop("joins")
    fuzzy = missing.join(pool.select("r", "token", "position"), on="r")
    lead_len, token_len = pl.col("lead_token").str.len_chars(), pl.col("token").str.len_chars()
    fuzzy = fuzzy.filter(((lead_len >= 4) & (token_len >= 4))
                         | (pl.min_horizontal(lead_len, token_len) == 3) & (pl.max_horizontal(lead_len, token_len) <= 4))
    distinct = fuzzy.select("lead_token", "token").unique()
    distinct = distinct.with_columns(_token_similarity(distinct))
    fuzzy = (fuzzy.join(distinct, on=["lead_token", "token"]).filter(pl.col("similarity") >= FUZZY_TOKEN_MIN)
             .sort(["r", "lead_token", "similarity", "position"], descending=[False, False, True, True])
             .unique(subset=["r", "lead_token"], keep="first", maintain_order=True))
    hits = pl.concat([
        exact.select("r", pl.col("lead_token").alias("token"), pl.lit(True).alias("exact")),
        fuzzy.select("r", "token", pl.lit(False).alias("exact")),
    ]).group_by("r", "token").agg(pl.col("exact").any())
    token_f = _token_frequency(freq)
    hits = hits.join(freq.tokens_frame(), on="token", how="left").with_columns(
        (token_f.log(2) * pl.when(pl.col("exact")).then(1.0).otherwise(FUZZY_TOKEN_WEIGHT)).alias("log_u"))
    per_record = hits.group_by("r").agg(pl.len().alias("hits"), pl.col("exact").all().alias("all_exact"),
                                        pl.col("log_u").sum())
    sides = (pool.join(hits.select("r", "token"), on=["r", "token"], how="semi")
             .group_by("r").agg(pl.col("is_given").any().alias("given_hit"), (~pl.col("is_given")).any().alias("surname_hit"),
                                pl.len().alias("pool_hit")))
    scored = (records.select("r", "lead_i", "person_key", "driver_id", "lead_n", "no_given", "no_surname")
              .join(pool_n, on="r")
              .join(per_record, on="r", how="left").join(sides, on="r", how="left")
              .with_columns(pl.col("hits").fill_null(0), pl.col("given_hit").fill_null(False),
                            pl.col("surname_hit").fill_null(False), pl.col("pool_hit").fill_null(0)))
    # The lead's two surnames are the record's in the other order: another family, usually.
    order = (records.select("r", "lead_i", pl.col(surnames).alias("record_surnames"))
             .join(leads.select("lead_i", pl.col("surname_tokens").alias("lead_surnames")), on="lead_i")
             .filter((pl.col("lead_surnames").list.len() == 2) & (pl.col("record_surnames").list.len() == 2))
             .filter((pl.col("lead_surnames").list.get(0) != pl.col("lead_surnames").list.get(1))
                     & (pl.col("lead_surnames").list.get(0) == pl.col("record_surnames").list.get(1))
                     & (pl.col("lead_surnames").list.get(1) == pl.col("record_surnames").list.get(0)))
             .select("r", pl.lit(True).alias("swapped")))
    scored = scored.join(order, on="r", how="left")
    scored = scored.with_columns(_name_level()).with_columns(_name_bits(f, freq.drivers))
    return scored.select("lead_i", "person_key", "level", "bits", "driver_id", pl.lit(None, pl.Int64).alias("shared_by"),
                         (-pl.col("bits")).alias("order"))


@cache  # constant, as _level_m (building it cost a one-lead batch ~50 expression calls)
def _name_level() -> pl.Expr:
    """A record's name level from its hits (_compare_name's columns)."""
    both = pl.col("given_hit") & pl.col("surname_hit")
    lead_all = pl.col("hits") >= pl.col("lead_n")
    pool_all = pl.col("pool_hit") == pl.col("pool_n")
    level = (pl.when(pl.col("hits") == 0).then(pl.lit("different"))
             .when(both & lead_all & pool_all & pl.col("all_exact")).then(pl.lit("exact"))
             .when(both & lead_all & pool_all).then(pl.lit("typo"))
             .when(both & (lead_all | pool_all)).then(pl.lit("subset"))
             .when(both).then(pl.lit("partial"))
             # One part is missing on a side, and every token of a side agrees: nothing disagrees.
             .when((lead_all | pool_all) & ((pl.col("surname_hit") & pl.col("no_given"))
                                            | (pl.col("given_hit") & pl.col("no_surname")))).then(pl.lit("part_missing"))
             .when(pl.col("surname_hit")).then(pl.lit("surnames_only"))
             .otherwise(pl.lit("given_only")))
    # The lead's two surnames are the record's in the other order ("swapped"): another family, usually.
    return (pl.when(pl.col("swapped").fill_null(False) & level.is_in(["exact", "typo", "subset", "partial"]))
            .then(pl.lit("surnames_swapped")).otherwise(level).alias("level"))


@cache  # constant per field and index size, as _level_m
def _name_bits(f: Field, drivers: int) -> pl.Expr:
    """A record's name bits from its level and the u of its hit tokens (column log_u)."""
    floor = 1 / (drivers + PSEUDO_DRIVERS)
    u = pl.when(pl.col("level") == "different").then(f.level("different").u).otherwise(
        pl.max_horizontal(pl.lit(2.0).pow(pl.col("log_u")), pl.lit(floor)))
    return (_level_m(f) / u).log(2).alias("bits")


def _compare_recruitment(f: Field, leads: pl.DataFrame, pairs: pl.DataFrame, freq: Frequencies,
                         window_days: int) -> pl.DataFrame:
    """A record hired in the lead's park 0..window days after the lead; u = that park's hires in
    that window over all drivers (from the data)."""
    if not window_days:
        return pl.DataFrame(schema=_EVIDENCE_SCHEMA)
    lead_values = leads.select("lead_i", pl.col("park_id").alias("lead_park"), "lead_date").drop_nulls()
    rows = (pairs.select("lead_i", "person_key", "driver_id", "park_id", "hire_date")
            .join(lead_values, on="lead_i")
            .filter((pl.col("park_id") == pl.col("lead_park"))
                    & ((pl.col("hire_date") - pl.col("lead_date")).dt.total_days().is_between(0, window_days))))
    if not rows.height:
        return pl.DataFrame(schema=_EVIDENCE_SCHEMA)
    windows = (rows.select("lead_park", "lead_date").unique()
               .with_columns(pl.int_ranges(0, window_days + 1).alias("offset")).explode("offset")
               .with_columns((pl.col("lead_date") + pl.duration(days=pl.col("offset"))).alias("hire_date")))
    hired = (windows.join(freq.hires_frame(), left_on=["lead_park", "hire_date"], right_on=["park_id", "hire_date"],
                          how="left")
             .group_by("lead_park", "lead_date").agg(pl.col("hired").fill_null(0).sum()))
    level = f.levels[0]
    return rows.join(hired, on=["lead_park", "lead_date"], how="left").select(
        "lead_i", "person_key", pl.lit(level.name).alias("level"),
        (level.m / ((pl.col("hired").fill_null(0) + 1) / (freq.drivers + PSEUDO_DRIVERS))).log(2).alias("bits"),
        "driver_id", pl.lit(None, pl.Int64).alias("shared_by"), pl.lit(0.0).alias("order"),
    )


# One row per (lead, driver record); "order" ranks a person's records for this field (lowest first).
_EVIDENCE_SCHEMA = {"lead_i": pl.UInt32, "person_key": pl.String, "level": pl.String, "bits": pl.Float64,
                    "driver_id": pl.String, "shared_by": pl.Int64, "order": pl.Float64}


# --- Scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """Every candidate person of every lead, scored.

    candidates: lead_i, person_key, excluded, bits (prior included), corroborated, key_agrees and
    one level column per field (null where either side has no value).
    fields: the per-field evidence in long form (lead_i, person_key, field, level, bits, driver_id,
    shared_by), in registry order.
    """

    candidates: pl.DataFrame
    fields: pl.DataFrame
    # With per_record=True: the same evidence for every driver record of every candidate
    # (lead_i, person_key, driver_id, field, level, bits), for the review screen.
    records: pl.DataFrame | None = None


def _weighed(compared: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """bits = log2(m / u): an estimated m moves each level's bits by log2(m_estimated / m_declared),
    whatever u (term frequency included) the pair's value has. A field not weighed adds no bits."""
    shift = {key: bits for key, bits in m_shift_bits({}, freq.m).items() if bits}
    unweighed = [f.name for f in FIELDS.values() if not f.weighed]
    if shift:
        key = pl.concat_str("field", "level", separator="\x00")
        compared = compared.with_columns(pl.col("bits") + key.replace_strict(
            {f"{field}\x00{level}": bits for (field, level), bits in shift.items()}, default=0.0,
            return_dtype=pl.Float64))
    if unweighed:
        compared = compared.with_columns(pl.when(pl.col("field").is_in(unweighed)).then(0.0).otherwise("bits")
                                         .alias("bits"))
    return compared


def _token_frequency(freq: Frequencies) -> pl.Expr:
    """A name token's frequency among driver records, from its count in column "drivers" (null: never
    seen), smoothed by PSEUDO_DRIVERS records at BASE_TOKEN_F: the u behind name weights."""
    return (pl.col("drivers").fill_null(0) + PSEUDO_DRIVERS * BASE_TOKEN_F) / (freq.drivers + PSEUDO_DRIVERS)


def _name_bits_bound(f: Field, leads: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """(lead_i, name_bound): the most name bits any record can give the lead (at least 0, what a record
    without a name gives). u is at least the frequency of every lead token hit (a typo hit counts
    FUZZY_TOKEN_WEIGHT of the rarest token possible; a word joined from two pieces is one token), and
    at least the floor; m at most the largest of the name levels' (estimated where estimated)."""
    denominator = freq.drivers + PSEUDO_DRIVERS
    rarest = -math.log2(PSEUDO_DRIVERS * BASE_TOKEN_F / denominator) * FUZZY_TOKEN_WEIGHT
    m_most = max(freq.m.get(f.name, {}).get(level.name, level.m) for level in f.levels)
    tokens = (leads.select("lead_i", pl.col(f.lead_column).list.unique().alias("token")).explode("token")
              .drop_nulls("token").join(freq.tokens_frame(), on="token", how="left"))
    information = pl.max_horizontal(-_token_frequency(freq).log(2), pl.lit(rarest))
    return (tokens.group_by("lead_i").agg(information.sum().alias("information"))
            .select(pl.col("lead_i").cast(pl.UInt32),
                    pl.max_horizontal(pl.lit(0.0), math.log2(m_most)
                                      + pl.min_horizontal(pl.col("information"), pl.lit(math.log2(denominator))))
                    .alias("name_bound")))


def _hopeless_dropped(leads: pl.DataFrame, pairs: pl.DataFrame, compared: pl.DataFrame, names: list[Field],
                      freq: Frequencies, thresholds: Thresholds) -> pl.DataFrame:
    """`pairs` without the persons no name could make plausible: not excluded, no key or birth date
    agreeing (AGREEING_LEVELS), and a score below weak_bits even with the bounds of the name fields
    (`names`, not yet compared: `compared` holds every other field). Such a person
    is never a lead's best plausible candidate nor a rival, so no decision changes; it is spared the
    name comparison, the costliest (stage 2's name blocks bring namesakes by the hundred)."""
    if not compared.height:
        return pairs
    per_field = compared.group_by(*PERSON, "field").agg(
        pl.col("bits").max(), pl.col("level").is_in(list(AGREEING_LEVELS)).any().alias("agrees"))
    per_person = per_field.group_by(PERSON).agg(
        pl.col("bits").sum(), (pl.col("agrees") & pl.col("field").is_in(list(AGREEING_FIELDS))).any().alias("agrees"))
    bound = (pl.concat([_name_bits_bound(f, leads, freq) for f in names]).group_by("lead_i").agg(pl.col("name_bound").sum())
             if names else pl.DataFrame(schema={"lead_i": pl.UInt32, "name_bound": pl.Float64}))
    hopeless = (per_person.join(bound, on="lead_i", how="left")
                .filter(~pl.col("agrees") & ((freq.prior_bits + pl.col("bits") + pl.col("name_bound").fill_null(0.0))
                                            < thresholds.weak_bits))
                .select(PERSON))
    excluded = pairs.filter(pl.col("excluded")).select(PERSON)
    return pairs.join(hopeless.join(excluded, on=PERSON, how="anti"), on=PERSON, how="anti")


def pairs_score(leads: pl.DataFrame, pairs: pl.DataFrame, freq: Frequencies, thresholds: Thresholds, *,
                per_record: bool = False, prune: bool = False) -> Scores:
    """Score every pair of a batch, column-wise, one expression per level of each declared field.
    A person's evidence for a field is its best record's. `prune`: persons no name could make
    plausible are dropped before the names are compared (_hopeless_dropped): the same decisions,
    fewer candidates in the scores and the evidence."""
    pairs = pairs.with_columns(pl.col("lead_i").cast(pl.UInt32))
    keys = [f for f in FIELDS.values() if f.kind == Kind.KEY]
    frames = [_compare_keys(keys, leads, pairs, freq).with_columns(pl.col("lead_i").cast(pl.UInt32))] if keys else []
    names = [f for f in FIELDS.values() if f.kind == Kind.NAME]
    for f in FIELDS.values():
        if f.kind in (Kind.KEY, Kind.NAME):
            continue
        if f.kind == Kind.DATE:
            frame = _compare_date(f, leads, pairs, freq)
        else:
            frame = _compare_recruitment(f, leads, pairs, freq, thresholds.recruit_window_days)
        frames.append(frame.with_columns(pl.col("lead_i").cast(pl.UInt32), pl.lit(f.name).alias("field")))
    # Every field's pairs in one frame: the per-field steps below are one expression each, not one frame
    # operation per field (a one-lead frame paid ~0.1 ms for each of ~50 of them). The fields other
    # than names are weighed first: pruning reads them before the names are compared.
    weighed = [_weighed(pl.concat(frames, how="vertical_relaxed"), freq)] if frames else []
    if prune and weighed:
        before = pairs.height
        pairs = _hopeless_dropped(leads, pairs, weighed[0], names, freq, thresholds)
        if pairs.height < before:
            weighed = [weighed[0].join(pairs.select(PERSON).unique(), on=PERSON, how="semi")]
    named = [_compare_name(f, leads, pairs, freq).with_columns(pl.col("lead_i").cast(pl.UInt32),
                                                               pl.lit(f.name).alias("field")) for f in names]
    if named:
        weighed.append(_weighed(pl.concat(named, how="vertical_relaxed"), freq))
    candidates = (pairs.group_by(PERSON, maintain_order=True).agg(pl.col("excluded").any())
                  .with_columns(pl.col("lead_i").cast(pl.UInt32)))
    compared = pl.concat(weighed, how="vertical_relaxed")
    by_record = compared.select("lead_i", "person_key", "driver_id", "field", "level", "bits") if per_record else None
    # A person's evidence for a field is its best record's (ties: lowest driver_id).
    best = (compared.sort([*PERSON, "field", "order", "driver_id"])
            .unique(subset=[*PERSON, "field"], keep="first", maintain_order=True))
    evidence = best.select("lead_i", "person_key", "field", "level", "bits", "driver_id", "shared_by")
    wide = best.pivot("field", index=PERSON, values=["level", "bits"], aggregate_function=None)
    renamed = {}
    for name in FIELDS:
        renamed[f"level_{name}"], renamed[f"bits_{name}"] = name, f"{name}__bits"
    wide = wide.rename({k: v for k, v in renamed.items() if k in wide.columns})
    missing = [pl.lit(None, pl.String).alias(name) for name in FIELDS if name not in wide.columns]
    missing += [pl.lit(None, pl.Float64).alias(f"{name}__bits") for name in FIELDS if f"{name}__bits" not in wide.columns]
    wide = wide.with_columns(missing) if missing else wide
    candidates = candidates.join(wide.select(*PERSON, *(c for name in FIELDS for c in (name, f"{name}__bits"))),
                                 on=PERSON, how="left")
    prior = freq.prior_bits
    bit_columns = [f"{name}__bits" for name in FIELDS]
    has_name = leads.select("lead_i", (pl.col("name_tokens").list.len() > 0).alias("lead_has_name"))
    candidates = (candidates.with_columns((prior + _bits_sum(tuple(bit_columns))).alias("bits"))
                  .drop(bit_columns).join(has_name, on="lead_i", how="left")
                  .join(_documents_in_sequence(leads, pairs), on=PERSON, how="left"))
    # Corroborated: some path holds, read off the paths found (evaluating every path twice cost a one-lead
    # batch ~0.6 ms of its ~2.3 ms here).
    candidates = (candidates.with_columns(_link_paths().alias("link_paths"), _key_agrees().alias("key_agrees"))
                  .with_columns((pl.col("link_paths").list.len() > 0).alias("corroborated")))
    fields = evidence.with_columns(
        _field_order(tuple(FIELDS)).alias("field_order"))
    return Scores(candidates.drop("lead_has_name", "document_in_sequence"), fields, by_record)


@cache  # constant per registry, as _level_m
def _bits_sum(columns: tuple[str, ...]) -> pl.Expr:
    return pl.sum_horizontal([pl.col(c).fill_null(0) for c in columns])


@cache  # constant per registry, as _level_m
def _field_order(names: tuple[str, ...]) -> pl.Expr:
    return pl.col("field").replace_strict({name: i for i, name in enumerate(names)}, return_dtype=pl.Int32)


# Documents issued one after the other differ by less than this (twins registered together, DNIs in sequence).
IN_SEQUENCE_BELOW = 10


def _documents_in_sequence(leads: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """(lead_i, person_key, document_in_sequence) of the candidates one of whose records holds a document
    numbered next to the lead's: both all digits, the same length, 1 to IN_SEQUENCE_BELOW - 1 apart. That
    is the shape of twins' DNIs, issued when they were registered together, and it is also one typo
    off (a last digit changed): such a typo says nothing against twins (fs_document_typo_birth_date)."""
    document = FIELDS["document"]
    lead = leads.select("lead_i", pl.col(document.lead_column).alias("lead_document")).drop_nulls()
    records = pl.concat([pairs.select(*PERSON, pl.col(column).alias("document")) for column in document.index_columns])
    digits = r"^[0-9]{1,18}$"
    apart = (pl.col("document").cast(pl.Int64, strict=False) - pl.col("lead_document").cast(pl.Int64, strict=False)).abs()
    return (records.drop_nulls().join(lead, on="lead_i")
            .filter(pl.col("document").str.contains(digits) & pl.col("lead_document").str.contains(digits)
                    & (pl.col("document").str.len_chars() == pl.col("lead_document").str.len_chars())
                    & apart.is_between(1, IN_SEQUENCE_BELOW - 1))
            .select(*PERSON, pl.lit(True).alias("document_in_sequence")).unique())


def m_shift_bits(m_from: dict, m_to: dict) -> dict[tuple[str, str], float]:
    """How many bits each level's weight moves when its m goes from `m_from` to `m_to` ({field: {level: m}},
    a level not in one keeps its declared m): log2(m to / m from), whatever u the pair's value has."""
    def level_m(source: dict, f: Field, level) -> float:
        return source.get(f.name, {}).get(level.name, level.m)

    return {(f.name, lv.name): math.log2(level_m(m_to, f, lv) / level_m(m_from, f, lv))
            for f in FIELDS.values() for lv in f.levels}


def candidate_weights(candidates: pl.DataFrame, freq: Frequencies, m: dict | None = None) -> pl.Series:
    """Each scored candidate's weight in bits, its score without the prior (log2 of the likelihood
    ratio), re-weighed from the m it was scored with (freq.m) to `m` ({field: {level: m}}, a level not
    in it keeps its declared m; None: freq.m), as pairs_score would have weighed it (m_shift_bits), so a
    run's candidates need not be scored again after an estimate."""
    moved = m_shift_bits(freq.m, freq.m if m is None else m)
    shifts = []
    for f in FIELDS.values():
        levels = {lv.name: moved[f.name, lv.name] for lv in f.levels}
        if f.weighed and f.name in candidates.columns and any(levels.values()):
            shifts.append(pl.col(f.name).replace_strict(levels, default=0.0, return_dtype=pl.Float64).fill_null(0.0))
    weight = pl.col("bits") - freq.prior_bits + (pl.sum_horizontal(shifts) if shifts else 0.0)
    return candidates.select(weight.alias("weight")).to_series()


def _is(field_name: str, *levels: str) -> pl.Expr:
    return pl.col(field_name).is_in(list(levels)).fill_null(False)


@cache  # a constant expression: built once (a one-lead batch paid ~1 ms to build these each time)
def _corroboration_paths() -> dict[str, pl.Expr]:
    """The canonical guard against what independence gets wrong (families, recycled numbers, cars),
    one expression per path of LINK_RULES, in its order. A candidate is corroborated when any holds.

    - fs_document_plus_key: a document plus another exact key (phone, e-mail, birth date) needs
      some name overlap only; without a name on the lead, it is the only path.
    - fs_personal_key: a personal key (document exact or one typo, e-mail exact, birth date exact)
      needs a given name and a surname to agree (name level exact, typo, subset or partial).
    - fs_shared_key: a shareable key (phone, plate, or an e-mail one typo away, e-mails being built
      from names) needs the names to agree without a conflict: exact, typo or subset. Siblings share a
      phone, the surnames and often a second given name ("Jorge Luis" / "Luis Enrique"): that is
      "partial", and not enough. Guard (relatives sharing a phone or a car): when the names agree as
      a subset only (the same surnames, one side with a given name the other lacks: a father and a
      son "Juan Quispe" / "Juan Carlos Quispe"), a personal key that *differs* (document, e-mail,
      birth date) says another member of the family: review, never a link. A document two typos off
      does not differ here: its weight is for the same person (about 2^9 more likely among matches
      than among others, estimated), as one typo's is; a relative's DNI is that close by chance only.
    - fs_document_birth_date: the document and the birth date both exact, whatever the names say. Two
      keys one human owns, neither shared in a family (a DNI typed onto a relative's record brings
      the relative's DNI, not also his birth date; twins share the birth date, never the DNI). Last,
      so it names only the links no other path makes (a name box holding someone else's name, FEBRL's
      replaced names), and an audit can demote it alone. The score decides as on every path: the
      name's `different` level weighs against it.
    - fs_document_typo_birth_date: the document one typo off and the birth date exact, with the given
      name agreeing and the surnames not (a surname replaced or mistyped past a typo), or the surnames
      agreeing and the given name not (or missing on a side), unless the two documents are numbered in
      sequence. Twins are the trap: the birth date and the surnames agree, their given names differ, and
      twins registered together hold DNIs issued one after the other (1 to 9 apart: a last digit changed,
      one typo); a typo elsewhere in the number (another digit, two swapped) is not their shape. Twins
      registered apart hold numbers far apart, which is no one-typo level. By chance, a million drivers
      put about one record on a DNI's 79 one-typo neighbours, and one in ~20,000 of those has the lead's
      birth date, fewer still its surnames or given name.
    - fs_personal_key_name_part: the document or the e-mail exact, with the name agreeing on every part
      one side gives, the other side lacking a given name or a surname (name level `part_missing`), and
      no document, e-mail or birth date differing. A blank box says nothing against the person, as a
      different given name does (a relative's DNI on the lead). Not a document one typo off (twins
      registered together), not the birth date alone (namesakes born the same day, in a big park).
    """
    document_plus_exact = _is("document", "exact") & (
        _is("phone", "exact") | _is("email", "exact") | _is("birth_date", "exact"))
    personal = _is("document", "exact", "one_typo") | _is("email", "exact") | _is("birth_date", "exact")
    shareable = _is("phone", "exact", "one_typo") | _is("plate", "exact", "one_typo") | _is("email", "one_typo")
    some_name = (pl.col("name").is_not_null() & (pl.col("name") != "different")).fill_null(False)
    contradicted = _is("document", "different") | _is("email", "different") | _is("birth_date", "different")
    relatives = _is("name", "subset") & contradicted
    has_name = pl.col("lead_has_name").fill_null(False)
    return {
        "fs_document_plus_key": document_plus_exact & (some_name | ~has_name),
        "fs_personal_key": has_name & personal & _is("name", *NAME_CORROBORATES),
        "fs_shared_key": has_name & shareable & _is("name", *NAME_AGREES_WITHOUT_CONFLICT) & ~relatives,
        "fs_document_birth_date": _is("document", "exact") & _is("birth_date", "exact"),
        "fs_document_typo_birth_date": _is("document", "one_typo") & _is("birth_date", "exact") & (
            _is("name", "given_only")
            | (_is("name", "surnames_only", "part_missing") & ~pl.col("document_in_sequence").fill_null(False))),
        "fs_personal_key_name_part": (has_name & (_is("document", "exact") | _is("email", "exact"))
                                      & _is("name", "part_missing") & ~contradicted),
    }


@cache  # constant, as _corroboration_paths
def _link_paths() -> pl.Expr:
    """The paths (LINK_RULES) that corroborate a candidate, in LINK_RULES order."""
    return pl.concat_list([pl.when(path).then(pl.lit(name)) for name, path in _corroboration_paths().items()]
                          ).list.drop_nulls()


@cache  # constant, as _corroboration_paths
def _key_agrees() -> pl.Expr:
    return pl.any_horizontal([_is(name, *AGREEING_LEVELS) for name in AGREEING_FIELDS])


# --- Deciding -----------------------------------------------------------------------------------


def decisions_make(leads: pl.DataFrame, scores: Scores, thresholds: Thresholds) -> pl.DataFrame:
    """One decision per lead, by group: the best plausible candidate, its strongest corroborated
    rival, the margin, then link / conflict / weak (see docs/matching.md §5). A link is named by the
    first of its corroboration paths (LINK_RULES) that is not demoted; a lead whose every path is
    demoted goes to review (WEAK_MATCH_ONLY) with `demoted_rule`, the path it would have linked by.

    Columns: lead_i, source_pk, outcome, person_key, score, margin, rule, confidence, demoted_rule.
    """
    e = _decision_exprs(thresholds)
    c = scores.candidates.sort(CANDIDATE_ORDER, descending=[False, True, False]).with_columns(e.plausible)
    c = c.with_columns(e.plausible_rank)
    best = c.filter(e.is_best).select(*e.best)
    # Only candidates that could themselves be linked compete: a sibling who shares the family
    # phone but not the given name is evidence of a family, not a rival.
    rival = c.filter(e.is_rival).group_by("lead_i").agg(e.rival_bits)
    d = (leads.select("lead_i", "source_pk", _has_identifier().alias("has_identifier"))
         .join(best, on="lead_i", how="left").join(rival, on="lead_i", how="left"))
    d = d.with_columns(*e.outcome).with_columns(*e.named)
    return d.with_columns(e.confidence).select(
        "lead_i", "source_pk", "outcome", "person_key", "score", "margin", "rule", "confidence",
        pl.col("demoted_rule").cast(pl.String)).sort("lead_i")


@dataclass(frozen=True)
class _DecisionExprs:
    """decisions_make's expressions, which depend on the thresholds alone (_decision_exprs)."""

    plausible: pl.Expr
    plausible_rank: pl.Expr
    is_best: pl.Expr
    best: list[pl.Expr]
    is_rival: pl.Expr
    rival_bits: pl.Expr
    outcome: list[pl.Expr]  # outcome, margin, demoted_rule
    named: list[pl.Expr]  # person_key, score, margin, rule
    confidence: pl.Expr


@cache  # constant per thresholds: building these cost a one-lead batch ~1 ms a call
def _decision_exprs(thresholds: Thresholds) -> _DecisionExprs:
    demoted = sorted(thresholds.demoted_rules)
    margin = pl.col("best_bits") - pl.col("rival_bits").fill_null(float("-inf"))
    strong = (pl.col("best_bits") >= thresholds.link_bits) & pl.col("best_corroborated")
    # Would link, but only through demoted paths: a person looks at it instead.
    demoted_link = strong & (margin >= thresholds.margin_bits) & pl.col("best_rule").is_null()
    outcome = (pl.when(~pl.col("has_identifier")).then(pl.lit(ReasonCode.MISSING_IDENTIFIERS.value))
               .when(pl.col("best_person").is_null()).then(pl.lit(ReasonCode.NO_CANDIDATES.value))
               .when(demoted_link).then(pl.lit(ReasonCode.WEAK_MATCH_ONLY.value))
               .when(strong & (margin >= thresholds.margin_bits)).then(pl.lit("link"))
               .when(strong).then(pl.lit(ReasonCode.CONFLICT_MULTIPLE_CANDIDATES.value))
               # The top scorer is not corroborated (or too weak): a person looks at it.
               .otherwise(pl.lit(ReasonCode.WEAK_MATCH_ONLY.value)))
    undecided = pl.col("outcome").is_in([ReasonCode.MISSING_IDENTIFIERS.value, ReasonCode.NO_CANDIDATES.value])
    return _DecisionExprs(
        plausible=(~pl.col("excluded") & (pl.col("key_agrees") | (pl.col("bits") >= thresholds.weak_bits)))
        .alias("plausible"),
        plausible_rank=pl.col("plausible").cast(pl.UInt32).cum_sum().over("lead_i").alias("plausible_rank"),
        is_best=pl.col("plausible") & (pl.col("plausible_rank") == 1),
        best=["lead_i", pl.col("person_key").alias("best_person"), pl.col("bits").alias("best_bits"),
              pl.col("corroborated").alias("best_corroborated"),
              pl.col("link_paths").list.eval(pl.element().filter(~pl.element().is_in(demoted))).list.first()
              .alias("best_rule"),
              pl.col("link_paths").list.first().alias("best_path")],
        is_rival=pl.col("plausible") & (pl.col("plausible_rank") > 1) & pl.col("corroborated"),
        rival_bits=pl.col("bits").max().alias("rival_bits"),
        outcome=[outcome.alias("outcome"), margin.alias("margin"),
                 pl.when(demoted_link.fill_null(False)).then(pl.col("best_path")).alias("demoted_rule")],
        named=[pl.when(pl.col("outcome") == "link").then(pl.col("best_person")).alias("person_key"),
               pl.when(undecided).then(None).otherwise(pl.col("best_bits")).alias("score"),
               pl.when(undecided).then(None).otherwise(pl.col("margin")).alias("margin"),
               pl.when(pl.col("outcome") == "link").then(pl.col("best_rule"))
               .otherwise(pl.col("demoted_rule")).fill_null(NO_LINK_RULE).alias("rule")],
        confidence=(pl.when(pl.col("outcome") != "link").then(pl.lit("low"))
                    .when((pl.col("score") >= 16) & (pl.col("margin") >= 12)).then(pl.lit("high"))
                    .otherwise(pl.lit("medium"))).alias("confidence"),
    )


def leads_with_identifier(leads: pl.DataFrame) -> int:
    """How many leads of a frame show some key or a full name (the others are MISSING_IDENTIFIERS)."""
    return int(leads.select(_has_identifier().sum()).item())


@cache  # constant, as _corroboration_paths
def _has_identifier() -> pl.Expr:
    keys = pl.any_horizontal([pl.col(name).is_not_null() & (pl.col(name) != "") for name in KEY_FIELDS])
    return keys | (pl.col("name_tokens").list.unique().list.len() >= 2)


# --- Evidence -------------------------------------------------------------------------------------


def evidence_json(decisions: pl.DataFrame, scores: Scores, thresholds: Thresholds,
                  top: int = EVIDENCE_TOP) -> pl.DataFrame:
    """Each decision's evidence as JSON text (lead_i, evidence): the rule, outcome, score, margin,
    thresholds and the top candidates with their per-field evidence, in the names of identity.fields."""
    fields = (scores.fields.sort(["lead_i", "person_key", "field_order"])
              .with_columns(pl.col("bits").round(2),
                            pl.when(pl.col("shared_by") > 1).then(pl.col("shared_by")).alias("shared_by"))
              .group_by(PERSON, maintain_order=True)
              .agg(pl.struct("field", "level", "bits", "driver_id", "shared_by").alias("fields")))
    missing = decisions.filter(pl.col("outcome") == ReasonCode.MISSING_IDENTIFIERS.value).select("lead_i")
    candidates = (scores.candidates.join(missing, on="lead_i", how="anti")
                  .sort(CANDIDATE_ORDER, descending=[False, True, False])
                  .with_columns(pl.int_range(pl.len()).over("lead_i").alias("rank"))
                  .filter(pl.col("rank") < top)
                  .join(fields, on=PERSON, how="left")
                  .with_columns(pl.struct(
                      "person_key", pl.col("bits").round(2).alias("score"), "corroborated",
                      pl.col("fields").fill_null(pl.lit([], dtype=fields.schema["fields"])),
                      pl.when(pl.col("excluded")).then(True).alias("excluded_by_judgement"),
                  ).struct.json_encode().alias("json"))
                  .group_by("lead_i", maintain_order=True).agg(pl.col("json").str.join(",").alias("candidates_json")))
    t = thresholds.as_dict()
    head = (f'{{"rule_version":"{RULE_VERSION}","thresholds":{{"link":{t["link"]},"margin":{t["margin"]},'
            f'"weak":{t["weak"]}}}')

    def number(column: str) -> pl.Expr:
        value = pl.col(column)
        return pl.when(value.is_null() | value.is_infinite()).then(pl.lit("null")).otherwise(
            value.round(2).cast(pl.String))

    return decisions.join(candidates, on="lead_i", how="left").select(
        "lead_i",
        pl.concat_str(
            pl.lit(head), pl.lit(',"rule":"'), pl.col("rule"), pl.lit('","outcome":"'), pl.col("outcome"),
            pl.lit('","score":'), number("score"), pl.lit(',"margin":'), number("margin"),
            pl.when(pl.col("demoted_rule").is_not_null())
            .then(pl.concat_str(pl.lit(',"demoted_rule":"'), pl.col("demoted_rule"), pl.lit('"'))).otherwise(pl.lit("")),
            pl.lit(',"candidates":['), pl.col("candidates_json").fill_null(""), pl.lit("]}"),
        ).alias("evidence"),
    )


# --- One lead at a time, as dataclasses ---------------------------------------------------------


@dataclass(frozen=True)
class FieldEvidence:
    field: str
    level: str
    bits: float
    driver_id: str | None = None
    shared_by: int | None = None  # persons carrying the agreeing value (term frequency)

    def as_dict(self) -> dict:
        data = {"field": self.field, "level": self.level, "bits": round(self.bits, 2)}
        if self.driver_id:
            data["driver_id"] = self.driver_id
        if self.shared_by and self.shared_by > 1:
            data["shared_by"] = self.shared_by
        return data


@dataclass(frozen=True)
class Scored:
    person_key: str
    bits: float  # posterior log-odds, prior included
    fields: tuple[FieldEvidence, ...]
    corroborated: bool
    excluded: bool = False  # a reviewer said this lead is not this person
    key_agrees: bool = False

    def level_of(self, field_name: str) -> str | None:
        return next((f.level for f in self.fields if f.field == field_name), None)

    def as_dict(self) -> dict:
        data = {
            "person_key": self.person_key,
            "score": round(self.bits, 2),
            "corroborated": self.corroborated,
            "fields": [f.as_dict() for f in self.fields],
        }
        if self.excluded:
            data["excluded_by_judgement"] = True
        return data


@dataclass(frozen=True)
class Decision:
    source_pk: str
    outcome: str  # "link" or a ReasonCode
    person_key: str | None
    score: float | None
    margin: float | None
    candidates: tuple[Scored, ...]
    rule: str = NO_LINK_RULE
    confidence_level: str = "low"
    # The link rule this lead would have linked by, had an audit not demoted it (identity.rules).
    demoted_rule: str | None = None

    @property
    def is_link(self) -> bool:
        return self.outcome == "link"

    def evidence(self, thresholds: Thresholds, top: int = EVIDENCE_TOP) -> dict:
        return {
            "rule_version": RULE_VERSION,
            "rule": self.rule,
            "outcome": self.outcome,
            "score": None if self.score is None else round(self.score, 2),
            "margin": None if self.margin is None or math.isinf(self.margin) else round(self.margin, 2),
            "thresholds": thresholds.as_dict(),
            **({"demoted_rule": self.demoted_rule} if self.demoted_rule else {}),
            "candidates": [c.as_dict() for c in self.candidates[:top]],
        }


def decisions_materialize(decisions: pl.DataFrame, scores: Scores) -> dict[str, Decision]:
    """Decision objects (with every candidate's evidence) for a small batch: explain, review, tests."""
    fields: dict[tuple[int, str], list[FieldEvidence]] = {}
    for row in scores.fields.sort(["lead_i", "person_key", "field_order"]).iter_rows(named=True):
        fields.setdefault((row["lead_i"], row["person_key"]), []).append(
            FieldEvidence(row["field"], row["level"], row["bits"], row["driver_id"], row["shared_by"]))
    scored: dict[int, list[Scored]] = {}
    ordered = scores.candidates.sort(CANDIDATE_ORDER, descending=[False, True, False])
    for row in ordered.iter_rows(named=True):
        scored.setdefault(row["lead_i"], []).append(Scored(
            row["person_key"], row["bits"], tuple(fields.get((row["lead_i"], row["person_key"]), ())),
            bool(row["corroborated"]), bool(row["excluded"]), bool(row["key_agrees"])))
    result = {}
    for row in decisions.iter_rows(named=True):
        candidates = () if row["outcome"] == ReasonCode.MISSING_IDENTIFIERS else tuple(scored.get(row["lead_i"], ()))
        result[row["source_pk"]] = Decision(
            row["source_pk"], row["outcome"], row["person_key"], row["score"], row["margin"], candidates,
            row["rule"], row["confidence"], row.get("demoted_rule"))
    return result


def lead_decide(lead: LeadKeys, candidates: list[Candidate], freq: Frequencies, thresholds: Thresholds,
                rejected: set[str] | frozenset[str] = frozenset()) -> Decision:
    """The decision for one lead: the batch scorer on a one-lead frame."""
    pairs = pairs_frame([(0, c.person_key, r, c.person_key in rejected) for c in candidates for r in c.records])
    leads = leads_frame([lead])
    scores = pairs_score(leads, pairs, freq, thresholds)
    return decisions_materialize(decisions_make(leads, scores, thresholds), scores)[lead.source_pk]


def candidate_score(lead: LeadKeys, candidate: Candidate, freq: Frequencies, *, excluded: bool = False,
                    recruit_window_days: int = 0) -> Scored:
    """Every comparison of a lead against one candidate person, with the evidence for each."""
    thresholds = Thresholds(recruit_window_days=recruit_window_days)
    decision = lead_decide(lead, [candidate], freq, thresholds, {candidate.person_key} if excluded else frozenset())
    return next(s for s in decision.candidates if s.person_key == candidate.person_key)
