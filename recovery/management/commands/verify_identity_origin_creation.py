"""`manage.py verify_identity_origin_creation`: every person with a lead link has an origin naming its earliest lead."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import identity_origin_creation_verify, results_output


class Command(BaseCommand):
    help = (
        "Check that every person with a lead link has an origin, and that it names the earliest linked lead "
        "(created_at, then source_pk). Exit 0 when clean, 1 with the offenders listed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        result = identity_origin_creation_verify()
        self.stdout.write(results_output([result], as_json=options["json"]))
        if not result.ok:
            command_exit(EXIT_PROBLEMS)
