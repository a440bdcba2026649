"""`manage.py check_identity_links_origins`: integrity of links against persons, origins and matched rows."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import identity_links_origins_check, results_output


class Command(BaseCommand):
    help = (
        "Check links name registered persons, lead links have origins, matched jobs / queue rows have "
        "links (the runbook's matched_no_link query), and the trigger-kept tables canon.drivers_unlinked and "
        "ops.lead_window_14d equal their direct computation. Exit 0 when clean, 1 with the offenders listed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        result = identity_links_origins_check()
        self.stdout.write(results_output([result], as_json=options["json"]))
        if not result.ok:
            command_exit(EXIT_PROBLEMS)
