"""`make demo`: generate a demo park and run the whole pipeline on it, printing what happened."""

import logging
from pathlib import Path

from django.core.management.base import BaseCommand

from identity.runs import EXIT_PROBLEMS, command_exit
from recovery.demo import demo_run


class Command(BaseCommand):
    help = "Generate a demo park, import it, and run index refresh, seed, recover, reconcile and guardrails."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, help="where the demo CSVs go (default .data/demo)")
        parser.add_argument("--drivers", type=int, default=20_000)
        parser.add_argument("--leads", type=int, default=5_000)
        parser.add_argument("--seed", type=int, default=42)

    def handle(self, *args, **options):
        if options["verbosity"] < 2:
            # The report tells the story; the jobs' per-batch log lines are for operators (-v 2).
            logging.getLogger("ct4").setLevel(logging.WARNING)
        report = demo_run(out_dir=options["out"], drivers=options["drivers"], leads=options["leads"],
                          seed=options["seed"], echo=self.stdout.write)
        if not report.ok:
            command_exit(EXIT_PROBLEMS, "the demo finished, but a guardrail failed or rows were rejected (see above)")
