"""Draw the audit sample: automatic links by rule and score band, and leads just below the threshold."""

from identity.models import JobRun
from identity.runs import EXIT_USAGE, JobCommand, command_exit
from recovery.review.audit import audit_sample


class Command(JobCommand):
    help = "Draw a stratified random sample of automatic links (and of leads just below the link threshold) " \
           "as audit items for blind review; prints the plan."
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--n", type=int, help="draw at most this many items (default CT4_AUDIT max_per_run)")
        parser.add_argument("--run", type=int, dest="source_run", help="only the links written by this job run")
        parser.add_argument("--seed", help="the same seed on the same data draws the same items")

    def run(self, **options):
        if options["n"] is not None and options["n"] < 0:
            command_exit(EXIT_USAGE, "--n must be >= 0")
        if options["source_run"] is not None and not JobRun.objects.filter(pk=options["source_run"]).exists():
            command_exit(EXIT_USAGE, f"there is no job run {options['source_run']}")
        return audit_sample(n=options["n"], source_run_id=options["source_run"], seed=options["seed"])

    def summary(self, result) -> str:
        lines = [f"drew {result.drawn} audit items (seed {result.seed}, run {result.run_id}); the plan:",
                 f"{'stratum':<40} {'kind':<16} {'population':>10} {'target':>7} {'before':>7} {'drawn':>6}"]
        lines += [f"{s.stratum:<40} {s.kind:<16} {s.population:>10} {s.target:>7} {s.already:>7} {s.drawn:>6}"
                  for s in result.strata]
        return "\n".join(lines)
