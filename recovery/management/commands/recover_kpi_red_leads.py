"""Drain the red-KPI queue: match pending leads, link them with their origin, mark matched or failed."""

from identity.runs import EXIT_USAGE, JobCommand, command_exit
from recovery.jobs.recover import BATCH, queue_recover


class Command(JobCommand):
    help = "Recover red-KPI leads from the queue (high risk and newest first); safe to run in parallel."
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--limit", type=int, help="at most this many leads in this run (all workers together)")
        parser.add_argument("--workers", type=int, default=1, help="worker processes draining the queue together")
        parser.add_argument("--batch-size", type=int, default=BATCH,
                            help=f"leads per transaction (500-1000, default {BATCH})")

    def run(self, **options):
        if not 500 <= options["batch_size"] <= 1000 or options["workers"] < 1 or (options["limit"] or 0) < 0:
            command_exit(EXIT_USAGE, "--batch-size must be 500-1000, --workers >= 1, --limit >= 0")
        if options["dry_run"] and options["workers"] > 1:
            # Worker processes commit on connections of their own: only one worker can be rolled back.
            command_exit(EXIT_USAGE, "--dry-run runs one worker (leave out --workers)")
        return queue_recover(limit=options["limit"], workers=options["workers"], batch_size=options["batch_size"])

    def summary(self, result) -> str:
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(result.by_reason.items())) or "none"
        return (f"recovered {result.processed} leads: {result.matched} matched ({result.already_linked} already "
                f"linked elsewhere), {result.failed} failed ({reasons}); {result.pending} still pending "
                f"[{result.workers} workers, run {result.run_id}, {result.seconds}s]")
