"""The normalized drivers index: built from the drivers table, incrementally, in bulk.

A driver whose `updated_at` differs from the one its index entry was computed from is
re-normalized; `full=True` re-normalizes every driver. New drivers become persons through
identity.linking (the one writer of persons and links).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
from django.db import connection, transaction

from identity import index_image, linking, normalize
from identity.bulk import frame_copy, frame_read, staging_create
from identity.candidates import IndexFrame, frequencies_load
from identity.fields import INDEX_SOURCES
from identity.matching import RECORD_SCHEMA, Frequencies
from identity.runs import job_run

JOB_NAME = "refresh_drivers_index"
log = logging.getLogger("ct4.index")

# The changed drivers' raw columns, read by COPY and normalized column-wise in Polars by the twins
# of identity.normalize, then staged in _index_norm for the set-based writes below.
_RAW_DRIVER_SCHEMA = {
    "driver_id": pl.String, "park_id": pl.String, "birth_date": pl.Date, "hire_date": pl.Date,
    "updated_at": pl.String, "first_name": pl.String, "middle_name": pl.String, "last_name": pl.String,
    "phone": pl.String, "license_number": pl.String, "document": pl.String, "email": pl.String,
    "plate": pl.String,
}
_NORM_COLUMNS = {
    "driver_id": "text PRIMARY KEY", "park_id": "text", "birth_date": "date", "hire_date": "date",
    "updated_at": "timestamptz", "phone": "text", "document": "text", "license_document": "text",
    "email": "text", "plate": "text", "given_tokens": "text[]", "surname_tokens": "text[]",
    "doc_key": "text", "name_tokens": "text[]", "name_key": "text",
}


def drivers_normalize(raw: pl.DataFrame) -> pl.DataFrame:
    """Raw driver rows to index entries' keys (identity.normalize's column-wise twins)."""
    frame = raw.select("driver_id", pl.col("park_id").replace("", None), "birth_date", "hire_date", "updated_at").with_columns(
        source.normalize(*(raw[column] for column in source.raw)).rename(source.column) for source in INDEX_SOURCES)
    names = pl.concat_list("given_tokens", "surname_tokens")
    frame = frame.with_columns(pl.coalesce("document", "license_document").alias("doc_key"), names.alias("name_tokens"))
    return frame.with_columns(normalize.name_keys_column(frame["name_tokens"]).rename("name_key"))


def _stage_normalized(cursor, *, full: bool) -> None:
    join = "" if full else "JOIN _index_changed c ON c.driver_id = d.driver_id"
    raw = frame_read(
        "SELECT d.driver_id, d.park_id, d.birth_date, d.hire_date, d.updated_at, d.first_name, d.middle_name, "
        f"d.last_name, d.phone, d.license_number, d.document, d.email, d.plate FROM public.drivers d {join}",
        schema=_RAW_DRIVER_SCHEMA, cursor=cursor)
    staging_create(cursor, "_index_norm", _NORM_COLUMNS)
    frame_copy(cursor, "_index_norm", drivers_normalize(raw).select(list(_NORM_COLUMNS)))


_UPSERT_SQL = """
INSERT INTO canon.drivers_index AS di (
    driver_id, person_key, park_id, phone, document, license_document, doc_key, email, plate,
    given_tokens, surname_tokens, name_tokens, name_key, birth_date, hire_date, source_updated_at, indexed_at
)
SELECT n.driver_id, dp.person_key, park_id, phone, document, license_document, doc_key, email, plate,
       given_tokens, surname_tokens, name_tokens, name_key, birth_date, hire_date, updated_at, now()
FROM _index_norm n JOIN _driver_person dp ON dp.driver_id = n.driver_id
ORDER BY n.driver_id
ON CONFLICT (driver_id) DO UPDATE SET
    park_id = EXCLUDED.park_id, phone = EXCLUDED.phone, document = EXCLUDED.document,
    license_document = EXCLUDED.license_document, doc_key = EXCLUDED.doc_key,
    email = EXCLUDED.email, plate = EXCLUDED.plate, given_tokens = EXCLUDED.given_tokens,
    surname_tokens = EXCLUDED.surname_tokens, name_tokens = EXCLUDED.name_tokens,
    name_key = EXCLUDED.name_key, birth_date = EXCLUDED.birth_date, hire_date = EXCLUDED.hire_date,
    source_updated_at = EXCLUDED.source_updated_at, indexed_at = EXCLUDED.indexed_at
WHERE (di.park_id, di.phone, di.document, di.license_document, di.email, di.plate, di.name_tokens,
       di.given_tokens, di.birth_date, di.hire_date, di.source_updated_at)
      IS DISTINCT FROM
      (EXCLUDED.park_id, EXCLUDED.phone, EXCLUDED.document, EXCLUDED.license_document, EXCLUDED.email,
       EXCLUDED.plate, EXCLUDED.name_tokens, EXCLUDED.given_tokens, EXCLUDED.birth_date,
       EXCLUDED.hire_date, EXCLUDED.source_updated_at)
"""

# Above this many changed drivers, the index's secondary indexes are dropped and rebuilt in bulk
# (far cheaper than maintaining nine indexes row by row; readers wait for the transaction).
BULK_THRESHOLD = 50_000


@dataclass
class RefreshResult:
    changed: int = 0
    new_persons: int = 0
    joined_existing: int = 0
    driver_links: int = 0
    removed: int = 0
    seconds: float = 0.0
    phases: dict = field(default_factory=dict)  # step -> seconds

    def as_dict(self) -> dict:
        return asdict(self)


def drivers_index_refresh(*, full: bool = False, trigger: str = "command", run_id: int | None = None,
                          on_index: Callable[[IndexFrame], None] | None = None) -> RefreshResult:
    """Bring the index up to date with the drivers table and register new drivers as persons.

    On a first build, `on_index` is handed the matcher's in-memory index of what the build writes once
    the index entries are copied (and that index built, on another thread), while PostgreSQL is still
    writing the persons and links and indexing the tables:
    a caller may decide leads against it, and must write nothing that names its persons before this
    call returns (they are committed then; a failed build rolls them back)."""
    started = time.monotonic()
    with job_run(JOB_NAME, params={"full": full}, trigger=trigger, run_id=run_id) as run:
        with transaction.atomic(), connection.cursor() as cursor:
            result = _refresh(cursor, full=full, on_index=on_index)
        result.seconds = round(time.monotonic() - started, 2)
        run.add(**{k: v for k, v in result.as_dict().items() if k not in ("seconds", "phases")})
        run.counts["phases"] = result.phases
    return result


@contextmanager
def _phase(result: RefreshResult, name: str):
    started = time.monotonic()
    yield
    result.phases[name] = round(time.monotonic() - started, 2)


def _refresh(cursor, *, full: bool, on_index: Callable[[IndexFrame], None] | None = None) -> RefreshResult:
    result = RefreshResult()
    # Drivers whose index entry is missing or was computed from an older version of the row.
    # An anti-join rather than a timestamp watermark: an import that commits late with an
    # earlier updated_at would slip under a watermark.
    # The incremental refresh takes the rows the triggers on public.drivers noted (canon.drivers_changed,
    # migration 0013): comparing a million drivers with their entries cost 0.6 s a run at 1M. --full, or
    # an empty index, compares every driver (and --full re-indexes all of them).
    changed_filter = "" if full else "WHERE di.driver_id IS NULL OR di.source_updated_at IS DISTINCT FROM d.updated_at"
    with _phase(result, "find_changed"):
        cursor.execute("DROP TABLE IF EXISTS _index_changed")
        # Taken in this transaction: a rolled-back refresh leaves them noted; a change committed while
        # it runs stays noted for the next run.
        taken = "WITH taken AS (DELETE FROM canon.drivers_changed RETURNING driver_id) "
        if full or _index_is_empty(cursor):
            # Every driver is compared below. TRUNCATE (a million notes after the first import) holds
            # its lock to the commit: an import noting a change meanwhile waits, so none is lost.
            cursor.execute("TRUNCATE canon.drivers_changed")
            cursor.execute(
                f"""
                CREATE TEMP TABLE _index_changed ON COMMIT DROP AS
                SELECT d.driver_id FROM public.drivers d
                LEFT JOIN canon.drivers_index di ON di.driver_id = d.driver_id
                {changed_filter}
                """
            )
        else:
            cursor.execute(
                f"""
                CREATE TEMP TABLE _index_changed ON COMMIT DROP AS
                {taken}
                SELECT d.driver_id FROM public.drivers d WHERE d.driver_id IN (SELECT driver_id FROM taken)
                """
            )
        result.changed = cursor.rowcount
    staging = None
    first_build = bool(result.changed) and _index_is_empty(cursor)
    if first_build:
        staging = _first_build(cursor, result, on_index)
    elif result.changed:
        bulk = full or result.changed >= BULK_THRESHOLD
        with _phase(result, "normalize"):
            cursor.execute("ALTER TABLE _index_changed ADD PRIMARY KEY (driver_id)")
            cursor.execute("ANALYZE _index_changed")
            if not bulk:
                token_delta_before(cursor)
            _stage_normalized(cursor, full=full)
            cursor.execute("ANALYZE _index_norm")
        with _phase(result, "persons"):
            registration = linking.drivers_register_persons(cursor=cursor)
            result.new_persons = registration.new_persons
            result.joined_existing = registration.joined_existing
        with _bulk_load(cursor, BULK_TABLES, enabled=bulk, phases=result.phases):
            with _phase(result, "write_index"):
                cursor.execute(_UPSERT_SQL)
            with _phase(result, "driver_links"):
                result.driver_links = linking.drivers_link(cursor=cursor)
        with _phase(result, "token_stats"):
            token_delta_after(cursor, full=bulk)
        with _phase(result, "analyze"):
            if not bulk:
                # GIN's fast update parks new entries in a pending list that every name-block
                # search then reads in full (4 ms a search after 20,000 new drivers, against
                # 0.05 ms); merge it into the index now instead of waiting for autovacuum.
                cursor.execute("SELECT gin_clean_pending_list('canon.drivers_index_name_gin'::regclass)")
            # The matcher's plans depend on these tables' statistics; a big change makes them stale.
            for table in ("canon.drivers_index", "canon.name_token_stats", "canon.identity_registry",
                          "canon.identity_links"):
                cursor.execute(f"ANALYZE {table}")
    if full and not first_build:  # a first build indexed the drivers it read (one deleted since: the next --full)
        result.removed = _drop_entries_of_deleted_drivers(cursor)
    if (result.changed or result.removed) and "counts" not in result.phases:
        with _phase(result, "counts"):
            counts_refresh(cursor)
    if staging is not None:
        with _phase(result, "image"):
            _image_publish(staging)
    return result


def index_is_empty() -> bool:
    """No index entry and no driver link yet: the next refresh is a first build."""
    with connection.cursor() as cursor:
        return _index_is_empty(cursor)


def _index_is_empty(cursor) -> bool:
    cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM canon.drivers_index) "
                   "AND NOT EXISTS (SELECT 1 FROM canon.identity_links WHERE source_table = 'drivers')")
    return cursor.fetchone()[0]


def _first_build(cursor, result: RefreshResult, on_index: Callable[[IndexFrame], None] | None) -> Future | None:
    """The first build: every driver is new. Normalized column-wise, then persons, index entries
    and driver links each loaded by one COPY, secondary indexes and foreign keys built after."""
    with _phase(result, "normalize"):
        raw = frame_read(
            "SELECT d.driver_id, d.park_id, d.birth_date, d.hire_date, d.updated_at, d.first_name, d.middle_name, "
            "d.last_name, d.phone, d.license_number, d.document, d.email, d.plate FROM public.drivers d",
            schema=_RAW_DRIVER_SCHEMA, cursor=cursor)
        drivers = drivers_normalize(raw).sort("driver_id")
        del raw
        # Persons are drawn in memory first: the matcher's index of the build (records with their person)
        # is then made on a second thread while PostgreSQL writes and indexes the tables below, and
        # handed to on_index and staged on disk (the first match run reads it: identity.index_image).
        build = linking.drivers_first_persons(drivers)
        # In driver_id order (drivers is, and so is build.drivers, row for row): the primary key's b-tree
        # then grows at its right edge. The person column is put beside the others, which are not copied.
        if not drivers["driver_id"].equals(build.drivers["driver_id"]):
            raise AssertionError("persons drawn for other drivers than the ones read")
        entries = drivers.with_columns(build.drivers["person_key"]).select(
            "driver_id", "person_key", "park_id", "phone", "document", "license_document", "doc_key", "email",
            "plate", "given_tokens", "surname_tokens", "name_tokens", "name_key", "birth_date", "hire_date",
            pl.col("updated_at").alias("source_updated_at"))
        del drivers
        counts = (entries.select(pl.col("name_tokens").alias("token")).explode("token").drop_nulls()
                  .group_by("token").agg(pl.len().cast(pl.Int64).alias("drivers")))
        # What the matcher counts (records, persons, hires per park and day), counted once: written to their
        # tables below, and the in-memory index's own (the index thread counted them again: ~0.3 s at 1M).
        freq = frequencies_load(records=entries, tokens=counts)
    # The index thread is handed the entries in a list it empties: they are freed once both threads
    # are done with them, not when its task ends (the refresh's and the matcher's peak memory is then).
    built: Future = Future()
    staging = (_IMAGE_THREAD.submit(_index_built, [entries], freq, built)
               if on_index is not None or index_image.image_dir() else None)
    with _bulk_load(cursor, BULK_TABLES, enabled=True, phases=result.phases):
        # The entries first, the biggest frame, to free them early; the foreign keys come back after both.
        with _phase(result, "write_index"):
            frame_copy(cursor, "canon.drivers_index", entries)
            del entries
        if on_index is not None:
            # Handed over once the entries are freed (now, or when the index thread is done): the caller's
            # work beside the build then never adds to their memory. An index that failed is not handed.
            built.add_done_callback(lambda done: None if done.exception() else on_index(done.result()))
        with _phase(result, "persons"):
            registration = linking.drivers_first_write(cursor=cursor, build=build)
            del build
    result.new_persons, result.driver_links = registration.new_persons, registration.driver_links
    with _phase(result, "token_stats"):
        cursor.execute("TRUNCATE canon.name_token_stats")
        frame_copy(cursor, "canon.name_token_stats", counts)
    with _phase(result, "counts"):
        # From the frames in hand: counting the million rows just loaded again would cost a second.
        cursor.execute("DELETE FROM canon.drivers_index_counts")
        cursor.execute("INSERT INTO canon.drivers_index_counts (id, drivers, persons) VALUES (1, %s, %s)",
                       (freq.drivers, freq.persons))
        cursor.execute("DELETE FROM canon.hires_per_day")
        frame_copy(cursor, "canon.hires_per_day", freq.hires)
    with _phase(result, "analyze"):
        for table in ("canon.drivers_index", "canon.name_token_stats", "canon.identity_registry",
                      "canon.identity_links"):
            cursor.execute(f"ANALYZE {table}")
    return staging


_IMAGE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-image")


def _index_built(entries: list[pl.DataFrame], freq: Frequencies, built: Future) -> Path | None:
    """The in-memory index of a first build, as IndexFrame.load would read it from the tables just
    written (empty text is NULL there: frame_copy writes it so): the result of `built`, and staged on
    disk when images are on. `entries` holds the build's index entries; it is emptied. `freq`: their counts."""
    try:
        index = _index_of(entries.pop(), freq)
    except BaseException as error:
        built.set_exception(error)
        raise
    built.set_result(index)
    return index_image.image_stage(index.parts()) if index_image.image_dir() else None


def _index_of(entries: pl.DataFrame, freq: Frequencies) -> IndexFrame:
    # A selection shares the entries' columns; only a text column holding "" (none, normally) is copied.
    records = entries.select(list(RECORD_SCHEMA))
    del entries
    blank = [name for name, dtype in RECORD_SCHEMA.items() if dtype == pl.String and (records[name] == "").any()]
    records = records.with_columns(pl.col(blank).replace("", None)).cast(RECORD_SCHEMA) if blank else records.cast(RECORD_SCHEMA)
    return IndexFrame(records=records, freq=freq)


def _image_publish(staging: Future) -> None:
    """Once the first build commits, its staged image is named after the index version it built."""
    try:
        staged = staging.result()
    except Exception:  # the image only saves the next run time; the build stands
        log.warning("drivers index image not staged", exc_info=True)
        return
    version = index_image.index_version()  # this transaction's: the one its commit makes current
    transaction.on_commit(lambda: index_image.image_publish(staged, version))


# Written row by row on a bulk refresh: their secondary indexes and foreign keys are dropped for
# the load and built again after it, in one pass each (a million deferred foreign-key checks and
# index insertions cost far more than one sort and one anti-join).
BULK_TABLES = ("canon.drivers_index", "canon.identity_links")


@contextmanager
def _bulk_load(cursor, tables: tuple[str, ...], *, enabled: bool, phases: dict):
    """Drop the tables' secondary indexes (those backing no constraint) and foreign keys around a
    bulk write, then create them again. Inside the caller's transaction: readers wait, nobody sees
    a table without its indexes, and a failure restores everything by rolling back."""
    if not enabled:
        yield
        return
    cursor.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = ANY(%s::regclass[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        [list(tables)],
    )
    indexes = cursor.fetchall()
    cursor.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = ANY(%s::regclass[]) AND contype = 'f'",
        [list(tables)],
    )
    foreign_keys = cursor.fetchall()
    # Django's foreign keys are deferred; checked at commit they would leave "pending trigger
    # events" that forbid CREATE INDEX in the same transaction.
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for table, name, _ in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cursor.execute(f"DROP INDEX {name}")
    yield
    started = time.monotonic()
    cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
    for _, definition in indexes:
        cursor.execute(definition)
    for table, name, definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    phases["rebuild_indexes"] = round(time.monotonic() - started, 2)


def token_delta_before(cursor) -> None:
    """Remember the name tokens the changed entries had, to subtract them from the stats."""
    cursor.execute("DROP TABLE IF EXISTS _index_old_tokens")
    cursor.execute(
        """
        CREATE TEMP TABLE _index_old_tokens ON COMMIT DROP AS
        SELECT t.token, count(*) AS n
        FROM canon.drivers_index di JOIN _index_changed c ON c.driver_id = di.driver_id,
             LATERAL unnest(di.name_tokens) AS t(token)
        GROUP BY t.token
        """
    )


def token_delta_after(cursor, *, full: bool) -> None:
    """Keep canon.name_token_stats = token counts over the index, by delta (or anew on --full)."""
    if full:
        cursor.execute("TRUNCATE canon.name_token_stats")
        cursor.execute(
            """
            INSERT INTO canon.name_token_stats (token, drivers)
            SELECT t.token, count(*) FROM canon.drivers_index di, LATERAL unnest(di.name_tokens) AS t(token)
            GROUP BY t.token
            """
        )
        return
    cursor.execute(
        """
        INSERT INTO canon.name_token_stats AS s (token, drivers)
        SELECT token, sum(n)::int FROM (
            SELECT t.token, count(*) AS n
            FROM canon.drivers_index di JOIN _index_changed c ON c.driver_id = di.driver_id,
                 LATERAL unnest(di.name_tokens) AS t(token)
            GROUP BY t.token
            UNION ALL
            SELECT token, -n FROM _index_old_tokens
        ) delta GROUP BY token
        ON CONFLICT (token) DO UPDATE SET drivers = s.drivers + EXCLUDED.drivers
        """
    )
    cursor.execute("DELETE FROM canon.name_token_stats WHERE drivers <= 0")


# The counts the matcher reads instead of counting the index each run (candidates.frequencies_load).
COUNTS_REFRESH_SQL = (
    "DELETE FROM canon.drivers_index_counts",
    "INSERT INTO canon.drivers_index_counts (id, drivers, persons) "
    "SELECT 1, count(*), count(DISTINCT person_key) FROM canon.drivers_index",
    "DELETE FROM canon.hires_per_day",
    "INSERT INTO canon.hires_per_day (park_id, hire_date, hired) SELECT park_id, hire_date, count(*) "
    "FROM canon.drivers_index WHERE park_id IS NOT NULL AND hire_date IS NOT NULL GROUP BY park_id, hire_date",
)


def counts_refresh(cursor) -> None:
    """canon.drivers_index_counts and canon.hires_per_day anew from the index (after any change to it)."""
    for statement in COUNTS_REFRESH_SQL:
        cursor.execute(statement)


def _drop_entries_of_deleted_drivers(cursor) -> int:
    """Index entries whose driver row is gone. Their person and links stay (persons are stable)."""
    cursor.execute(
        """
        DELETE FROM canon.drivers_index di
        WHERE NOT EXISTS (SELECT 1 FROM public.drivers d WHERE d.driver_id = di.driver_id)
        """
    )
    return cursor.rowcount


def index_changed_at():
    """When the index last changed (the seed job retries failed leads after that)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(indexed_at) FROM canon.drivers_index")
        return cursor.fetchone()[0]
