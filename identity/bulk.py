"""Bulk reads and writes between PostgreSQL and Polars frames, by COPY (CSV over the wire).

A frame goes in with one COPY into a temporary staging table and then one set-based statement;
a query comes out with one COPY into a frame. Text arrays travel in PostgreSQL's own literal form
('{a,b}'), which our normalized tokens ([a-z]+) never need to quote.
"""

from __future__ import annotations

import io

import polars as pl
from django.db import connection

COPY_ROWS = 100_000


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


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """Lists as PostgreSQL array literals; everything else as Polars writes it."""
    lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
    return frame.with_columns([
        pl.concat_str(pl.lit("{"), pl.col(name).list.join(","), pl.lit("}")).alias(name) for name in lists
    ]) if lists else frame


def frame_copy(cursor, table: str, frame: pl.DataFrame) -> int:
    """COPY the frame's rows into `table` (its columns named as the frame's). Returns rows.

    Written COPY_ROWS rows at a time: the CSV of a million index rows is never whole in memory,
    and PostgreSQL parses one slice while the next is formatted."""
    if not frame.height:
        return 0
    columns = ", ".join(f'"{name}"' for name in frame.columns)
    with _raw(cursor).copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
        for start in range(0, frame.height, COPY_ROWS):
            buffer = io.BytesIO()
            _csv_ready(frame.slice(start, COPY_ROWS)).write_csv(buffer, include_header=False, null_value="",
                                                                quote_style="necessary")
            copy.write(buffer.getbuffer())
    return frame.height


def staging_create(cursor, name: str, columns: dict[str, str]) -> None:
    """A temporary table for one transaction's bulk write (dropped at commit)."""
    cursor.execute(f"DROP TABLE IF EXISTS {name}")
    spec = ", ".join(f"{column} {sql_type}" for column, sql_type in columns.items())
    cursor.execute(f"CREATE TEMP TABLE {name} ({spec}) ON COMMIT DROP")
