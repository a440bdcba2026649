"""drivers_index.hire_date: the recruitment evidence (a lead hired in its park days after applying).

Entries already indexed get their driver's hire_date here, so no full refresh is needed.
"""

from django.db import migrations, models

POPULATE = """
UPDATE canon.drivers_index di SET hire_date = d.hire_date
FROM public.drivers d
WHERE d.driver_id = di.driver_id AND d.hire_date IS NOT NULL
"""


class Migration(migrations.Migration):

    dependencies = [
        ('identity', '0006_drivers_unlinked'),
    ]

    operations = [
        migrations.AddField(
            model_name='driverindexentry',
            name='hire_date',
            field=models.DateField(blank=True, null=True),
        ),
        migrations.RunSQL(sql=POPULATE, reverse_sql=migrations.RunSQL.noop),
    ]
