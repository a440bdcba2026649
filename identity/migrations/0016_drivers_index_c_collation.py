# The drivers index's keys and tokens in the "C" collation (models.KEY_COLLATION): one ALTER TABLE,
# so one rewrite of the table and of its indexes (Django's AlterField would rewrite it once per column).

import django.contrib.postgres.fields
from django.db import migrations, models

TEXT = ("driver_id", "park_id", "phone", "document", "license_document", "doc_key", "email", "plate", "name_key")
TOKENS = ("given_tokens", "surname_tokens", "name_tokens")


def _alter(collation: str) -> str:
    columns = [f'ALTER COLUMN {c} TYPE text COLLATE "{collation}"' for c in TEXT]
    columns += [f'ALTER COLUMN {c} TYPE text[] COLLATE "{collation}"' for c in TOKENS]
    return "ALTER TABLE canon.drivers_index " + ", ".join(columns)


def _field(name: str) -> models.Field:
    if name in TOKENS:
        return django.contrib.postgres.fields.ArrayField(base_field=models.TextField(db_collation='C'),
                                                         default=list, size=None)
    if name == "driver_id":
        return models.TextField(db_collation='C', primary_key=True, serialize=False)
    return models.TextField(blank=True, db_collation='C', null=True)


class Migration(migrations.Migration):

    dependencies = [
        ('identity', '0015_match_share'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(_alter("C"), _alter("default"))],
            state_operations=[migrations.AlterField(model_name='driverindexentry', name=name, field=_field(name))
                              for name in (*TEXT, *TOKENS)],
        ),
    ]
