"""Create the origins missing (or not the earliest lead) for persons with lead links."""

from identity.runs import JobCommand
from recovery.jobs.backfill import origins_backfill


class Command(JobCommand):
    help = "Backfill identity origins: each person's origin becomes its earliest linked lead."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--dry-run", action="store_true", help="count what would be written, write nothing")

    def run(self, **options):
        return origins_backfill(dry_run=options["dry_run"])

    def summary(self, result) -> str:
        verb = "would write" if result.dry_run else "wrote"
        return (f"{result.persons} persons need an origin ({result.missing_origin} missing, {result.not_earliest} "
                f"not the earliest lead): {verb} {result.origins_written} [{result.seconds}s]")
