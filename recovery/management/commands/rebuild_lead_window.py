"""`manage.py rebuild_lead_window [--dry-run]`: recompute ops.lead_window_14d from its definition."""

from django.core.management.base import BaseCommand

from recovery.lead_window import lead_window_rebuild


class Command(BaseCommand):
    help = (
        "Recompute ops.lead_window_14d (each linked lead's drivers, trips in its claim window and claimed "
        "milestones, kept by triggers) from its definition: the repair when check_identity_links_origins "
        "finds it out of step."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count the rows that differ; write nothing")

    def handle(self, *args, **options):
        result = lead_window_rebuild(dry_run=options["dry_run"])
        if result["dry_run"]:
            self.stdout.write(f"ops.lead_window_14d: {result['differing']} rows differ from the direct computation "
                              "(dry run, nothing written)")
        else:
            self.stdout.write(f"ops.lead_window_14d: {result['differing']} rows differed from the direct "
                              f"computation; rebuilt, {result['rows']} rows")
