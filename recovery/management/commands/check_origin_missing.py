"""`manage.py check_origin_missing`: ORIGIN_MISSING = 0 (no orphan origin, no matched lead without origin)."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import origin_missing_check, results_output


class Command(BaseCommand):
    help = (
        "Check ORIGIN_MISSING = 0: no origin whose lead is not linked to its person, no matched lead (queue "
        "or jobs table) whose person has no origin. Exit 0 when clean, 1 with the offenders listed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        result = origin_missing_check()
        self.stdout.write(results_output([result], as_json=options["json"]))
        if not result.ok:
            command_exit(EXIT_PROBLEMS)
