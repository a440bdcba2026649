"""Retry unresolved leads of the identity gap analysis: missing links and missing origins."""

from identity.domain import RiskLevel
from identity.runs import EXIT_USAGE, JobCommand, command_exit
from recovery.jobs.retry import identity_matching_retry
from recovery.sql_views import GapReason


class Command(JobCommand):
    help = "Work through unresolved identity gaps (high risk and newest first); track each lead."
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("limit", nargs="?", type=int, help="at most this many leads")
        parser.add_argument("--risk-level", choices=RiskLevel.values)
        parser.add_argument("--gap-reason", choices=[g for g in GapReason.values if g != GapReason.RESOLVED])

    def run(self, **options):
        if (options["limit"] or 0) < 0:
            command_exit(EXIT_USAGE, "LIMIT must be >= 0")
        return identity_matching_retry(
            limit=options["limit"], risk_level=options["risk_level"], gap_reason=options["gap_reason"]
        )

    def summary(self, result) -> str:
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(result.by_reason.items())) or "none"
        return (f"retried {result.processed} leads: {result.newly_linked} newly linked, {result.origins_written} "
                f"origins written, {result.failed} still failing ({reasons}); {result.skipped_not_due} not due yet "
                f"[{result.seconds}s]")
