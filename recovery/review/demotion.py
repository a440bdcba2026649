"""Rules demoted by their audited precision (issue 13 item 5): every hour, each automatic link rule's precision
over all its audited links (recovery.review.quality); a rule whose 95 % Wilson upper bound falls below
CT4_AUDIT precision_target is switched to "review instead of link" (identity.rules), with a WARNING naming
the rule and the figures. The check never restores a rule: only a person does (manage.py match_rule_state),
knowing the figures; after that the rule is demoted again only by a new "not the same person" verdict."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from identity.matching import LINK_RULES
from identity.models import LEADS_TABLE
from identity.rules import rule_demote, rule_states
from identity.runs import job_run
from recovery.db import sql_rows
from recovery.models import AuditKind, AuditVerdict
from recovery.review.audit import audit_settings
from recovery.review.quality import ALL_MONTHS, AUTOMATIC_LINKS_SQL, audit_report

JOB_NAME = "rules_precision"
logger = logging.getLogger("ct4.audit")


@dataclass
class RulePrecision:
    rule: str
    links: int
    audited: int
    confirmed: int
    rejected: int
    precision: float | None
    precision_low: float | None
    precision_high: float | None
    target: float
    # below_target: to demote; demoted_already: below the target and demoted before; restored: below the target,
    # but a person switched it back and no link of the rule was rejected since; ok; no_verdicts
    status: str

    def figures(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("rule", "status")}


@dataclass
class PrecisionCheck:
    target: float
    rules: list[RulePrecision] = field(default_factory=list)
    dry_run: bool = False

    @property
    def demoted(self) -> list[str]:
        return [r.rule for r in self.rules if r.status == "below_target"]

    def as_dict(self) -> dict:
        return {"target": self.target, "dry_run": self.dry_run, "demoted": self.demoted,
                "rules": [asdict(r) for r in self.rules]}


def rules_precision(*, target: float | None = None) -> list[RulePrecision]:
    """Each rule of LINK_RULES with its audited precision over every month (ALL_MONTHS): the audited
    automatic links of the rule, the undone ones included (an audit's "not the same person" undoes the
    link and counts as rejected). A rule without a decided verdict has no precision."""
    target = audit_settings()["precision_target"] if target is None else target
    period = next((p for p in audit_report()["periods"] if p["month"] == ALL_MONTHS), {"rules": []})
    by_rule = {r["rule"]: r for r in period["rules"]}
    states = {s.rule: s for s in rule_states()}
    result = []
    for rule in LINK_RULES:
        e = by_rule.get(rule, {})
        high = e.get("precision_high")
        state = states[rule]
        if high is None:
            status = "no_verdicts"
        elif high >= target:
            status = "ok"
        elif state.demoted:
            status = "demoted_already"
        elif state.changed_at is not None and not _rejections_since(rule, state.changed_at):
            status = "restored"
        else:
            status = "below_target"
        result.append(RulePrecision(
            rule=rule, links=e.get("links", 0), audited=e.get("audited", 0), confirmed=e.get("confirmed", 0),
            rejected=e.get("rejected", 0), precision=e.get("precision"), precision_low=e.get("precision_low"),
            precision_high=high, target=target, status=status))
    return result


_REJECTIONS_SINCE_SQL = f"""
-- "not the same person" verdicts given after `since` on automatic links of the rule (undone ones included)
SELECT count(*) AS rejected
FROM ops.audit_items a
WHERE a.kind = %(link_kind)s AND a.verdict = %(not_same)s AND a.decided_at > %(since)s
  AND EXISTS (SELECT 1 FROM ({AUTOMATIC_LINKS_SQL}) l
              WHERE l.match_rule = %(rule)s AND l.source_pk = a.source_pk AND l.person_key = a.person_key)
"""


def _rejections_since(rule: str, since) -> int:
    """Links of `rule` an auditor rejected after `since` (a person's restore: they knew the figures before)."""
    return sql_rows(_REJECTIONS_SINCE_SQL, {"link_kind": AuditKind.LINK.value, "not_same": AuditVerdict.NOT_SAME.value,
                                            "since": since, "leads": LEADS_TABLE, "rule": rule})[0]["rejected"]


def rules_precision_check(*, dry_run: bool = False, trigger: str = "command",
                          run_id: int | None = None) -> PrecisionCheck:
    """Demote every link rule whose audited precision's upper bound is below the target (one job run).
    Logs a WARNING per demoted rule; never restores one."""
    target = audit_settings()["precision_target"]
    with job_run(JOB_NAME, params={"dry_run": dry_run}, trigger=trigger, run_id=run_id) as run:
        check = PrecisionCheck(target=target, rules=rules_precision(target=target), dry_run=dry_run)
        for r in check.rules:
            if r.status != "below_target" or dry_run:
                continue
            reason = (f"audited precision {r.precision:.4f} (95% interval {r.precision_low:.4f}-"
                      f"{r.precision_high:.4f}, {r.confirmed} confirmed, {r.rejected} rejected of {r.links} links) "
                      f"is below the target {target:g}")
            if rule_demote(rule=r.rule, reason=reason, figures=r.figures()) is None:
                r.status = "demoted_already"  # a concurrent check (or a person) demoted it meanwhile
                continue
            logger.warning("rule %s demoted to review instead of link: %s", r.rule, reason,
                           extra={"rule": r.rule, **r.figures()})
        run.counts.update(rules=len(check.rules), demoted=len(check.demoted),
                          below_target=sum(r.status in ("below_target", "demoted_already") for r in check.rules))
    return check
