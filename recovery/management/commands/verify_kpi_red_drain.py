"""`manage.py verify_kpi_red_drain --n N`: 0 % of matched queue rows may still be in the red backlog."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import DEFAULT_DRAIN_N, kpi_red_drain_verify, results_output


class Command(BaseCommand):
    help = (
        "Check that no matched queue row is still in ops.v_cabinet_kpi_red_backlog: the N most recently "
        "matched, and a full count over all of them. Exit 0 when clean, 1 with the leaked leads listed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--n", type=int, default=DEFAULT_DRAIN_N,
                            help=f"most recently matched rows to check (default {DEFAULT_DRAIN_N})")
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        result = kpi_red_drain_verify(n=options["n"])
        self.stdout.write(results_output([result], as_json=options["json"]))
        if not result.ok:
            command_exit(EXIT_PROBLEMS)
