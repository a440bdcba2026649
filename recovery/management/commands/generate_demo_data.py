"""Write a realistic synthetic park (SPEC §8 CSV files) plus the ground truth that measures matching."""

from datetime import date

from django.core.management.base import CommandError

from identity.domain import lima_today
from identity.runs import JobCommand
from recovery.demo.generator import demo_data_generate


class Command(JobCommand):
    help = "Generate cabinet_leads, drivers, trips, claims CSVs and their ground truth into --out DIR."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--out", required=True, help="directory to write into (created if missing)")
        parser.add_argument("--drivers", type=int, default=20_000, help="driver records (default 20000)")
        parser.add_argument("--leads", type=int, default=5_000, help="cabinet leads (default 5000)")
        parser.add_argument("--seed", type=int, default=42, help="same seed, byte-identical files")
        parser.add_argument("--parks", type=int, default=3)
        parser.add_argument("--days", type=int, default=120, help="lead window in days, ending at --end-date")
        parser.add_argument("--end-date", type=date.fromisoformat, default=None,
                            help="YYYY-MM-DD (default: today in America/Lima)")

    def run(self, *, out, drivers, leads, seed, parks, days, end_date, **_):
        end_date = end_date or lima_today()
        try:
            return demo_data_generate(out_dir=out, end_date=end_date, drivers=drivers, leads=leads, seed=seed,
                                      parks=parks, days=days)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def summary(self, result) -> str:
        files = " ".join(f"{name}={count}" for name, count in result["files"].items())
        cases = " ".join(f"{case}={count}" for case, count in result["cases"].items())
        return (f"wrote {result['out_dir']} (seed {result['seed']}, end {result['end_date']})\n"
                f"rows: {files}\n"
                f"leads with a hard case: {result['leads_with_hard_case']} ({result['hard_case_share']:.1%}), "
                f"with an identifier: {result['leads_with_identifier']}\n"
                f"cases: {cases}\n")
