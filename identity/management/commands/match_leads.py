"""Match the leads that have no link yet and record each outcome."""

from identity.management.commands._common import JobCommand
from identity.resolution import DEFAULT_BATCH, leads_match


class Command(JobCommand):
    help = "Match unlinked leads against the drivers index: link the clear ones, record why the rest are not."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--limit", type=int, help="at most this many leads (newest first)")
        parser.add_argument("--source-pks", nargs="+", metavar="SOURCE_PK", help="only these leads")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="leads per transaction")
        parser.add_argument("--dry-run", action="store_true", help="decide but write nothing")

    def run(self, **options):
        return leads_match(
            limit=options["limit"], source_pks=options["source_pks"], batch_size=options["batch_size"],
            dry_run=options["dry_run"],
        )
