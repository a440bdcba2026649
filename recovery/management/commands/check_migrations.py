"""`manage.py check_migrations`: one consistent migration graph, applied, with no model change left out."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import migrations_check, results_output


class Command(BaseCommand):
    help = (
        "Check one leaf migration per app, no unapplied migration, and no model change without a migration "
        "(makemigrations --check). Exit 0 when clean, 1 with the offenders listed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        result = migrations_check()
        self.stdout.write(results_output([result], as_json=options["json"]))
        if not result.ok:
            command_exit(EXIT_PROBLEMS)
