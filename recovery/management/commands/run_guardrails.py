"""`manage.py run_guardrails`: every guardrail in one recorded job run; exit 1 if any fails."""

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.guardrails import DEFAULT_DRAIN_N, guardrails_run_all, results_output


class Command(BaseCommand):
    help = (
        "Run every guardrail (source_pk consistency, red-KPI drain, origins, links, migrations), print each "
        "verdict and record a job run. Exit 0 when all pass, 1 when any fails."
    )

    def add_arguments(self, parser):
        parser.add_argument("--n", type=int, default=DEFAULT_DRAIN_N, help="recent matched rows the drain check reads")
        parser.add_argument("--json", action="store_true", help="print a machine-readable result")

    def handle(self, *args, **options):
        results = guardrails_run_all(n=options["n"])
        self.stdout.write(results_output(results, as_json=options["json"]))
        if not all(result.ok for result in results):
            command_exit(EXIT_PROBLEMS)
