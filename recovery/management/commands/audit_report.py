"""Estimated precision of the automatic links and the true matches left below the threshold, from the audits."""

from identity.runs import JobCommand
from recovery.review.quality import audit_report


def _interval(value, low, high) -> str:
    return "-" if value is None else f"{value:.4f} [{low:.4f}, {high:.4f}]"


class Command(JobCommand):
    help = "Per rule and overall, per month: links, audited, confirmed, rejected, cannot tell, precision (Wilson 95%)."

    def run(self, **options):
        return audit_report()

    def summary(self, result) -> str:
        lines = []
        for period in result["periods"]:
            lines.append(f"== {period['month']}")
            for name, e in [("overall", period["overall"]), *((r["rule"], r) for r in period["rules"])]:
                lines.append(f"  {name:<32} links {e['links']:>7} audited {e['audited']:>5} confirmed "
                             f"{e['confirmed']:>5} rejected {e['rejected']:>4} cannot tell {e['cannot_tell']:>4} "
                             f"precision {_interval(e['precision'], e['precision_low'], e['precision_high'])}")
            b = period["below_threshold"]
            share = _interval(b["true_match_share"], b["share_low"], b["share_high"])
            lines.append(f"  {'below the threshold':<32} sampled {b['sampled']:>5} audited {b['audited']:>5} true "
                         f"matches {b['confirmed']:>4} share {share}")
        return "\n".join(lines) or "no automatic links yet"
