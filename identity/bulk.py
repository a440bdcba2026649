"""Bulk reads and writes between PostgreSQL and Polars frames, by COPY (CSV over the wire).

A frame goes in with one COPY into a temporary staging table and then one set-based statement (a few
rows as array parameters instead: rows_source); a query comes out with one COPY into a frame. Text
arrays travel in PostgreSQL's own literal form ('{a,b}'), which our normalized tokens ([a-z]+) never
need to quote.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
from queue import Queue

import polars as pl
from django.db import connection
from psycopg._copy_base import MAX_BUFFER_SIZE
from psycopg.copy import QueuedLibpqWriter

COPY_ROWS = 100_000
# A bulk write is formatted and sent SEND_ROWS rows at a time (about 8 MB of CSV for index rows), with at
# most AHEAD_BYTES formatted but not yet sent.
SEND_ROWS = 25_000
AHEAD_BYTES = 8 * 1024 * 1024
# Up to this many rows, a write reads them from array parameters instead of a staging table: creating the
# temporary table (its catalog rows) and a COPY cost a lead arriving now ~5 ms of its ~11 ms write.
PARAM_ROWS = 32


def _raw(cursor):
    """The psycopg cursor under Django's wrapper (COPY is psycopg's, not the DB-API's)."""
    return getattr(cursor, "cursor", cursor)


def frame_read(query: str, params: list | dict | None = None, *, schema: dict[str, pl.DataType],
               cursor=None) -> pl.DataFrame:
    """Run `query` through COPY ... TO STDOUT and parse it into a frame of `schema`'s columns
    (the query's columns, in that order). List(String) columns arrive as text arrays."""
    buffer = io.BytesIO()

    def run(cur) -> None:
        with _raw(cur).copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", params) as copy:
            for chunk in copy:
                buffer.write(chunk)

    if cursor is None:
        with connection.cursor() as cur:
            run(cur)
    else:
        run(cursor)
    names = list(schema)
    if not buffer.tell():
        return pl.DataFrame(schema=schema)
    buffer.seek(0)
    read_schema = {name: pl.String for name in names}
    frame = pl.read_csv(buffer, has_header=False, new_columns=names, schema=read_schema)
    buffer.close()  # the text is in the frame now: free it before parsing (a million index rows: ~200 MB)
    return frame.with_columns([_parse(name, dtype) for name, dtype in schema.items()])


def frame_fetch(query: str, params: list | dict | None = None, *, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """frame_read for a read of a few rows (a lead arriving now): the rows fetched as Python values instead
    of COPY's CSV, which costs ~1-2 ms a call to parse whatever its rows (0.6-1.1 ms this way for a dozen
    index records, measured on one CPU at 1M). The query's columns must already be of `schema`'s types as
    psycopg returns them: a uuid selected as text (`person_key::text`), a text[] as a list."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return pl.DataFrame(cursor.fetchall(), schema=schema, orient="row")


def _parse(name: str, dtype) -> pl.Expr:
    column = pl.col(name)
    if dtype == pl.List(pl.String):
        inner = column.str.strip_chars("{}")
        return pl.when(inner == "").then(pl.lit([], dtype=dtype)).otherwise(inner.str.split(",")).alias(name)
    if dtype == pl.Date:
        return column.str.to_date("%Y-%m-%d").alias(name)
    if dtype == pl.Boolean:
        return (column == "t").alias(name)
    return column.cast(dtype).alias(name)


def array_param(values: list[str], sql_type: str = "text", sep: str = " ") -> tuple[str, str | list[str]]:
    """An array of `sql_type` as one query parameter: (the SQL to put in place of the array, its
    parameter). Normally the values joined by `sep` and split again by PostgreSQL: psycopg quotes a
    list's strings one by one in Python (0.25 s of the 100,000 one-typo keys of 1,000 leads, about a
    tenth of deciding them); one string is quoted at once. Values holding `sep`, and an empty value
    (which would not survive the split), go as a list."""
    joined = sep.join(values)
    if joined.count(sep) == max(len(values) - 1, 0) and "" not in values:
        return f"string_to_array(%s, '{sep}')::{sql_type}[]", joined
    return f"%s::{sql_type}[]", values


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """Lists as PostgreSQL array literals; everything else as Polars writes it."""
    lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
    return frame.with_columns([
        pl.concat_str(pl.lit("{"), pl.col(name).list.join(","), pl.lit("}")).alias(name) for name in lists
    ]) if lists else frame


def frame_copy(cursor, table: str, frame: pl.DataFrame) -> int:
    """COPY the frame's rows into `table` (its columns named as the frame's). Returns rows.

    Written SEND_ROWS rows at a time: the CSV of a million index rows is never whole in memory."""
    return frames_copy(cursor, table, [frame], ahead=frame.height > SEND_ROWS)


class _AheadWriter(QueuedLibpqWriter):
    """psycopg's QueuedLibpqWriter (a thread sends while the caller formats), with a queue of AHEAD_BYTES:
    its own queue holds 128 MB, all of a million index rows' CSV when PostgreSQL parses slower than
    Polars formats (a first build's peak memory grew by up to 170 MB). It replaces psycopg's private
    `_queue` (psycopg is pinned; identity/tests/test_bulk.py fails if its writer stops reading that name)."""

    def __init__(self, cursor):
        super().__init__(cursor)
        self._queue = Queue(maxsize=max(1, AHEAD_BYTES // MAX_BUFFER_SIZE))  # items of at most MAX_BUFFER_SIZE


def frames_copy(cursor, table: str, frames: Iterable[pl.DataFrame], *, ahead: bool = True) -> int:
    """COPY the rows of several frames with the same columns into `table`, in one statement. Returns rows.

    `frames` may be made one at a time (a generator): a million rows of a bulk write are never whole in
    memory. Each slice of SEND_ROWS rows is formatted while a writer thread sends the ones before
    (_AheadWriter), so PostgreSQL parses while Polars formats: a million index rows took 0.7-2 s less than
    formatting and sending in turn, and a 1M first build 5-8 s less with the changes of migration 0019.
    `ahead=False` sends from the caller's thread: a single slice (a batch's rows) has nothing to overlap."""
    frames = (frame for frame in frames if frame.height)
    first = next(frames, None)
    if first is None:
        return 0
    raw, rows = _raw(cursor), 0
    columns = ", ".join(f'"{name}"' for name in first.columns)
    with raw.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", writer=_AheadWriter(raw) if ahead else None) as copy:
        for frame in itertools.chain([first], frames):
            for start in range(0, frame.height, SEND_ROWS):
                buffer = io.BytesIO()
                _csv_ready(frame.slice(start, SEND_ROWS)).write_csv(buffer, include_header=False, null_value="",
                                                                    quote_style="necessary")
                copy.write(buffer.getbuffer())
            rows += frame.height
    return rows


def staging_create(cursor, name: str, columns: dict[str, str]) -> None:
    """A temporary table for one transaction's bulk write (dropped at commit)."""
    cursor.execute(f"DROP TABLE IF EXISTS {name}")
    spec = ", ".join(f"{column} {sql_type}" for column, sql_type in columns.items())
    cursor.execute(f"CREATE TEMP TABLE {name} ({spec}) ON COMMIT DROP")


def rows_source(cursor, name: str, frame: pl.DataFrame, columns: dict[str, str], alias: str) -> tuple[str, list]:
    """Where one statement reads a frame's rows (`columns`: name -> SQL type): the SQL to put after FROM,
    naming the rows `alias`, and its parameters. Up to PARAM_ROWS rows, one array parameter per column
    (`unnest`); more, a staging table `name` filled by COPY (staging_create, frame_copy)."""
    if frame.height <= PARAM_ROWS:
        arrays = ", ".join(f"%s::{sql_type}[]" for sql_type in columns.values())
        return (f"unnest({arrays}) AS {alias}({', '.join(columns)})",
                [frame[column].to_list() for column in columns])
    staging_create(cursor, name, columns)
    frame_copy(cursor, name, frame.select(list(columns)))
    return f"{name} {alias}", []
