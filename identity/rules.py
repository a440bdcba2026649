"""Which automatic link rules link on their own, and which an audit demoted to "review instead of link"
(issue 13 item 5): the matcher reads rules_demoted(); recovery's precision check demotes a rule whose
audited precision fell below the target (rule_demote); only a person switches it back (rule_restore)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from identity.matching import LINK_RULES
from identity.models import MatchRuleState, RuleState

SYSTEM = "system"


@dataclass(frozen=True)
class RuleStatus:
    """A link rule's current state: its latest change, or linking when it never changed."""

    rule: str
    state: str
    changed_at: object = None
    changed_by: str = ""
    reason: str = ""
    figures: dict | None = None

    @property
    def demoted(self) -> bool:
        return self.state == RuleState.REVIEW

    def as_dict(self) -> dict:
        return {"rule": self.rule, "state": self.state, "changed_at": self.changed_at and self.changed_at.isoformat(),
                "changed_by": self.changed_by, "reason": self.reason, "figures": self.figures or {}}


def _latest() -> dict[str, MatchRuleState]:
    latest: dict[str, MatchRuleState] = {}
    for row in MatchRuleState.objects.order_by("rule", "-changed_at", "-id"):
        latest.setdefault(row.rule, row)
    return latest


def rule_states() -> list[RuleStatus]:
    """Every link rule's state: the matcher's rules first (LINK_RULES order), then any other rule that
    ever changed state (a rule an older engine version named)."""
    latest = _latest()
    rules = [*LINK_RULES, *sorted(set(latest) - set(LINK_RULES))]
    return [RuleStatus(rule, RuleState.LINKING) if rule not in latest else
            RuleStatus(rule, latest[rule].state, latest[rule].changed_at, latest[rule].changed_by,
                       latest[rule].reason, latest[rule].figures)
            for rule in rules]


def rules_demoted() -> frozenset[str]:
    """The rules whose latest state is review: a lead that would link only through them goes to review."""
    return frozenset(s.rule for s in rule_states() if s.demoted)


def _rule_lock(rule: str) -> None:
    # Two changes of one rule at once (the hourly check and a person) are serialized: each reads the
    # state the other left.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('ct4.match_rule_state'), hashtext(%s))", [rule])


def _state_change(*, rule: str, state: str, changed_by: str, reason: str,
                  figures: dict | None) -> MatchRuleState | None:
    with transaction.atomic():
        _rule_lock(rule)
        current = MatchRuleState.objects.filter(rule=rule).order_by("-changed_at", "-id").first()
        if (current.state if current else RuleState.LINKING) == state:
            return None
        return MatchRuleState.objects.create(rule=rule, state=state, changed_by=changed_by, reason=reason,
                                             figures=figures or {})


def rule_demote(*, rule: str, reason: str, changed_by: str = SYSTEM,
                figures: dict | None = None) -> MatchRuleState | None:
    """Switch `rule` to review instead of link; returns the change, or None when it was demoted already.
    Any rule name is accepted (a rule of LINK_RULES is the one that has an effect on the matcher)."""
    if not rule or not reason:
        raise ValueError("a demotion names its rule and its reason")
    return _state_change(rule=rule, state=RuleState.REVIEW, changed_by=changed_by, reason=reason, figures=figures)


def rule_restore(*, rule: str, changed_by: str, reason: str, figures: dict | None = None) -> MatchRuleState | None:
    """A person switches `rule` back to linking; returns the change, or None when it was linking already.
    Never automatic: the person's name and a reason are required (and the database refuses "system")."""
    if not changed_by or changed_by == SYSTEM:
        raise ValueError("only a person switches a demoted rule back to linking")
    if not reason:
        raise ValueError("a restore needs a note saying why")
    return _state_change(rule=rule, state=RuleState.LINKING, changed_by=changed_by, reason=reason, figures=figures)
