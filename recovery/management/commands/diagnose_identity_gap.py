"""`manage.py diagnose_identity_gap`: gap, freshness, matches, fail reasons, volume, integrity, red KPI."""

from identity.runs import JobCommand
from recovery.reports import gap_diagnose, gap_render


class Command(JobCommand):
    help = (
        "One readable report of the identity gap: leads by gap reason and risk, job freshness, matched in "
        "the last 24 h, top fail reasons, volume processed, link/origin integrity and the red KPI's last 7 days."
    )

    def run(self, **options):
        return gap_diagnose()

    def summary(self, result) -> str:
        return gap_render(result)
