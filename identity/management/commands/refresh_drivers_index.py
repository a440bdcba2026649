"""Rebuild the normalized drivers index and register new drivers as persons."""

from identity.index import drivers_index_refresh
from identity.runs import JobCommand


class Command(JobCommand):
    help = "Normalize changed drivers into canon.drivers_index and register new drivers as persons."
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--full", action="store_true", help="re-normalize every driver, not only changed ones")

    def run(self, **options):
        return drivers_index_refresh(full=options["full"])

    def summary(self, result) -> str:
        return (
            f"drivers index: {result.changed} drivers (re)indexed, {result.new_persons} new persons, "
            f"{result.joined_existing} joined an existing person, {result.driver_links} driver links, "
            f"{result.removed} removed [{result.seconds}s: "
            + ", ".join(f"{name} {secs}s" for name, secs in result.phases.items()) + "]"
        )
