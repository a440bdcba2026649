"""List the automatic link rules' states; demote one by hand, or switch a demoted one back in a person's name."""

from django.contrib.auth import get_user_model

from identity.rules import rule_demote, rule_restore, rule_states
from identity.runs import EXIT_OK, EXIT_USAGE, JobCommand, command_exit
from recovery.review.demotion import rules_precision, rules_precision_check
from recovery.review.rules import REVIEW_PERMISSION


class Command(JobCommand):
    help = ("The automatic link rules (docs/matching.md) with their state (linking, or review instead of link) and "
            "their audited precision. --check runs the hourly precision check now (it demotes a rule whose "
            "precision's upper bound is below CT4_AUDIT precision_target); --demote RULE sends a rule's leads to "
            "review by hand; --restore RULE switches a demoted rule back to linking. --demote and --restore need "
            "--by (a reviewer's username) and --note; --dry-run shows the change and writes nothing.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--restore", metavar="RULE", help="switch a demoted rule back to linking")
        action.add_argument("--demote", metavar="RULE", help="send a rule's leads to review instead of linking")
        action.add_argument("--check", action="store_true", help="run the audited precision check now")
        parser.add_argument("--by", metavar="USERNAME", help=f"the person deciding (a user with {REVIEW_PERMISSION})")
        parser.add_argument("--note", default="", help="why (kept with the change)")
        parser.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")

    def run(self, **options):
        if options["check"]:
            return {"check": rules_precision_check(dry_run=options["dry_run"]).as_dict()}
        rule = options["restore"] or options["demote"]
        if rule:
            by = self._person(options["by"])
            note = options["note"].strip()
            if not note:
                command_exit(EXIT_USAGE, "--note must say why")
            current = {s.rule: s for s in rule_states()}.get(rule)
            wanted = "linking" if options["restore"] else "review"
            changed = current is None or current.state != wanted
            if changed and not options["dry_run"]:
                change = (rule_restore(rule=rule, changed_by=by, reason=note) if options["restore"]
                          else rule_demote(rule=rule, changed_by=by, reason=note))
                changed = change is not None
            return {"rule": rule, "state": wanted, "changed": changed, "dry_run": options["dry_run"], "by": by,
                    "states": [s.as_dict() for s in rule_states()]}
        return {"states": [s.as_dict() for s in rule_states()],
                "precision": [r.__dict__ for r in rules_precision()]}

    def _person(self, username: str | None) -> str:
        user = get_user_model().objects.filter(username=username).first() if username else None
        if user is None:
            command_exit(EXIT_USAGE, "--by must name a user: a person decides a rule's state")
        if not user.is_active or not user.has_perm(REVIEW_PERMISSION):
            command_exit(EXIT_USAGE, f"{user.get_username()} may not change a rule's state: name a reviewer")
        return user.get_username()

    def summary(self, result) -> str:
        if "check" in result:
            check = result["check"]
            lines = [f"target {check['target']:g}; demoted now: {', '.join(check['demoted']) or 'none'}"
                     + (" (dry run: nothing written)" if check["dry_run"] else "")]
            lines += [f"  {r['rule']:<22} {r['status']:<16} precision {_p(r['precision'])} "
                      f"(95% {_p(r['precision_low'])}-{_p(r['precision_high'])}), {r['confirmed']} confirmed, "
                      f"{r['rejected']} rejected, {r['links']} links" for r in check["rules"]]
            return "\n".join(lines)
        lines = []
        if "rule" in result:
            verb = "would switch" if result["dry_run"] else "switched"
            lines.append(f"{result['rule']}: {verb} to {result['state']} by {result['by']}" if result["changed"]
                         else f"{result['rule']}: already {result['state']}, nothing changed")
        precision = {r["rule"]: r for r in result.get("precision", [])}
        for s in result["states"]:
            p = precision.get(s["rule"])
            audited = (f"; precision {_p(p['precision'])} (95% {_p(p['precision_low'])}-{_p(p['precision_high'])}), "
                       f"{p['confirmed']} confirmed, {p['rejected']} rejected" if p else "")
            since = f" since {s['changed_at'][:16]} by {s['changed_by']}: {s['reason']}" if s["changed_at"] else ""
            lines.append(f"{s['rule']:<22} {s['state']:<8}{since}{audited}")
        return "\n".join(lines)

    def exit_status(self, result) -> int:
        return EXIT_OK


def _p(value) -> str:
    return "-" if value is None else f"{value:.4f}"
