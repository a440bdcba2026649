"""The SQL twins of identity.normalize, in schema canon, generated from that module's constants.

Changing a normalization constant or rule means a new migration that runs
`sql_create_functions()` again (CREATE OR REPLACE), or databases keep the old keys.
"""

from django.db import migrations

from identity.normalize import sql_create_functions, sql_drop_functions


class Migration(migrations.Migration):
    dependencies = [("identity", "0001_initial")]

    operations = [
        migrations.RunSQL(sql=sql_create_functions(), reverse_sql=sql_drop_functions()),
    ]
