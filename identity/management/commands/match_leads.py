"""Match the leads that have no link yet and record each outcome."""

import argparse

from django.core.management.base import CommandError

from identity.resolution import DEFAULT_BATCH, leads_match, leads_match_parallel
from identity.runs import JobCommand


class Command(JobCommand):
    help = "Match unlinked leads against the drivers index: link the clear ones, record why the rest are not."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--limit", type=int, help="at most this many leads (newest first)")
        parser.add_argument("--source-pks", nargs="+", metavar="SOURCE_PK", help="only these leads")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="leads per transaction")
        parser.add_argument("--dry-run", action="store_true", help="decide but write nothing")
        parser.add_argument("--workers", type=int, default=1, help="processes matching in parallel (one shard each)")
        parser.add_argument("--shard", type=_shard, help="I/N: only the I-th of N disjoint slices of the leads")
        parser.add_argument("--refresh", action="store_true",
                            help="refresh the drivers index first (as refresh_drivers_index); on a first build "
                                 "the leads are decided while the database writes the index, and written once "
                                 "it has committed")
        parser.add_argument("--redecide", action="store_true",
                            help="decide again the leads already decided since the index and the match model "
                                 "last changed (by default they are skipped: the same inputs give the same decision)")

    def run(self, **options):
        if options["refresh"] and (options["workers"] > 1 or options["shard"] or options["dry_run"]):
            raise CommandError("--refresh does not combine with --workers, --shard or --dry-run")
        if options["workers"] > 1:
            return leads_match_parallel(workers=options["workers"], limit=options["limit"],
                                        batch_size=options["batch_size"], dry_run=options["dry_run"])
        return leads_match(
            limit=options["limit"], source_pks=options["source_pks"], batch_size=options["batch_size"],
            dry_run=options["dry_run"], shard=options["shard"], redecide=options["redecide"],
            refresh=options["refresh"],
        )


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("use I/N, for example 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError("I must be between 0 and N-1")
    return i, n
