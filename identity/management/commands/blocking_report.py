"""Print, per blocking rule, the candidate pairs it produces and how many no earlier rule produced."""

from identity.candidates import IndexFrame, blocking_report
from identity.resolution import leads_load
from identity.runs import JobCommand


class Command(JobCommand):
    help = ("Blocking analysis: for each rule of identity.fields.BLOCKING_RULES, in order, the (lead, person) "
            "pairs it produces over the leads, how many no earlier rule produced, and the leads it reaches. "
            "Reads the drivers index into memory; writes nothing.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--unlinked", action="store_true", help="only leads without a link (default: every lead)")
        parser.add_argument("--limit", type=int, help="at most this many leads, newest first")

    def run(self, **options):
        leads = leads_load(unlinked_only=options["unlinked"])
        if options["limit"]:
            leads = leads.head(options["limit"])
        return {"leads": leads.height, "rules": [r.as_dict() for r in blocking_report(leads, IndexFrame.load())]}

    def summary(self, result) -> str:
        lines = [f"{result['leads']} leads",
                 f"{'rule':<22}{'stage':>6}{'pairs':>12}{'new pairs':>12}{'leads':>10}{'new leads':>11}"]
        for r in result["rules"]:
            lines.append(f"{r['rule']:<22}{r['stage']:>6}{r['pairs']:>12,}{r['new_pairs']:>12,}{r['leads']:>10,}{r['new_leads']:>11,}")
        return "\n".join(lines)
