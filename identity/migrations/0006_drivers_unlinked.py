"""canon.drivers_unlinked: the driver records no identity link names, kept by triggers.

`ops.v_identity_driver_unlinked_activity` used to find them with an anti-join of the whole
drivers table against every driver link: two million-row scans and a hash on each API call
(450-650 ms at a million drivers). Once the index refresh has run, almost every driver is
linked, so the set is small; triggers keep it exact whatever writes the two tables (the
importer, the refresh, the admin, a manual SQL fix):

- drivers inserted without a link join it; deleted drivers leave it; TRUNCATE drivers empties it;
- a driver link inserted removes its driver; a driver link deleted puts the driver back when no
  other link names it; TRUNCATE identity_links puts every driver back;
- a driver_id or a link's source changed by UPDATE is handled row by row (never done by the
  product; the WHEN clause keeps the trigger free for every other update).

Bulk statements are handled once per statement through transition tables, so importing or
linking a million drivers costs one set-based statement, not a million trigger calls.
Assumption: a driver row and a link naming it are not created by two concurrent transactions
(a link is made from the committed drivers index), so the two triggers never race.
"""

from django.db import migrations

FORWARD = """
CREATE TABLE canon.drivers_unlinked (driver_id text PRIMARY KEY);
COMMENT ON TABLE canon.drivers_unlinked IS
    'Driver records that no identity link names. Maintained by triggers on public.drivers and '
    'canon.identity_links (migration identity 0006); read by ops.v_identity_driver_unlinked_activity.';

CREATE FUNCTION canon.drivers_unlinked_add(ids text[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO canon.drivers_unlinked (driver_id)
    SELECT d.driver_id FROM public.drivers d
    WHERE d.driver_id = ANY(ids)
      AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                      WHERE il.source_table = 'drivers' AND il.source_pk = d.driver_id)
    ON CONFLICT DO NOTHING
$$;

-- public.drivers ------------------------------------------------------------------------
CREATE FUNCTION canon.drivers_unlinked_on_driver_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO canon.drivers_unlinked (driver_id)
    SELECT n.driver_id FROM new_rows n
    WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links il
                      WHERE il.source_table = 'drivers' AND il.source_pk = n.driver_id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_insert AFTER INSERT ON public.drivers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION canon.drivers_unlinked_on_driver_insert();

CREATE FUNCTION canon.drivers_unlinked_on_driver_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM canon.drivers_unlinked u USING old_rows o WHERE u.driver_id = o.driver_id;
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_delete AFTER DELETE ON public.drivers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION canon.drivers_unlinked_on_driver_delete();

CREATE FUNCTION canon.drivers_unlinked_on_driver_rename() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM canon.drivers_unlinked WHERE driver_id = OLD.driver_id;
    PERFORM canon.drivers_unlinked_add(ARRAY[NEW.driver_id]);
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_rename AFTER UPDATE OF driver_id ON public.drivers
    FOR EACH ROW WHEN (OLD.driver_id IS DISTINCT FROM NEW.driver_id)
    EXECUTE FUNCTION canon.drivers_unlinked_on_driver_rename();

CREATE FUNCTION canon.drivers_unlinked_on_driver_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE canon.drivers_unlinked;
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_truncate AFTER TRUNCATE ON public.drivers
    FOR EACH STATEMENT EXECUTE FUNCTION canon.drivers_unlinked_on_driver_truncate();

-- canon.identity_links ------------------------------------------------------------------
CREATE FUNCTION canon.drivers_unlinked_on_link_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM canon.drivers_unlinked u USING new_rows n
    WHERE n.source_table = 'drivers' AND u.driver_id = n.source_pk;
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_link_insert AFTER INSERT ON canon.identity_links
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION canon.drivers_unlinked_on_link_insert();

CREATE FUNCTION canon.drivers_unlinked_on_link_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM canon.drivers_unlinked_add(ARRAY(
        SELECT o.source_pk FROM old_rows o WHERE o.source_table = 'drivers'));
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_link_delete AFTER DELETE ON canon.identity_links
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION canon.drivers_unlinked_on_link_delete();

CREATE FUNCTION canon.drivers_unlinked_on_link_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.source_table = 'drivers' THEN
        DELETE FROM canon.drivers_unlinked WHERE driver_id = NEW.source_pk;
    END IF;
    IF OLD.source_table = 'drivers' THEN
        PERFORM canon.drivers_unlinked_add(ARRAY[OLD.source_pk]);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_link_move AFTER UPDATE OF source_table, source_pk ON canon.identity_links
    FOR EACH ROW WHEN ((OLD.source_table, OLD.source_pk) IS DISTINCT FROM (NEW.source_table, NEW.source_pk))
    EXECUTE FUNCTION canon.drivers_unlinked_on_link_move();

CREATE FUNCTION canon.drivers_unlinked_on_link_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO canon.drivers_unlinked (driver_id) SELECT driver_id FROM public.drivers ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER drivers_unlinked_link_truncate AFTER TRUNCATE ON canon.identity_links
    FOR EACH STATEMENT EXECUTE FUNCTION canon.drivers_unlinked_on_link_truncate();

-- What is there already.
INSERT INTO canon.drivers_unlinked (driver_id)
SELECT d.driver_id FROM public.drivers d
WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links il
                  WHERE il.source_table = 'drivers' AND il.source_pk = d.driver_id);
ANALYZE canon.drivers_unlinked;
"""

BACKWARD = """
DROP TRIGGER IF EXISTS drivers_unlinked_insert ON public.drivers;
DROP TRIGGER IF EXISTS drivers_unlinked_delete ON public.drivers;
DROP TRIGGER IF EXISTS drivers_unlinked_rename ON public.drivers;
DROP TRIGGER IF EXISTS drivers_unlinked_truncate ON public.drivers;
DROP TRIGGER IF EXISTS drivers_unlinked_link_insert ON canon.identity_links;
DROP TRIGGER IF EXISTS drivers_unlinked_link_delete ON canon.identity_links;
DROP TRIGGER IF EXISTS drivers_unlinked_link_move ON canon.identity_links;
DROP TRIGGER IF EXISTS drivers_unlinked_link_truncate ON canon.identity_links;
DROP FUNCTION IF EXISTS canon.drivers_unlinked_on_driver_insert(), canon.drivers_unlinked_on_driver_delete(),
    canon.drivers_unlinked_on_driver_rename(), canon.drivers_unlinked_on_driver_truncate(),
    canon.drivers_unlinked_on_link_insert(), canon.drivers_unlinked_on_link_delete(),
    canon.drivers_unlinked_on_link_move(), canon.drivers_unlinked_on_link_truncate(),
    canon.drivers_unlinked_add(text[]);
DROP TABLE IF EXISTS canon.drivers_unlinked;
"""


class Migration(migrations.Migration):
    dependencies = [("identity", "0005_name_block_function")]

    operations = [migrations.RunSQL(sql=FORWARD, reverse_sql=BACKWARD)]
