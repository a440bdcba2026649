"""COPY in and out of frames (identity.bulk), on PostgreSQL."""

from datetime import date

import polars as pl
import pytest
from django.db import connection

from identity import bulk

SCHEMA = {"id": pl.Int64, "name": pl.String, "tokens": pl.List(pl.String), "day": pl.Date}


@pytest.mark.django_db
def test_a_frame_goes_in_slice_by_slice_and_comes_back_whole(monkeypatch):
    monkeypatch.setattr(bulk, "COPY_ROWS", 2)  # five rows: three slices
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
