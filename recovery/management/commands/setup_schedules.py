"""Create or update the django-q2 schedules of SPEC §7 by name; remove ours that are no longer declared."""

import json

from django.core.management.base import BaseCommand

from recovery.schedules import schedules_sync


class Command(BaseCommand):
    help = ("Create or update the ct4 schedules (seed hourly, recover every 2 h, reconcile every 15 min, "
            "retry daily 02:00, guardrails hourly; America/Lima cron). Idempotent. Run `manage.py qcluster` "
            "to execute them.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
        parser.add_argument("--json", action="store_true", help="print the changes as JSON")

    def handle(self, *args, **options):
        changes = schedules_sync(dry_run=options["dry_run"])
        if options["json"]:
            self.stdout.write(json.dumps([c.as_dict() for c in changes]))
            return
        verb = "would " if options["dry_run"] else ""
        for change in changes:
            self.stdout.write(f"{verb}{change.action:<9} {change.name:<42} {change.detail}")
        changed = sum(c.action != "unchanged" for c in changes)
        self.stdout.write(f"{changed} change(s){' (dry run: nothing written)' if options['dry_run'] else ''}")
