"""canon.name_block(tokens, cap): the drivers carrying every token, planned per call.

The matcher asks hundreds of name blocks per batch. As one UNION ALL branch each, the batch's
statement took ~200 ms to plan and its token arrays ~0.3 s to send; inside a plain LATERAL the
planner cannot see the tokens and does not use the GIN index. EXECUTE ... USING plans each
block with its tokens known, so every block still uses the GIN index, and the batch is one
short statement.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION canon.name_block(tokens text[], cap integer)
RETURNS TABLE (driver_id text, person_key uuid)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT di.driver_id, di.person_key FROM canon.drivers_index di WHERE di.name_tokens @> $1 LIMIT $2'
        USING tokens, cap;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("identity", "0004_covering_indexes")]

    operations = [
        migrations.RunSQL(sql=CREATE, reverse_sql="DROP FUNCTION IF EXISTS canon.name_block(text[], integer)"),
    ]
