"""`manage.py validate_kpi_red_impact --limit N`: backlog before, seed, recover, backlog after, delta, reasons."""

import argparse

from identity.runs import JobCommand
from recovery.reports import impact_render, impact_validate


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of leads")
    return value


class Command(JobCommand):
    help = (
        "Measure the real impact on the red KPI: count the backlog, run seed_kpi_red_queue and "
        "recover_kpi_red_leads --limit N, count it again, and report the delta and the fail reasons. "
        "It is a real run by definition (it links leads), so there is no --dry-run."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--limit", type=positive, default=1000, help="leads to recover (default 1000)")

    def run(self, **options):
        return impact_validate(limit=options["limit"])

    def summary(self, result) -> str:
        return impact_render(result)
