"""canon.drivers_unlinked's delete triggers join their transition table with hash joins, whatever the statistics.

A statement that links (or deletes) many drivers deletes them from canon.drivers_unlinked by a join with
its transition table. The planner chose that join from canon.drivers_unlinked's statistics, and those are
stale by design: the table is emptied by the very statements it is kept by (a first build links every
driver, after which autovacuum records it empty), and refilled by the next import. Believing it empty,
the planner scanned it once per new link: a first build of a million drivers sat in its COPY of driver
links for over ten minutes instead of two seconds. With nested loops off inside the functions (a SET
clause: the caller's setting is back when they return) the join is a hash join, linear at every size;
a statement with no driver link (every lead link the matcher writes) returns before any join.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION canon.drivers_unlinked_on_link_insert() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE source_table = 'drivers') THEN
        RETURN NULL;
    END IF;
    DELETE FROM canon.drivers_unlinked u USING new_rows n
    WHERE n.source_table = 'drivers' AND u.driver_id = n.source_pk;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION canon.drivers_unlinked_on_driver_delete() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off AS $$
BEGIN
    DELETE FROM canon.drivers_unlinked u USING old_rows o WHERE u.driver_id = o.driver_id;
    RETURN NULL;
END $$;
"""

BACKWARD = """
CREATE OR REPLACE FUNCTION canon.drivers_unlinked_on_link_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM canon.drivers_unlinked u USING new_rows n
    WHERE n.source_table = 'drivers' AND u.driver_id = n.source_pk;
    RETURN NULL;
END $$;
ALTER FUNCTION canon.drivers_unlinked_on_link_insert() RESET ALL;

CREATE OR REPLACE FUNCTION canon.drivers_unlinked_on_driver_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM canon.drivers_unlinked u USING old_rows o WHERE u.driver_id = o.driver_id;
    RETURN NULL;
END $$;
ALTER FUNCTION canon.drivers_unlinked_on_driver_delete() RESET ALL;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("identity", "0017_drivers_index_version"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
