"""Show why a lead is (or is not) linked: its keys, each candidate's evidence, the decision."""

import json

from django.core.management.base import BaseCommand, CommandError

from identity.fields import FIELDS
from identity.masking import mask
from identity.resolution import lead_explain


class Command(BaseCommand):
    help = "Explain the matching decision for one lead: normalized keys, candidates, per-field evidence."

    def add_arguments(self, parser):
        parser.add_argument("source_pk", help="the lead's source_pk (external_id, or id when it has none)")
        parser.add_argument("--show-pii", action="store_true", help="print phones, documents and e-mails in full")
        parser.add_argument("--json", action="store_true", help="print the decision's evidence as JSON")

    def handle(self, *args, **options):
        explanation = lead_explain(options["source_pk"])
        if explanation is None:
            raise CommandError(f"no lead with source_pk {options['source_pk']!r}")
        decision = explanation.decision
        if options["json"]:
            self.stdout.write(json.dumps(decision.evidence(explanation.thresholds, top=20), indent=2))
            return
        show = (lambda v: v) if options["show_pii"] else mask
        lead = explanation.lead
        out = [f"Lead {lead.source_pk}"]
        for f in FIELDS.values():  # every field of the registry that a lead carries
            if not f.lead_column:
                continue
            value = getattr(lead, f.lead_column, None)
            value = " ".join(value) if isinstance(value, tuple) else value
            value = show(value) if f.pii else value
            out.append(f"  {f.label:<20}: {value or '-'}")
        out.append("")
        out += [f"Decision: {decision.outcome}"
               + (f" -> person {decision.person_key}" if decision.person_key else "")
               + (f"  score={decision.score:.1f} bits" if decision.score is not None else "")
               + (f"  margin={decision.margin:.1f}" if decision.margin not in (None, float('inf')) else ""),
               f"  thresholds: link >= {explanation.thresholds.link_bits} bits with names and a key agreeing, "
               f"ahead of the next by >= {explanation.thresholds.margin_bits}",
               ""]
        if not decision.candidates:
            out.append("No candidates.")
        for rank, scored in enumerate(decision.candidates[:10], start=1):
            flags = " (rejected by a reviewer)" if scored.excluded else ""
            flags += "" if scored.corroborated else " (not corroborated)"
            out.append(f"#{rank} person {scored.person_key}: {scored.bits:+.1f} bits{flags}"
                       f"  found by: {', '.join(explanation.rules.get(scored.person_key, [])) or '-'}")
            for record in explanation.records.get(scored.person_key, []):
                name = " ".join(record.given_tokens + ("|",) + record.surname_tokens)
                out.append(f"     driver {record.driver_id} park={record.park_id or '-'} name: {name}")
            for f in scored.fields:
                shared = f" (value shared by {f.shared_by} persons)" if f.shared_by and f.shared_by > 1 else ""
                out.append(f"     {f.field:<10} {f.level:<14} {f.bits:+6.1f}{shared}")
        self.stdout.write("\n".join(out))
