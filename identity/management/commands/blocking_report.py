"""Print, per blocking rule, the candidate pairs it produces, how many no earlier rule produced, and how
many of them are the leads' links."""

import polars as pl

from identity.bulk import frame_read
from identity.candidates import IndexFrame, blocking_report
from identity.models import SourceTable
from identity.resolution import leads_load
from identity.runs import JobCommand


class Command(JobCommand):
    help = ("Blocking analysis: for each rule of identity.fields.BLOCKING_RULES, in order, the (lead, person) "
            "pairs it produces over the leads, how many no earlier rule produced, the leads it reaches, and how "
            "many of its pairs are the lead's link now (made by the engine or by a reviewer: the recall the "
            "rule gives, and adds). Reads the drivers index into memory; writes nothing.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--unlinked", action="store_true", help="only leads without a link (default: every lead)")
        parser.add_argument("--limit", type=int, help="at most this many leads, newest first")

    def run(self, **options):
        leads = leads_load(unlinked_only=options["unlinked"])
        if options["limit"]:
            leads = leads.head(options["limit"])
        links = frame_read("SELECT source_pk, person_key::text FROM canon.identity_links WHERE source_table = %s",
                           [SourceTable.CABINET_LEADS.value], schema={"source_pk": pl.String, "person_key": pl.String})
        linked = leads.join(links, on="source_pk", how="semi").height
        rules = [r.as_dict() for r in blocking_report(leads, IndexFrame.load(), links)]
        return {"leads": leads.height, "linked_leads": linked, "rules": rules}

    def summary(self, result) -> str:
        lines = [f"{result['leads']} leads, {result['linked_leads']} of them linked",
                 f"{'rule':<22}{'stage':>6}{'pairs':>12}{'new pairs':>12}{'leads':>10}{'new leads':>11}"
                 f"{'links':>9}{'new links':>11}"]
        for r in result["rules"]:
            lines.append(f"{r['rule']:<22}{r['stage']:>6}{r['pairs']:>12,}{r['new_pairs']:>12,}{r['leads']:>10,}"
                         f"{r['new_leads']:>11,}{r['links']:>9,}{r['new_links']:>11,}")
        found = sum(r["new_links"] for r in result["rules"])
        lines.append(f"links some rule finds: {found:,} of {result['linked_leads']:,} linked leads "
                     "(the others: linked by a person, or by a rule that is gone)")
        return "\n".join(lines)
