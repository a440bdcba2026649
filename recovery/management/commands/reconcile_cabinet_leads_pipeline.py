"""Reconcile recent and limbo leads: create links, see drivers mapped, create the missing expected claims."""

from identity.runs import JobCommand
from recovery.jobs.reconcile import DEFAULT_LIMBO_STAGES, pipeline_reconcile
from recovery.sql_views import LimboStage


class Command(JobCommand):
    help = "Move recent and limbo leads along the funnel: link, map drivers, create missing claims."
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--recent-days", type=int, default=30, help="recent = lead date within this many days")
        parser.add_argument("--no-recent", action="store_true", help="skip recent leads")
        parser.add_argument("--no-limbo", action="store_true", help="skip limbo leads")
        parser.add_argument("--limbo-stages", nargs="+", choices=LimboStage.values, default=list(DEFAULT_LIMBO_STAGES))
        parser.add_argument("--refresh-index", action="store_true", help="refresh the drivers index first")

    def run(self, **options):
        return pipeline_reconcile(
            recent_days=options["recent_days"], process_recent=not options["no_recent"],
            process_limbo=not options["no_limbo"], limbo_stages=options["limbo_stages"],
            refresh_index=options["refresh_index"],
        )

    def summary(self, result) -> str:
        return " ".join(f"{key}={value}" for key, value in result.as_dict().items())
