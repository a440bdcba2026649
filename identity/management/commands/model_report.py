"""Print each comparison level's declared m, its m estimated from the data, u and weight.

Exits 1 when an estimate fails."""

from identity.estimate import MIN_PAIRS
from identity.resolution import model_report
from identity.runs import EXIT_OK, EXIT_PROBLEMS, JobCommand, command_exit


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class Command(JobCommand):
    help = ("The matching model, level by level: declared m, m estimated from candidate pairs that other fields "
            "settle beyond doubt and from people's labels (reviewers' links and rejections, audit verdicts: the "
            "labels behind it, the pairs behind it, its 99 percent interval, its declared range), u, and the weight "
            "in bits; then the share of leads that have a driver, which makes the prior. Scores every lead as "
            "match_leads would; writes nothing. Exits 1 when an estimate is outside its range or rests on too few "
            "pairs or leads (docs/matching.md).")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--limit", type=int, help="only this many leads, newest first")
        parser.add_argument("--min-pairs", type=int, default=MIN_PAIRS,
                            help=f"fewest pairs an estimate may rest on (default {MIN_PAIRS})")

    def run(self, **options):
        return model_report(limit=options["limit"], min_pairs=options["min_pairs"])

    def exit_status(self, report) -> int:
        failures = report.estimate.failures
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            command_exit(EXIT_PROBLEMS, f"m estimate failed: {failures[0].error()}{more}")
        if report.share.failed:
            command_exit(EXIT_PROBLEMS, f"share estimate failed: {report.share.error()}")
        return EXIT_OK

    def summary(self, report) -> str:
        estimate = report.estimate
        header = (f"{'field':<12}{'level':<18}{'declared m':>11}{'estimated m':>12}{'pairs':>8}{'+labels':>8}"
                  f"{'-labels':>8}{'count':>7}  {'99% interval':<15}{'range':<16}{'u':>15}{'bits':>7}{'declared':>9}"
                  "  status")
        lines = [f"{report.leads} leads, {report.pairs} candidate pairs scored", header]
        for e in estimate.levels:
            interval = "-" if e.interval is None else f"{e.interval[0]:.4f}-{e.interval[1]:.4f}"
            u = "term frequency" if e.u is None else f"{e.u:.3g}"
            flag = e.status.upper() if e.failed else e.status
            flag += "" if e.weighed else " (not weighed)"
            lines.append(
                f"{e.field:<12}{e.level:<18}{e.declared_m:>11.4f}{_number(e.raw, '.4f'):>12}{e.pairs:>8}"
                f"{e.judged_pairs:>8}{e.rejected_pairs:>8}"
                f"{e.count:>7}  {interval:<15}{f'{e.m_range[0]:g}-{e.m_range[1]:g}':<16}{u:>15}"
                f"{_number(e.weight_bits, '.2f'):>7}{_number(e.declared_weight_bits, '.2f'):>9}  {flag}")
        labels = report.labels
        lines.append(f"labels: {labels['positive']} positive (a reviewer linked, an auditor confirmed), "
                     f"{labels['negative']} negative (a reviewer rejected, an auditor said not the same person); "
                     f"among these pairs +{labels['positive_in_pairs']} / -{labels['negative_in_pairs']} "
                     "(+labels join the anchors, -labels leave them)")
        lines.append("pairs behind each field's estimate (besides the pairs a reviewer linked):")
        lines.extend(f"  {name}: {anchor}" for name, anchor in estimate.anchors.items())
        lines.extend(f"  {name}: skipped, {why}" for name, why in estimate.skipped.items())
        share = report.share
        if share.failed:
            lines.append(f"share of leads with a driver: {share.status.upper()}, {share.error()}; the declared prior "
                         f"{report.declared_prior_bits:.2f} bits (one person in N + pseudo-persons) is kept")
        else:
            lines.append(f"share of leads with a driver: {share.share:.4f} (raw {share.raw:.4f}, {share.status}; "
                         f"{share.leads} leads with an identifier, {share.with_candidates} with a candidate; range "
                         f"{share.share_range[0]:g}-{share.share_range[1]:g}); prior {report.prior_bits:.2f} bits "
                         f"a person, declared {report.declared_prior_bits:.2f}")
        bounded = [e for e in estimate.levels if e.status == "bounded"]
        if bounded:
            lines.append("bounded (the raw share is outside the range, but within sampling noise of it): "
                         + ", ".join(f"{e.field}.{e.level} {e.raw:.4f} -> {e.m:.4f}" for e in bounded))
        failed = len(estimate.failures) + share.failed
        lines.append(f"{failed} estimate(s) failed" if failed else "every estimate within its declared range")
        return "\n".join(lines)
