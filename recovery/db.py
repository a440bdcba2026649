"""Rows of a raw SQL read as dicts: what the read modules (reports, selectors, dashboard, review) share."""

from __future__ import annotations

from django.db import connection


def sql_rows(sql: str, params=None) -> list[dict]:
    """Run a read and return its rows as dicts keyed by column name."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
