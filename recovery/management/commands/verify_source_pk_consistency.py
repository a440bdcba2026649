"""`manage.py verify_source_pk_consistency`: every lead reference uses COALESCE(external_id::text, id::text)."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import results_output, source_pk_consistency_verify


class Command(BaseCommand):
    help = (
        "Check that queue, links, jobs, unmatched, origins and claims name leads by "
        "COALESCE(external_id::text, id::text) (flags the id-instead-of-external_id cast). Exit 0 when clean,"
        " 1 with the offenders listed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        result = source_pk_consistency_verify()
        self.stdout.write(results_output([result], as_json=options["json"]))
        if not result.ok:
            command_exit(EXIT_PROBLEMS)
