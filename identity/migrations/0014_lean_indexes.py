# Two indexes the first build of the drivers index rebuilt over a million rows, that no query needs.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('identity', '0013_drivers_changed'),
    ]

    operations = [
        # The primary key's text_pattern_ops twin serves LIKE 'prefix%' searches, which nothing runs on
        # driver_id (the admin searches it exactly).
        migrations.RunSQL(
            "DROP INDEX IF EXISTS canon.drivers_index_driver_id_5a8e1ec1_like",
            "CREATE INDEX IF NOT EXISTS drivers_index_driver_id_5a8e1ec1_like "
            "ON canon.drivers_index (driver_id text_pattern_ops)",
        ),
        # A link's person: identity_link_person_cover_idx leads with person_key. Written as SQL: Django's
        # own AlterField names the constraint without its schema (SET CONSTRAINTS), which fails in canon.
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(
                "DROP INDEX IF EXISTS canon.identity_links_person_key_f6fd7c34",
                "CREATE INDEX IF NOT EXISTS identity_links_person_key_f6fd7c34 ON canon.identity_links (person_key)",
            )],
            state_operations=[migrations.AlterField(
                model_name='identitylink',
                name='person',
                field=models.ForeignKey(db_column='person_key', db_index=False,
                                        on_delete=django.db.models.deletion.PROTECT, related_name='links',
                                        to='identity.person'),
            )],
        ),
    ]
