"""COPY in and out of frames (identity.bulk), on PostgreSQL."""

import json
from datetime import date

import polars as pl
import pytest
from django.db import connection, transaction

from identity import bulk

SCHEMA = {"id": pl.Int64, "name": pl.String, "tokens": pl.List(pl.String), "day": pl.Date}


@pytest.mark.django_db
def test_a_frame_goes_in_slice_by_slice_and_comes_back_whole(monkeypatch):
    monkeypatch.setattr(bulk, "SEND_ROWS", 2)  # five rows: three slices, sent by the writer thread
    frame = pl.DataFrame({
        "id": [1, 2, 3, 4, 5],
        "name": ["quispe", None, "o'brien, jr", "ñahui", ""],
        "tokens": [["juan", "carlos"], [], ["luz"], ["a", "b", "c"], ["rosa"]],
        "day": [date(1990, 1, 2), None, date(2000, 2, 29), date(1985, 12, 31), date(2024, 6, 1)],
    }, schema=SCHEMA)
    with connection.cursor() as cursor:
        bulk.staging_create(cursor, "_bulk_test", {"id": "bigint", "name": "text", "tokens": "text[]", "day": "date"})
        assert bulk.frame_copy(cursor, "_bulk_test", frame) == 5
        back = bulk.frame_read("SELECT id, name, tokens, day FROM _bulk_test ORDER BY id", schema=SCHEMA, cursor=cursor)
    assert back.equals(frame)  # NULL stays NULL and "" stays "" (written quoted), lists and dates intact


@pytest.mark.django_db
def test_a_few_rows_fetched_are_the_frame_copy_reads():
    # frame_fetch serves a lead arriving now: the same frame as frame_read's COPY, NULL and "" apart, an
    # empty list and a missing date intact, a uuid read as text.
    frame = pl.DataFrame({
        "id": [1, 2, 3], "name": ["quispe", None, ""], "tokens": [["juan", "carlos"], [], ["luz"]],
        "day": [date(1990, 1, 2), None, date(2000, 2, 29)],
        "person": ["7c9e6679-7425-40de-944b-e07fc1f90ae7", None, "00000000-0000-0000-0000-000000000001"],
    }, schema={**SCHEMA, "person": pl.String})
    schema = dict(frame.schema)
    with connection.cursor() as cursor:
        bulk.staging_create(cursor, "_bulk_test", {"id": "bigint", "name": "text", "tokens": "text[]", "day": "date",
                                                   "person": "uuid"})
        bulk.frame_copy(cursor, "_bulk_test", frame)
        query = "SELECT id, name, tokens, day, person::text FROM _bulk_test WHERE id = ANY(%s) ORDER BY id"
        copied = bulk.frame_read(query, [[1, 2, 3]], schema=schema, cursor=cursor)
        fetched = bulk.frame_fetch(query, [[1, 2, 3]], schema=schema)
        assert bulk.frame_fetch(query, [[]], schema=schema).equals(frame.clear())
    assert copied.equals(frame)
    assert fetched.equals(frame)


@pytest.mark.django_db
def test_frames_made_one_at_a_time_go_in_and_a_bad_row_fails_the_caller(monkeypatch):
    monkeypatch.setattr(bulk, "SEND_ROWS", 2)
    made = []

    def frames(last_day: str):
        for first in (1, 4, 7):
            made.append(first)
            yield pl.DataFrame({"id": [first, first + 1, first + 2], "day": ["2024-01-01", "2024-01-02",
                                                                          last_day if first == 7 else "2024-01-03"]})

    with connection.cursor() as cursor:
        bulk.staging_create(cursor, "_bulk_test", {"id": "bigint", "day": "date"})
        assert bulk.frames_copy(cursor, "_bulk_test", frames("2024-01-03")) == 9
        cursor.execute("SELECT array_agg(id ORDER BY id) FROM _bulk_test")
        assert cursor.fetchone()[0] == list(range(1, 10))
        cursor.execute("TRUNCATE _bulk_test")
        # The last slice's bad date, sent by the writer thread, fails the caller's statement.
        with pytest.raises(Exception, match="date"), transaction.atomic():
            bulk.frames_copy(cursor, "_bulk_test", frames("not a date"))
        cursor.execute("SELECT count(*) FROM _bulk_test")
        assert cursor.fetchone()[0] == 0
    assert made == [1, 4, 7, 1, 4, 7]


@pytest.mark.django_db
def test_the_writer_thread_queue_is_the_bounded_one_psycopg_uses():
    # _AheadWriter replaces psycopg's private queue (128 MB) by one of AHEAD_BYTES: a psycopg whose writer
    # no longer reads `_queue` would silently queue a whole build's CSV again.
    from psycopg.copy import QueuedLibpqWriter  # noqa: PLC0415 - the class whose private name is relied on

    assert "_queue" in QueuedLibpqWriter.write.__code__.co_names
    assert "_queue" in QueuedLibpqWriter.worker.__code__.co_names
    with connection.cursor() as cursor:
        writer = bulk._AheadWriter(bulk._raw(cursor))
    assert writer._queue.maxsize * bulk.MAX_BUFFER_SIZE <= bulk.AHEAD_BYTES


@pytest.mark.django_db
@pytest.mark.parametrize("values, sql_type", [
    (["51987654321", "+51987654321", "ABC123"], "text"),
    ([], "text"),
    (["a b", "c"], "text"),  # a space inside a value: sent as a list, not split
    (["", "x"], "text"),  # an empty value would vanish in the split
    ([""], "text"),
    (["2024-02-29", "1990-01-01"], "date"),
    (["6f1c3e0a-3c1e-4f8e-9a51-0d2a8f1b7c11"], "uuid"),
    (["ana maria", "rosa"], "text,"),  # joined by commas (name blocks): spaces inside are kept
    (["ana maria", "luz,flor"], "text,"),  # ... and a comma inside goes as a list
])
def test_an_array_parameter_arrives_as_the_values_it_was_given(values, sql_type):
    sql_type, sep = (sql_type[:-1], ",") if sql_type.endswith(",") else (sql_type, " ")
    array, param = bulk.array_param(values, sql_type, sep=sep)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT v::text FROM unnest({array}) WITH ORDINALITY AS a(v, i) ORDER BY i", [param])
        assert [row[0] for row in cursor.fetchall()] == values
    # The same through COPY, whose parameters psycopg binds on the client.
    got = bulk.frame_read(f"SELECT v::text FROM unnest({array}) WITH ORDINALITY AS a(v, i) ORDER BY i", [param],
                          schema={"v": pl.String})
    assert got["v"].fill_null("").to_list() == values


@pytest.mark.django_db
@pytest.mark.parametrize("rows", [3, bulk.PARAM_ROWS + 1])  # array parameters; a staging table
def test_a_statement_reads_a_frames_rows_alike_from_parameters_and_from_a_staging_table(rows):
    columns = {"source_pk": "text", "person_key": "uuid", "score": "float8", "details": "jsonb"}
    frame = pl.DataFrame({
        "source_pk": [f"L{i}" if i != 1 else "o'brien, \"jr\"" for i in range(rows)],
        "person_key": [None if i == 2 else f"00000000-0000-4000-8000-{i:012d}" for i in range(rows)],
        "score": [None if i == 0 else i / 3 for i in range(rows)],
        "details": ['{"why": "ñahui, \\"quoted\\"", "n": [1, 2]}' if i % 2 else None for i in range(rows)],
    })
    with connection.cursor() as cursor:
        source, params = bulk.rows_source(cursor, "_rows_test", frame, columns, "r")
        assert (params == []) == (rows > bulk.PARAM_ROWS)
        back = bulk.frame_read(f"SELECT r.source_pk, r.person_key::text, r.score, r.details::text FROM {source}",
                               params, schema=dict(zip(columns, [pl.String, pl.String, pl.Float64, pl.String])),
                               cursor=cursor)
    def rows_of(f: pl.DataFrame) -> list:  # jsonb orders an object's keys its own way
        return sorted((pk, person, score, details and json.loads(details)) for pk, person, score, details in f.rows())

    assert rows_of(back) == rows_of(frame)
