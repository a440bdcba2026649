"""Upsert every red-KPI backlog lead into the recovery queue as pending."""

from identity.runs import EXIT_USAGE, JobCommand, command_exit
from recovery.jobs.seed import queue_seed
from recovery.queue import DEFAULT_BATCH


class Command(JobCommand):
    help = "Seed the red-KPI queue: backlog leads become pending; failed ones come back when due; matched stay."
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="leads per transaction (500-1000)")

    def run(self, **options):
        if not 500 <= options["batch_size"] <= 1000:
            command_exit(EXIT_USAGE, "--batch-size must be between 500 and 1000")
        return queue_seed(batch_size=options["batch_size"])

    def summary(self, result) -> str:
        return (f"seeded {result.backlog} backlog leads: {result.inserted} new, {result.reset_to_pending} back to "
                f"pending, {result.unchanged} unchanged; {result.newly_matched_elsewhere} matched elsewhere; "
                f"{result.pending} pending [{result.seconds}s]")
