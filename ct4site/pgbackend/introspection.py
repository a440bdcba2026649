"""Introspection that lists `canon`/`ops` tables as `schema"."name` and can look inside them."""

from contextlib import contextmanager

from django.db.backends.base.introspection import TableInfo
from django.db.backends.postgresql.introspection import (
    DatabaseIntrospection as PostgresIntrospection,
)

EXTRA_SCHEMAS = ("canon", "ops")


def split_qualified(table_name: str) -> tuple[str | None, str]:
    """'canon"."identity_links' or '"ops"."v_x"' -> ('canon', 'identity_links')."""
    name = table_name.strip('"')
    if '"."' in name:
        schema, _, bare = name.partition('"."')
        return schema, bare
    return None, table_name


@contextmanager
def _schema_first(cursor, schema: str | None):
    """Put `schema` first on the search path, so pg_table_is_visible() finds its tables."""
    if schema is None:
        yield
        return
    cursor.execute("SELECT current_setting('search_path')")
    previous = cursor.fetchone()[0]
    cursor.execute("SELECT set_config('search_path', %s, false)", [f"{schema}, {previous}"])
    try:
        yield
    finally:
        cursor.execute("SELECT set_config('search_path', %s, false)", [previous])


class DatabaseIntrospection(PostgresIntrospection):
    def get_table_list(self, cursor):
        tables = super().get_table_list(cursor)
        cursor.execute(
            """
            SELECT n.nspname, c.relname,
                   CASE WHEN c.relkind IN ('m', 'v') THEN 'v' ELSE 't' END
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname = ANY(%s)
            """,
            [list(EXTRA_SCHEMAS)],
        )
        tables += [TableInfo(f'{schema}"."{name}', kind) for schema, name, kind in cursor.fetchall()]
        return tables

    def _in_schema(self, method, cursor, table_name, *args):
        schema, bare = split_qualified(table_name)
        with _schema_first(cursor, schema):
            return method(cursor, bare, *args)

    def get_table_description(self, cursor, table_name):
        return self._in_schema(super().get_table_description, cursor, table_name)

    def get_sequences(self, cursor, table_name, table_fields=()):
        return self._in_schema(super().get_sequences, cursor, table_name, table_fields)

    def get_relations(self, cursor, table_name):
        return self._in_schema(super().get_relations, cursor, table_name)

    def get_constraints(self, cursor, table_name):
        return self._in_schema(super().get_constraints, cursor, table_name)
