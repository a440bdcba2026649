"""Candidate pairs for a batch of leads, by the blocking rules of identity.fields.

Two sources give the same pairs for the same data:
- `IndexFrame`: the whole drivers index read once into memory (one COPY), joined with a batch's
  keys column-wise. For runs over thousands of leads (match_leads, recovery workers).
- `SqlIndex`: index lookups in PostgreSQL, one statement per rule kind. For a lead arriving now
  and small batches, where reading a million records first would cost more than it saves.

Rules: a stage-1 rule (equal keys) applies to every lead; stage-2 rules (name blocks; the birth date,
or a key one typo off, with the name's initials) to the leads stage 1 did not settle. A key value
carried by more persons than its rule's cap, or a name block holding more drivers than its cap,
blocks nothing (it identifies no one).
"""

from __future__ import annotations

import dataclasses
import string
import threading
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import polars as pl
from django.conf import settings
from django.db import connection

from identity import index_image, normalize
from identity.bulk import array_param, frame_fetch, frame_read
from identity.fields import (
    BLOCKING_RULES,
    FIELDS,
    KEY_FIELDS,
    NAME_BLOCK_MAX_EXPECTED,
    NAME_BLOCK_MIN_TOKEN,
    BlockingRule,
    BlockKind,
)
from identity.index_image import IndexParts
from identity.matching import KEYS_SCHEMA, RECORD_SCHEMA, TOKENS_SCHEMA, Frequencies

# person_i: the person's position in IndexFrame.records (null from SqlIndex), so its records are a slice.
HITS_SCHEMA = {"lead_i": pl.UInt32, "person_key": pl.String, "person_i": pl.UInt32, "rule": pl.String}
PERSON_HITS_SCHEMA = {"lead_i": pl.UInt32, "person_key": pl.String, "person_i": pl.UInt32}
# Each as RECORD_SCHEMA types it, read by COPY or fetched (frame_read, frame_fetch): a uuid as text.
_RECORD_COLUMNS = ", ".join(f"{c}::text" if c == "person_key" else c for c in RECORD_SCHEMA)
# The record columns IndexFrame looks values up in (its point lookups): every key field's columns and every
# key-based blocking rule's; an index image carries their lookups.
LOOKUP_COLUMNS = tuple(dict.fromkeys(
    [column for name in KEY_FIELDS for column in FIELDS[name].index_columns]
    + [rule.index_column for rule in BLOCKING_RULES if rule.kind != BlockKind.NAME_TOKENS]))


def _pair(low: str, high: str) -> pl.Expr:
    return (pl.col(low).cast(pl.UInt64) * (1 << 32)) + pl.col(high).cast(pl.UInt64)


def rules(stage: int) -> tuple[BlockingRule, ...]:
    return tuple(r for r in BLOCKING_RULES if r.stage == stage)


def _lead_values(leads: pl.DataFrame, column: str) -> pl.DataFrame:
    # A filter, then a selection: a lead arriving now makes this frame for each key field. Pinned to one core
    # (identity.cores), the two eager operations cost ~0.15 ms together, a lazy query ~0.24 ms.
    return leads.filter(pl.col(column).is_not_null()).select("lead_i", pl.col(column).alias("value"))


# The blocks of a lead's rarest known tokens, by rank: a pair, a triple, the (second, third) pair, the four.
NAME_BLOCK_PICKS = ((0, 1), (0, 1, 2), (1, 2), (0, 1, 2, 3))


def name_blocks(leads: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """Each lead's name blocks (lead_i, block): its rarest known tokens in a pair, and when it has
    three, the triple and the (second, third) pair too, and when it has four, the four together; a
    block expected (were tokens independent) to hold more than NAME_BLOCK_MAX_EXPECTED drivers is left
    out, and the four tokens are kept where their triple is.

    The four-token block is for names whose tokens go together: a compound given name ("César
    Augusto", "Jesús Alberto") and a surname put far more drivers in a triple than independence
    expects, over the rule's cap, and a block over its cap finds nobody; the lead's other surname
    narrows it to the few who carry the whole name. Where the triple fits within the cap, the four
    tokens find a part of what it found.

    Unknown tokens (typos, usually) are skipped: they would block on nothing.
    """
    drivers = max(freq.drivers, 1)
    known = (leads.select("lead_i", pl.col("name_tokens").alias("token")).explode("token").drop_nulls("token")
             .filter(pl.col("token").str.len_chars() >= NAME_BLOCK_MIN_TOKEN).unique()
             .join(freq.tokens_frame(), on="token")
             .sort(["lead_i", "drivers", "token"])
             .with_columns(pl.int_range(pl.len()).over("lead_i").alias("rank"))
             .filter(pl.col("rank") <= max(max(picks) for picks in NAME_BLOCK_PICKS)))
    wide = known.group_by("lead_i").agg(pl.col("token"), pl.col("drivers")).filter(pl.col("token").list.len() >= 2)
    blocks = [wide.filter(enough).select("lead_i", *block) for enough, block in _name_block_picks(drivers)]
    found = pl.concat(blocks).filter(pl.col("expected") <= NAME_BLOCK_MAX_EXPECTED).select("lead_i", "block")
    return found.with_columns(pl.col("lead_i").cast(pl.UInt32))


@cache  # constant per index size: building them cost a lead arriving now ~60 expression calls
def _name_block_picks(drivers: int) -> tuple[tuple[pl.Expr, tuple[pl.Expr, ...]], ...]:
    """Per pick of NAME_BLOCK_PICKS: which leads have the tokens for it (a filter), and its block and the
    block's expected drivers were tokens independent (a selection)."""
    picks = []
    for pick in NAME_BLOCK_PICKS:
        # Four tokens are kept where their first three are: by the triple's expected size.
        sized = pick[:3]
        picks.append((pl.col("token").list.len() >= max(pick) + 1, (
            pl.concat_list([pl.col("token").list.get(i) for i in pick]).alias("block"),
            (pl.lit(float(drivers)) * pl.reduce(lambda a, b: a * b, [pl.col("drivers").list.get(i) / drivers for i in sized]))
            .alias("expected"))))
    return tuple(picks)


@dataclass
class IndexFrame:
    """The drivers index in memory: its records (sorted by person, so a person's records are one
    slice), their name tokens as integer codes, and every pair of tokens a record carries (the name
    blocks' own index: a block is looked up by its pair, at the cost of the block's size, not of its
    tokens' popularity)."""

    records: pl.DataFrame
    freq: Frequencies
    vocabulary: pl.DataFrame = field(init=False)  # (token, code)
    token_pairs: pl.DataFrame = field(init=False)  # (pair, driver_i): pair = low code << 32 | high code
    # person_i -> its first row in records; person_starts[-1] = len(records)
    person_starts: np.ndarray = field(init=False)
    # driver_i << 32 | code of every (record, token), sorted: "does record r carry token t?" by bisection
    token_keys: np.ndarray = field(init=False)
    # column -> (sorted hashes of its non-null values, their rows): point lookups by bisection instead
    # of a scan of every record per lookup; built on a column's first lookup (0.08-0.19 s at 1M), or read
    # with an image (Polars' hash is stable within one Polars version: the image records which).
    _lookups: dict = field(init=False, default_factory=dict, repr=False)
    # Each record's name initials as bits (_initials), by row: made on the first initials rule's lookup.
    _initials: np.ndarray | None = field(init=False, default=None, repr=False)
    # Held while a lookup or the initials are built: the image thread of a first build (parts) and the
    # matcher deciding beside it build each once, not twice.
    _building: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        # By person, then driver: the same rows in the same order whatever order the records came in.
        self.records = self.records.sort("person_key", "driver_id")
        first = (self.records["person_key"] != self.records["person_key"].shift(1)).fill_null(True).to_numpy()
        self.person_starts = np.append(np.flatnonzero(first), self.records.height).astype(np.int64)
        self.records = self.records.with_columns(pl.Series("person_i", np.cumsum(first) - 1, dtype=pl.UInt32))
        words = (self.records.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("driver_i"),
                                     pl.concat_list("given_tokens", "surname_tokens").alias("token"))
                 .explode("token").drop_nulls("token"))
        self.vocabulary = (words.select("token").unique().sort("token")
                           .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("code")))
        # (driver_i, code): one row per distinct token of a record, kept only as sorted keys
        tokens = words.join(self.vocabulary, on="token").select("driver_i", "code")
        del words
        keys = np.sort(_token_key(tokens["driver_i"].to_numpy(), tokens["code"].to_numpy()))
        # sorted, then duplicates dropped (np.unique hashes: seconds on a VM with slow random access)
        self.token_keys = keys[np.append(True, keys[1:] != keys[:-1])] if len(keys) else keys
        del tokens
        self.token_pairs = _token_pairs(self.token_keys)

    @classmethod
    def load(cls) -> IndexFrame:
        """The index of the database's current version: the one this process kept when it is of that
        version (CT4_INDEX_KEEP), else from its image on disk when there is one (identity.index_image),
        else read from the database (and its image written for the next run)."""
        version = index_image.index_version()
        kept = kept_of(version)
        if kept is not None:
            return kept
        _keep(None, None)  # a stale one goes before the new one is read: never two in memory
        parts = index_image.image_read(version)
        if parts is not None:
            index = cls.restored(parts)
            _keep(version, index)
            return index
        records = frame_read(f"SELECT {_RECORD_COLUMNS} FROM canon.drivers_index", schema=RECORD_SCHEMA)
        index = cls(records=records, freq=frequencies_load(records=records))
        # Only when no refresh committed while it was read: the image (and the kept index) must be of that
        # version alone.
        if version is not None and index_image.index_version() == version:
            if index_image.image_dir() is not None:
                index_image.image_write(version, index.parts())
            _keep(version, index)
        return index

    def parts(self) -> IndexParts:
        """Everything this index is made of, to be saved as an image (identity.index_image), with the
        structures its first lookups would build (the initials, every LOOKUP_COLUMNS lookup: about 1 s at
        1M that a worker's first run would otherwise pay), built now when they are not yet."""
        arrays = {"person_starts": self.person_starts, "token_keys": self.token_keys, "initials": self.initials()}
        for column in LOOKUP_COLUMNS:
            arrays[f"lookup_hash.{column}"], arrays[f"lookup_row.{column}"] = self._lookup(column)
        return IndexParts(
            frames={"records": self.records, "vocabulary": self.vocabulary, "token_pairs": self.token_pairs,
                    "tokens": self.freq.tokens_frame(), "hires": self.freq.hires_frame()},
            arrays=arrays,
            meta={"persons": self.freq.persons, "drivers": self.freq.drivers, "lookups": list(LOOKUP_COLUMNS)})

    @classmethod
    def restored(cls, parts: IndexParts) -> IndexFrame:
        """The index `parts` was taken from, without building anything again."""
        index = cls.__new__(cls)
        frames = parts.frames
        index.records, index.vocabulary, index.token_pairs = frames["records"], frames["vocabulary"], frames["token_pairs"]
        index.person_starts, index.token_keys = parts.arrays["person_starts"], parts.arrays["token_keys"]
        index._initials = parts.arrays.get("initials")
        index._lookups = {column: (parts.arrays[f"lookup_hash.{column}"], parts.arrays[f"lookup_row.{column}"])
                          for column in parts.meta.get("lookups", ())}
        index._building = threading.Lock()
        index.freq = Frequencies(persons=parts.meta["persons"], drivers=parts.meta["drivers"], tokens=frames["tokens"],
                                 hires=frames["hires"])
        return index

    def _rows_with(self, column: str, values: pl.Series) -> np.ndarray:
        """The rows of records whose `column` hashes like one of `values`, ascending: the rows holding
        one of them, and, were two values ever to share a 64-bit hash, a row holding the other. Every
        caller joins the rows' values with the values it asked for, which drops such a row."""
        ordered, rows = self._lookup(column)
        wanted = values.cast(self.records.schema[column]).drop_nulls()
        if not wanted.len() or not len(ordered):
            return np.zeros(0, dtype=np.int64)
        # Sorted first: bisecting in order stays in the cache (1M values: 0.08 s instead of 0.45 s).
        hashed = np.sort(wanted.hash().to_numpy())
        hashed = hashed[np.append(True, hashed[1:] != hashed[:-1])]
        starts, ends = np.searchsorted(ordered, hashed, "left"), np.searchsorted(ordered, hashed, "right")
        counts = ends - starts
        return np.sort(rows[np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())])

    def _lookup(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """`column`'s lookup: the hashes of its non-null values, sorted, and their rows (_rows_with)."""
        found = self._lookups.get(column)
        if found is None:
            with self._building:
                found = self._lookups.get(column)
                if found is None:
                    hashes = self.records[column].hash().to_numpy()
                    rows = np.flatnonzero(self.records[column].is_not_null().to_numpy())
                    # Sorted by (hash, row) on every core: numpy's stable argsort, the same order, took ~120 ms
                    # of each column's first lookup at 1M on one core (six columns a run), this ~50 ms.
                    lookup = pl.DataFrame({"hash": hashes[rows], "row": rows}).sort("hash", "row")
                    found = self._lookups[column] = (lookup["hash"].to_numpy(), lookup["row"].to_numpy())
        return found

    def _carrying(self, columns: tuple[str, ...], values: pl.Series) -> pl.DataFrame:
        """(value, person_key, person_i) of every record holding one of `values` in one of `columns`."""
        return pl.concat([
            self.records.select(pl.col(column).alias("value"), "person_key", "person_i")[self._rows_with(column, values)]
            for column in columns
        ]).filter(pl.col("value").is_in(values.implode()))

    def key_counts(self, leads: pl.DataFrame) -> pl.DataFrame:
        """(field, value, persons): how many persons carry each of the batch's key values."""
        parts = []
        for name in KEY_FIELDS:
            wanted = _lead_values(leads, FIELDS[name].lead_column)["value"].unique()
            if not wanted.len():
                continue
            hits = self._carrying(FIELDS[name].index_columns, wanted)
            parts.append(hits.group_by("value").agg(pl.col("person_key").n_unique().alias("persons"))
                         .select(pl.lit(name).alias("field"), "value", pl.col("persons").cast(pl.Int64)))
        return pl.concat(parts) if parts else pl.DataFrame(schema=KEYS_SCHEMA)

    def equal_hits(self, equal: tuple[BlockingRule, ...], wanted: pl.DataFrame) -> pl.DataFrame:
        """(lead_i, person_key, person_i, rule): the records holding each wanted (rule, value) in the
        rule's index column (`wanted`: equal_wanted's)."""
        index_column = {rule.name: rule.index_column for rule in equal}
        found = pl.concat([
            self._carrying((index_column[name],), these["value"].unique()).with_columns(pl.lit(name).alias("rule"))
            for (name,), these in wanted.partition_by("rule", as_dict=True).items()
        ])
        return wanted.join(found, on=["rule", "value"]).select("lead_i", "person_key", "person_i", "rule")

    def name_hits(self, blocks: pl.DataFrame, cap: int) -> pl.DataFrame:
        """Records carrying every token of a block: the records holding its first two tokens (one
        lookup in token_pairs), and for a triple, the third token too; a block of four tokens is its
        triple's records (name_blocks makes it only beside its triple) that carry the fourth."""
        if not blocks.height:
            return pl.DataFrame(schema=PERSON_HITS_SCHEMA)
        numbered = blocks.with_row_index("block_i")
        length = pl.col("block").list.len()
        carried = self._carrying_block(numbered.filter(length <= 3))
        fours = numbered.filter(length == 4)
        if fours.height:
            # Not a second lookup of the pair: a triple's records are already few.
            triples = numbered.filter(length == 3).select(pl.col("block_i").alias("triple_i"), "lead_i", "block")
            rows = (fours.select("block_i", "lead_i", pl.col("block").list.head(3), pl.col("block").list.get(3).alias("token"))
                    .join(triples, on=["lead_i", "block"]).join(self.vocabulary, on="token")
                    .join(carried.rename({"block_i": "triple_i"}), on=["triple_i", "lead_i"]))
            carried = pl.concat([carried, self._carrying_token(rows).select("block_i", "lead_i", "driver_i")])
        small = carried.group_by("block_i").agg(pl.len().alias("drivers")).filter(pl.col("drivers") <= cap)
        kept = carried.join(small, on="block_i", how="semi")
        persons = self.records.select("person_key", "person_i")[kept["driver_i"]]
        return kept.select("lead_i").with_columns(persons).unique()

    def _carrying_block(self, numbered: pl.DataFrame) -> pl.DataFrame:
        """(block_i, lead_i, driver_i): the records carrying every token of each block of two or three."""
        coded = (numbered.explode("block").rename({"block": "token"})
                 .with_columns(pl.int_range(pl.len()).over("block_i").alias("position"))
                 .join(self.vocabulary, on="token", how="left"))
        complete = coded.group_by("block_i").agg(pl.col("code").is_not_null().all().alias("known"))
        coded = coded.join(complete.filter("known"), on="block_i", how="semi")
        heads = (coded.filter(pl.col("position") < 2).group_by("block_i", "lead_i")
                 .agg(pl.col("code").min().alias("low"), pl.col("code").max().alias("high"))
                 .select("block_i", "lead_i", _pair("low", "high").alias("pair")))
        carried = heads.join(self.token_pairs, on="pair").select("block_i", "lead_i", "driver_i")
        third = coded.filter(pl.col("position") == 2).select("block_i", "code")
        if third.height:
            triple = carried.join(third, on="block_i")
            keep = self._carrying_token(triple).select("block_i", "lead_i", "driver_i")
            carried = pl.concat([carried.join(third, on="block_i", how="anti"), keep])
        return carried

    def _carrying_token(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The rows (driver_i, code, ...) whose record carries the token `code`: bisection in token_keys."""
        wanted = _token_key(rows["driver_i"].to_numpy(), rows["code"].to_numpy())
        return rows.filter(pl.Series(_contained(self.token_keys, wanted)))

    def persons_records(self, person_keys: pl.Series) -> pl.DataFrame:
        return self.records.filter(pl.col("person_key").is_in(person_keys.unique().implode())).drop("person_i")

    def records_with(self, column: str, values: pl.Series) -> pl.DataFrame:
        """Every record whose `column` is one of `values` (value, person_key, person_i, initials: the bits
        of its name tokens' first letters)."""
        rows = self._rows_with(column, values)
        return self.records.select(pl.col(column).alias("value"), "person_key", "person_i")[rows].with_columns(
            pl.Series("initials", self.initials()[rows], dtype=pl.UInt32))

    def initials(self) -> np.ndarray:
        """Each record's name initials as bits (see _initials), from its tokens' codes: computed once (a
        birth date's records, gathered with their tokens for every batch, cost a tenth of deciding)."""
        if self._initials is None:
            with self._building:
                if self._initials is None:
                    self._initials = self._initials_made()
        return self._initials

    def _initials_made(self) -> np.ndarray:
        bits = self.vocabulary.sort("code").select(_initial_bits(pl.col("token"))).to_series().to_numpy()
        driver = (self.token_keys >> np.uint64(32)).astype(np.int64)
        code = (self.token_keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        initials = np.zeros(self.records.height, dtype=np.uint32)
        if len(driver):  # the keys are sorted: each record's tokens are one run
            starts = np.flatnonzero(np.append(True, driver[1:] != driver[:-1]))
            initials[driver[starts]] = np.bitwise_or.reduceat(bits[code], starts)
        return initials

    def pairs_records(self, persons: pl.DataFrame) -> pl.DataFrame:
        """(lead_i, record columns...): every record of each (lead_i, person_i), by slicing."""
        person_i = persons["person_i"].to_numpy().astype(np.int64)
        starts, ends = self.person_starts[person_i], self.person_starts[person_i + 1]
        counts = ends - starts
        rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        return (self.records.drop("person_i")[rows]
                .with_columns(pl.Series("lead_i", np.repeat(persons["lead_i"].to_numpy(), counts), dtype=pl.UInt32)))


# The last index this process read (IndexFrame.load), by database and version: a worker running job after
# job (django-q2) decides its next run against it while no refresh has changed the index, instead of
# reading it again (0.4 s from an image, ~4.5 s from the database at 1M) or, for a run under
# CT4_IN_MEMORY_MIN_LEADS leads, asking the database lead by lead (resolution.MatchContext.for_leads).
# About 0.8 GB at a million drivers; settings.CT4_INDEX_KEEP = False keeps none.
_KEPT: dict = {"key": None, "index": None}


def kept_of(version: str | None) -> IndexFrame | None:
    """The index this process kept, when it is of `version` (the database's current one, to the caller)."""
    if version is None or not getattr(settings, "CT4_INDEX_KEEP", True):
        return None
    return _KEPT["index"] if _KEPT["key"] == (index_image.database_folder(), version) else None


def _keep(version: str | None, index: IndexFrame | None) -> None:
    keep = version is not None and index is not None and getattr(settings, "CT4_INDEX_KEEP", True)
    _KEPT["key"] = (index_image.database_folder(), version) if keep else None
    _KEPT["index"] = index if keep else None


def _contained(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Whether each of `wanted` is among the sorted `keys`. The wanted keys are bisected in sorted order
    and the answers put back: in random order each bisection misses the cache (3 s of a 1M match run
    for about 300,000 triples a batch; sorted, a tenth of it)."""
    if not len(keys) or not len(wanted):
        return np.zeros(len(wanted), dtype=bool)
    order = np.argsort(wanted, kind="stable")
    ordered = wanted[order]
    at = np.minimum(np.searchsorted(keys, ordered), len(keys) - 1)
    found = np.empty(len(wanted), dtype=bool)
    found[order] = keys[at] == ordered
    return found


def _token_key(driver_i: np.ndarray, code: np.ndarray) -> np.ndarray:
    return (driver_i.astype(np.uint64) << np.uint64(32)) | code.astype(np.uint64)


def _token_pairs(keys: np.ndarray) -> pl.DataFrame:
    """(pair, driver_i) sorted by pair, from the sorted (driver_i << 32 | code) keys: each record's
    tokens are a run of keys in ascending code, so its pairs are the keys k apart within the run."""
    driver, code = (keys >> np.uint64(32)).astype(np.uint32), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint64)
    pairs, drivers = [], []
    k = 1
    while k < len(keys):
        same = driver[:-k] == driver[k:]
        if not same.any():
            break
        pairs.append((code[:-k][same] << np.uint64(32)) | code[k:][same])
        drivers.append(driver[:-k][same])
        k += 1
    pair = np.concatenate(pairs) if pairs else np.zeros(0, dtype=np.uint64)
    # Sorted by Polars (on every core; numpy's argsort took 0.8 s of a 1M load on one)
    return pl.DataFrame({"pair": pair, "driver_i": np.concatenate(drivers) if drivers else np.zeros(0, np.uint32)}
                        ).sort("pair", "driver_i")


class SqlIndex:
    """The same lookups, answered by the database's indexes (a lead arriving now)."""

    def __init__(self, freq: Frequencies):
        self.freq = freq

    def key_counts(self, leads: pl.DataFrame) -> pl.DataFrame:
        selects, params = [], []
        for name in KEY_FIELDS:
            values = _lead_values(leads, FIELDS[name].lead_column)["value"].unique().to_list()
            if not values:
                continue
            array, param = array_param(values)
            union = " UNION ".join(
                f"SELECT {column} AS value, person_key FROM canon.drivers_index WHERE {column} = ANY({array})"
                for column in FIELDS[name].index_columns)
            selects.append(f"SELECT '{name}', value, count(DISTINCT person_key) FROM ({union}) v GROUP BY value")
            params += [param] * len(FIELDS[name].index_columns)
        if not selects:
            return pl.DataFrame(schema=KEYS_SCHEMA)
        return frame_fetch(" UNION ALL ".join(selects), params, schema=KEYS_SCHEMA)

    def equal_hits(self, equal: tuple[BlockingRule, ...], wanted: pl.DataFrame) -> pl.DataFrame:
        """(lead_i, person_key, rule), as IndexFrame.equal_hits: one query for every rule."""
        selects, params = [], []
        index_column = {rule.name: rule.index_column for rule in equal}
        for name, values in wanted.group_by("rule").agg(pl.col("value").unique()).iter_rows():
            array, param = array_param(values)
            # The rule's name and column are the registry's identifiers, not input.
            selects.append(f"SELECT '{name}'::text, {index_column[name]}, person_key::text FROM canon.drivers_index "
                           f"WHERE {index_column[name]} = ANY({array})")
            params.append(param)
        found = frame_fetch(" UNION ALL ".join(selects), params,
                            schema={"rule": pl.String, "value": pl.String, "person_key": pl.String})
        return wanted.join(found, on=["rule", "value"]).select("lead_i", "person_key", "rule")

    def name_hits(self, blocks: pl.DataFrame, cap: int) -> pl.DataFrame:
        if not blocks.height:
            return pl.DataFrame(schema=PERSON_HITS_SCHEMA)
        numbered = blocks.with_row_index("block_i")
        # Tokens are [a-z]+ (identity.normalize): a block's tokens joined by spaces, the blocks by commas.
        array, param = array_param(numbered["block"].list.join(" ").to_list(), sep=",")
        found = frame_fetch(
            f"""
            SELECT b.i - 1, h.person_key::text
            FROM unnest({array}) WITH ORDINALITY AS b(tokens, i)
            CROSS JOIN LATERAL canon.name_block(string_to_array(b.tokens, ' '), %s) h
            """,
            [param, cap + 1], schema={"block_i": pl.UInt32, "person_key": pl.String})
        small = found.group_by("block_i").agg(pl.len().alias("drivers")).filter(pl.col("drivers") <= cap)
        found = found.join(small, on="block_i", how="semi").join(numbered.select("block_i", "lead_i"), on="block_i")
        return found.select("lead_i", "person_key").unique()

    def persons_records(self, person_keys: pl.Series) -> pl.DataFrame:
        keys = person_keys.unique().to_list()
        if not keys:
            return pl.DataFrame(schema=RECORD_SCHEMA)
        array, param = array_param(keys, "uuid")
        return frame_fetch(f"SELECT {_RECORD_COLUMNS} FROM canon.drivers_index WHERE person_key = ANY({array})",
                           [param], schema=RECORD_SCHEMA)

    def pairs_records(self, persons: pl.DataFrame) -> pl.DataFrame:
        return persons.select("lead_i", "person_key").join(self.persons_records(persons["person_key"]), on="person_key")

    def records_with(self, column: str, values: pl.Series) -> pl.DataFrame:
        schema = {"value": RECORD_SCHEMA[column], "person_key": pl.String, "initials": pl.UInt32}
        wanted = values.drop_nulls().unique().to_list()
        if not wanted:
            return pl.DataFrame(schema=schema)
        # One index probe per value, whatever their number: a key's one-typo variants are ~100 a value
        # (27,700 for 1,000 leads), and `= ANY` of that many made the planner scan the million rows
        # on every core (210 ms, against 70-140 ms probing on one).
        if schema["value"] == pl.Date:
            array, param = array_param([value.isoformat() for value in wanted], "date")
        else:
            array, param = array_param(wanted)
        # The initials as _initials makes them (tokens are [a-z]+: "a" is bit 0), here rather than from the
        # tokens in a frame: a lead arriving now saved ~0.7 ms of each of its three initials rules.
        return frame_fetch(f"SELECT d.{column}, d.person_key::text, "
                           f"(SELECT coalesce(bit_or(1 << (ascii(t) - 97)), 0) "
                           f"FROM unnest(d.given_tokens || d.surname_tokens) t) "
                           f"FROM unnest({array}) AS v(value) "
                           f"CROSS JOIN LATERAL ("
                           f"SELECT * FROM canon.drivers_index x WHERE x.{column} = v.value OFFSET 0) d",
                           [param], schema=schema)


def stage_hits(source: IndexFrame | SqlIndex, stage: int, leads: pl.DataFrame, freq: Frequencies) -> pl.DataFrame:
    """(lead_i, person_key, rule): the candidates every rule of a stage finds for these leads.
    `freq.keys` must hold the key counts of these leads (a value over its rule's cap blocks nothing)."""
    parts = []
    # The EQUAL rules at once: one lookup for all of them (a lead arriving now paid about ten frame
    # operations and a query per rule).
    equal = tuple(rule for rule in rules(stage) if rule.kind == BlockKind.EQUAL)
    if equal and (wanted := equal_wanted(equal, leads, freq.keys_frame())).height:
        parts.append(_as_hits(source.equal_hits(equal, wanted), pl.col("rule")))
    for rule in rules(stage):
        if rule.kind == BlockKind.EQUAL:
            continue
        if rule.kind in (BlockKind.EQUAL_AND_INITIALS, BlockKind.ONE_TYPO_AND_INITIALS):
            found = initials_hits(source, rule, leads)
        else:
            found = source.name_hits(name_blocks(leads, freq), rule.cap)
        if found.height:
            parts.append(_as_hits(found, pl.lit(rule.name)))
    return pl.concat(parts) if parts else pl.DataFrame(schema=HITS_SCHEMA)


def _as_hits(found: pl.DataFrame, rule: pl.Expr) -> pl.DataFrame:
    """A source's hits in HITS_SCHEMA (person_i: null where the source numbers no persons)."""
    person_i = pl.col("person_i") if "person_i" in found.columns else pl.lit(None)
    return found.select(pl.col("lead_i").cast(pl.UInt32), "person_key", person_i.cast(pl.UInt32).alias("person_i"),
                        rule.alias("rule"))


def equal_wanted(equal: tuple[BlockingRule, ...], leads: pl.DataFrame, counts: pl.DataFrame) -> pl.DataFrame:
    """(lead_i, rule, value): each EQUAL rule's lead values that some driver carries, held by no more
    persons than the rule's cap (`counts`: the batch's key counts, field, value, persons)."""
    spec = pl.DataFrame({
        "rule": [rule.name for rule in equal],
        "lead_column": [rule.lead_column for rule in equal],
        "field": [next(f.name for f in FIELDS.values() if f.lead_column == rule.lead_column) for rule in equal],
        "cap": [rule.cap for rule in equal],
    }, schema={"rule": pl.String, "lead_column": pl.String, "field": pl.String, "cap": pl.Int64})
    columns = list(dict.fromkeys(rule.lead_column for rule in equal))
    return (leads.select("lead_i", *(pl.col(column).cast(pl.String) for column in columns))
            .unpivot(index="lead_i", variable_name="lead_column", value_name="value").drop_nulls("value")
            .join(spec, on="lead_column").join(counts, on=["field", "value"])
            .filter(pl.col("persons") <= pl.col("cap")).select("lead_i", "rule", "value"))


# A name token's first letter as one bit: tokens are [a-z]+ (identity.normalize), so a set of initials
# fits in 26 bits, and the initials two names share are the bits of an AND.
_INITIAL_BITS = {letter: 1 << i for i, letter in enumerate(string.ascii_lowercase)}


def _initial_bits(token: pl.Expr) -> pl.Expr:
    """A token's first letter as its bit (a token outside [a-z]+ is an error, not a silent 0)."""
    return token.str.slice(0, 1).replace_strict(_INITIAL_BITS, return_dtype=pl.UInt32)


@cache  # constant: its 26-letter replacement cost a one-lead batch ~0.2 ms a call, three calls a lead
def _initials_of(column: str) -> pl.Expr:
    return _initials(pl.col(column))


def _initials(tokens: pl.Expr) -> pl.Expr:
    """The set of a list of tokens' first letters, as bits (0: no token)."""
    return tokens.list.eval(_initial_bits(pl.element())).list.unique().list.sum().fill_null(0).cast(pl.UInt32)


# The characters a typo may put in place of another: a digit for a digit; a letter for a letter or a
# digit (CE numbers and plates mix them). Other characters ("+" of a phone) are never changed.
_DIGITS, _ALNUM = string.digits, string.ascii_uppercase + string.digits
_TYPO_ALPHABET = pl.DataFrame({"kind": ["digit"] * len(_DIGITS) + ["letter"] * len(_ALNUM),
                               "char": list(_DIGITS) + list(_ALNUM)})
# Up to this many values, variants are made in Python: a lead arriving now paid ~6 ms of frame operations
# per key for them; the frame way pays off from a few hundred values on.
_VARIANTS_IN_PYTHON_MAX = 64


def one_typo_variants(wanted: pl.DataFrame, indels: bool = False) -> pl.DataFrame:
    """Each row of `wanted` (a text column "value" and any others) once for every value one typo off
    its own, the one_typo level of a key: one character changed (see _TYPO_ALPHABET) or two
    neighbouring letters or digits swapped, and with `indels` one character dropped or one added (a
    digit into a number, a letter or digit into other values); the value itself never among them. 79
    variants of a DNI (169 with indels), about 100 of a phone."""
    if wanted.height <= _VARIANTS_IN_PYTHON_MAX:
        return _one_typo_variants_small(wanted, indels)
    value = pl.col("value")
    longest = wanted["value"].str.len_chars().max()
    position = pl.col("pos")
    at = (wanted.join(pl.DataFrame({"pos": range(longest)}, schema={"pos": pl.Int64}), how="cross")
          .filter(position < value.str.len_chars())
          .with_columns(value.str.slice(position, 1).alias("old"), value.str.slice(position + 1, 1).alias("next")))
    kind = (pl.when(pl.col("old").str.contains("^[0-9]$")).then(pl.lit("digit"))
            .when(pl.col("old").str.contains("^[A-Z]$")).then(pl.lit("letter")))
    head = value.str.slice(0, position)
    changed = (at.with_columns(kind.alias("kind")).join(_TYPO_ALPHABET, on="kind")
               .filter(pl.col("char") != pl.col("old"))
               .with_columns(pl.concat_str(head, pl.col("char"), value.str.slice(position + 1)).alias("value")))
    alnum = "^[0-9A-Z]$"
    swapped = (at.filter(pl.col("old").str.contains(alnum) & pl.col("next").str.contains(alnum)
                         & (pl.col("next") != pl.col("old")))
               .with_columns(pl.concat_str(head, pl.col("next"), pl.col("old"), value.str.slice(position + 2))
                             .alias("value")))
    variants = [changed.select(wanted.columns), swapped.select(wanted.columns)]
    if indels:
        dropped = (at.filter(value.str.len_chars() > 1)
                   .with_columns(pl.concat_str(head, value.str.slice(position + 1)).alias("value")))
        gaps = (wanted.join(pl.DataFrame({"pos": range(longest + 1)}, schema={"pos": pl.Int64}), how="cross")
                .filter(position <= value.str.len_chars())
                .with_columns(pl.when(value.str.contains("^[0-9]+$")).then(pl.lit("digit")).otherwise(pl.lit("letter"))
                              .alias("kind")))
        added = (gaps.join(_TYPO_ALPHABET, on="kind")
                 .with_columns(pl.concat_str(head, pl.col("char"), value.str.slice(position)).alias("value")))
        variants += [dropped.select(wanted.columns), added.select(wanted.columns)]
        # Dropping either of two equal neighbours, or adding a letter beside its twin, gives one value twice.
        return pl.concat(variants).unique(maintain_order=True)
    return pl.concat(variants)


def _one_typo_variants_small(wanted: pl.DataFrame, indels: bool = False) -> pl.DataFrame:
    """one_typo_variants, made value by value (the same rows, in another order)."""
    rows = []
    others = [c for c in wanted.columns if c != "value"]
    for row in wanted.iter_rows(named=True):
        rows += [{**{c: row[c] for c in others}, "value": variant} for variant in _value_variants(row["value"], indels)]
    return pl.DataFrame(rows, schema=wanted.schema, orient="row") if rows else wanted.clear()


def _value_variants(v: str, indels: bool) -> list[str]:
    """The values one typo off v, once each (one_typo_variants for one value)."""
    variants = []
    for i, old in enumerate(v):
        alphabet = _DIGITS if old in _DIGITS else _ALNUM if old in _ALNUM else ""
        variants += [v[:i] + c + v[i + 1:] for c in alphabet if c != old]
        if i + 1 < len(v) and old in _ALNUM and v[i + 1] in _ALNUM and v[i + 1] != old:
            variants.append(v[:i] + v[i + 1] + old + v[i + 2:])
    if indels:
        alphabet = _DIGITS if v.isascii() and v.isdigit() else _ALNUM
        extra = ([v[:i] + v[i + 1:] for i in range(len(v))] if len(v) > 1 else []) + [
            v[:i] + c + v[i:] for i in range(len(v) + 1) for c in alphabet]
        variants = list(dict.fromkeys(variants + extra))
    return variants


def _typo_variants_as_indexed(values: pl.DataFrame, rule: BlockingRule) -> pl.DataFrame:
    """(lead_i, value, initials_min): the values one typo off each lead's, as the index stores them, and the
    initials a record holding one must share with the lead. A document is stored normalized: a 7-digit
    number with its lost leading zero back. So with indels, a DNI typed with a digit dropped (4152637,
    stored 04152637) is sought by its number without that zero (whose one-digit-longer variants hold
    41526374), and a variant a digit shorter than an 8-digit DNI is sought with its zero back. Those
    neighbours are as dense as the same-length ones, so a record found through a dropped or added
    character must share rule.indels_initials_min initials (at 1M, with one, the 8 + 80 more neighbours
    a DNI has made about 2 of every 100 non-drivers' leads a review of a stranger)."""
    if not rule.indels:
        return one_typo_variants(values).with_columns(pl.lit(rule.initials_min, pl.UInt32).alias("initials_min"))
    if values.height <= _VARIANTS_IN_PYTHON_MAX:
        return _typo_variants_as_indexed_small(values, rule)
    stems = values.with_columns(pl.lit(False).alias("unpadded"), pl.col("value").str.len_chars().alias("typed_length"))
    if FIELDS[rule.lead_column].leading_zeros_equal:
        stems = pl.concat([stems, stems.filter(pl.col("value").str.contains("^0[0-9]+$")).with_columns(
            pl.col("value").str.strip_chars_start("0"), pl.lit(True).alias("unpadded"))])
    variants = one_typo_variants(stems, indels=True)
    indel = pl.col("unpadded") | (pl.col("value").str.len_chars() != pl.col("typed_length"))
    variants = variants.select(
        "lead_i",
        (normalize.document_zero_restored(pl.col("value")) if FIELDS[rule.lead_column].leading_zeros_equal
         else pl.col("value")).alias("value"),
        pl.when(indel).then(max(rule.indels_initials_min, rule.initials_min))
        .otherwise(rule.initials_min).cast(pl.UInt32).alias("initials_min"))
    # A value reached both ways keeps the smaller need; a lead's own value is no typo of it.
    variants = variants.group_by("lead_i", "value", maintain_order=True).agg(pl.col("initials_min").min())
    return variants.join(values, on=["lead_i", "value"], how="anti")


def _typo_variants_as_indexed_small(values: pl.DataFrame, rule: BlockingRule) -> pl.DataFrame:
    """_typo_variants_as_indexed made value by value (a lead arriving now: about ten frame operations fewer)."""
    zeros = FIELDS[rule.lead_column].leading_zeros_equal
    same, indel = rule.initials_min, max(rule.indels_initials_min, rule.initials_min)
    need: dict[tuple, int] = {}
    for lead_i, value in values.select("lead_i", "value").iter_rows():
        stems = [(value, False)]
        if zeros and len(value) > 1 and value[0] == "0" and value.isascii() and value.isdigit():
            stems.append((value.lstrip("0"), True))
        for stem, unpadded in stems:
            for variant in _value_variants(stem, indels=True):
                wanted = indel if unpadded or len(variant) != len(value) else same
                if zeros:
                    variant = normalize.document_zero_restored_text(variant)
                if variant != value:
                    need[lead_i, variant] = min(need.get((lead_i, variant), wanted), wanted)
    return pl.DataFrame([(lead_i, variant, n) for (lead_i, variant), n in need.items()], orient="row",
                        schema={"lead_i": values.schema["lead_i"], "value": pl.String, "initials_min": pl.UInt32})


def initials_hits(source: IndexFrame | SqlIndex, rule: BlockingRule, leads: pl.DataFrame) -> pl.DataFrame:
    """(lead_i, person_key[, person_i]): records with the lead's value in rule.index_column (for
    ONE_TYPO_AND_INITIALS, a value one typo off it) whose name tokens' initials include at least
    rule.initials_min of the lead's (all of them when the lead has fewer); a lead finding more
    persons than the rule's cap this way finds none."""
    wanted = (leads.select("lead_i", pl.col(rule.lead_column).alias("value"), _initials_of("name_tokens").alias("lead_initials"))
              .drop_nulls("value").filter(pl.col("lead_initials") > 0))
    values = wanted.select("lead_i", "value")
    if rule.kind == BlockKind.ONE_TYPO_AND_INITIALS:
        values = _typo_variants_as_indexed(values, rule)
    else:
        values = values.with_columns(pl.lit(rule.initials_min, pl.UInt32).alias("initials_min"))
    if not values.height:
        return pl.DataFrame(schema=PERSON_HITS_SCHEMA)
    found = source.records_with(rule.index_column, values["value"])
    hits = (values.join(found, on="value")
            .join(wanted.select("lead_i", "lead_initials"), on="lead_i").filter(_initials_enough())
            .drop("lead_initials", "initials", "value", "initials_min").unique(subset=["lead_i", "person_key"]))
    small = hits.group_by("lead_i").agg(pl.len().alias("persons")).filter(pl.col("persons") <= rule.cap)
    return hits.join(small.select("lead_i"), on="lead_i", how="semi")


@cache  # constant, as _initials_of
def _initials_enough() -> pl.Expr:
    """The record's initials share at least initials_min of the lead's (all of them when it has fewer)."""
    shared = (pl.col("lead_initials") & pl.col("initials")).bitwise_count_ones()
    return shared >= pl.min_horizontal(pl.col("lead_initials").bitwise_count_ones(), pl.col("initials_min"))


def frequencies_load(*, records: pl.DataFrame | None = None, tokens: pl.DataFrame | None = None) -> Frequencies:
    """N persons, N driver records, every name token's count and the hires per park and day (from
    `records` and `tokens` when given, else from the tables the index refresh keeps)."""
    if records is not None:
        persons, drivers = records["person_key"].n_unique(), records.height
        hires = (records.drop_nulls(["park_id", "hire_date"]).group_by("park_id", "hire_date")
                 .agg(pl.len().cast(pl.Int64).alias("hired")))
    else:
        # Kept by the index refresh after every change (identity.index.counts_refresh): counting a
        # million index rows here cost 0.9 s of every small run at 1M.
        with connection.cursor() as cursor:
            cursor.execute("SELECT drivers, persons FROM canon.drivers_index_counts")
            drivers, persons = cursor.fetchone() or (0, 0)
        hires = frame_read("SELECT park_id, hire_date, hired FROM canon.hires_per_day",
                           schema={"park_id": pl.String, "hire_date": pl.Date, "hired": pl.Int64})
    if tokens is None:
        tokens = frame_read("SELECT token, drivers FROM canon.name_token_stats", schema=TOKENS_SCHEMA)
    return Frequencies(persons=persons, drivers=drivers, tokens=tokens, hires=hires)


@dataclass(frozen=True)
class RuleCount:
    rule: str
    stage: int
    pairs: int  # (lead, person) pairs the rule produces
    new_pairs: int  # of those, pairs no earlier rule produced
    leads: int  # leads with at least one pair from the rule
    new_leads: int  # leads no earlier rule reached at all
    # Of the pairs, the ones that are the lead's link now (the recall a rule gives against what is
    # linked: by the engine or by reviewers), and of those, the ones no earlier rule produced.
    links: int = 0
    new_links: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def blocking_report(leads: pl.DataFrame, index: IndexFrame, links: pl.DataFrame | None = None) -> list[RuleCount]:
    """Per blocking rule, in declared order: the pairs it produces over these leads and how many
    of them no earlier rule produced (Splink's cumulative blocking analysis), and, given `links`
    (source_pk, person_key: each lead's linked person), how many of its pairs are links. Stage-2
    rules are counted over every lead here, not only the ones stage 1 left unsettled."""
    freq = dataclasses.replace(index.freq, keys=index.key_counts(leads))
    hits = pl.concat([stage_hits(index, stage, leads, freq) for stage in sorted({r.stage for r in BLOCKING_RULES})])
    linked = (leads.select("lead_i", "source_pk").join(links, on="source_pk").select("lead_i", "person_key")
              if links is not None else pl.DataFrame(schema={"lead_i": pl.UInt32, "person_key": pl.String}))
    seen = pl.DataFrame(schema={"lead_i": pl.UInt32, "person_key": pl.String})
    reached = pl.DataFrame(schema={"lead_i": pl.UInt32})
    report = []
    for rule in BLOCKING_RULES:
        pairs = hits.filter(pl.col("rule") == rule.name).select("lead_i", "person_key").unique()
        new = pairs.join(seen, on=["lead_i", "person_key"], how="anti")
        rule_leads = pairs.select("lead_i").unique()
        report.append(RuleCount(rule.name, rule.stage, pairs.height, new.height, rule_leads.height,
                                rule_leads.join(reached, on="lead_i", how="anti").height,
                                pairs.join(linked, on=["lead_i", "person_key"], how="semi").height,
                                new.join(linked, on=["lead_i", "person_key"], how="semi").height))
        seen = pl.concat([seen, new])
        reached = pl.concat([reached, rule_leads]).unique()
    return report
