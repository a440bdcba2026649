"""The review list as items for the API (GET /api/v1/review/items, POST .../{source_pk}/decision): one selector
over the doubtful leads and the open audit items, and one decision entry point that maps the API's actions
onto the screens' services (decide.review_decide, audit.audit_verdict_record), so a decision over the API is
the same decision, with the same locks and the same refusals, as one on the screen."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from identity.models import ReasonCode
from recovery.models import AuditItem, AuditVerdict
from recovery.review.audit import audit_verdict_record
from recovery.review.audit_screen import audit_open_items, audit_screen
from recovery.review.decide import review_decide
from recovery.review.display import lead_values
from recovery.review.listing import review_count, review_queue
from recovery.review.rules import Action
from recovery.review.screen import LeadReview, review_lead


class ItemKind:
    CONFLICT = "conflict"
    WEAK = "weak"
    AUDIT = "audit"

    ALL = (CONFLICT, WEAK, AUDIT)
    REASONS = {CONFLICT: ReasonCode.CONFLICT_MULTIPLE_CANDIDATES.value, WEAK: ReasonCode.WEAK_MATCH_ONLY.value}
    OF_REASON = {reason: kind for kind, reason in REASONS.items()}


class ItemAction:
    """The API's actions and what each one is on the screens: a lead decision or an audit answer."""

    LINK, REJECT, REJECT_ALL, DEFER = "link", "reject", "reject_all", "defer"
    CONFIRM, NOT_SAME, CANNOT_TELL = "confirm", "not_same", "cannot_tell"

    LEAD = {LINK: Action.LINK, REJECT: Action.NOT_THIS_PERSON, REJECT_ALL: Action.NONE_OF_THESE, DEFER: Action.DEFER}
    AUDIT = {CONFIRM: AuditVerdict.SAME.value, NOT_SAME: AuditVerdict.NOT_SAME.value,
             CANNOT_TELL: AuditVerdict.CANNOT_TELL.value}
    ALL = (*LEAD, *AUDIT)
    NEEDS_PERSON = (LINK, REJECT)


# Outcomes where another decision came first (a second decision, or a race lost on the row lock).
CONFLICT_STATUSES = ("already_linked", "stale", "already_decided")


# --- the list -------------------------------------------------------------------------------------


class ReviewItems:
    """The review items of one kind, or of all kinds (the doubtful leads in the review list's order, then
    the open audit items, oldest sample first), as a lazy sequence Django's paginator slices: counting
    and drawing a page cost a query or two per list, never the whole list."""

    def __init__(self, kind: str | None = None):
        self.kind = kind

    @property
    def _lead_reason(self) -> str | None:
        return ItemKind.REASONS.get(self.kind)

    @cached_property
    def _leads_total(self) -> int:
        return 0 if self.kind == ItemKind.AUDIT else review_count(reason=self._lead_reason)

    @cached_property
    def _audit_total(self) -> int:
        return audit_open_items(limit=0, offset=0)[1] if self.kind in (None, ItemKind.AUDIT) else 0

    def count(self) -> int:
        return self._leads_total + self._audit_total

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index: slice) -> list[dict]:
        start, stop = index.start or 0, index.stop
        items: list[dict] = []
        leads_total = self._leads_total
        if start < leads_total:
            page = review_queue(reason=self._lead_reason, limit=min(stop, leads_total) - start, offset=start)
            items += [item for row in page.rows if (item := lead_item(row.source_pk)) is not None]
        if self.kind in (None, ItemKind.AUDIT) and stop > leads_total:
            offset = max(start - leads_total, 0)
            audit, _ = audit_open_items(limit=stop - leads_total - offset, offset=offset)
            items += [item for a in audit if (item := audit_item(a.pk)) is not None]
        return items


def lead_item(source_pk: str) -> dict | None:
    """A doubtful lead as the review screen shows it (review_lead): its values, each plausible candidate
    with the engine's own per-field evidence and score."""
    review = review_lead(source_pk)
    if review is None or review.reason_code not in ItemKind.OF_REASON:
        return None
    return _lead_item(review)


def _lead_item(review: LeadReview) -> dict:
    lead = review.lead
    return {
        "kind": ItemKind.OF_REASON[review.reason_code],
        "source_pk": lead.source_pk,
        "reason": review.reason_code,
        "lead_date": lead.lead_date,
        "lead": lead_values(lead),
        "score": review.score,
        "margin": review.margin,
        "rule_version": review.rule_version,
        "window_open": review.window_open,
        "at_stake": review.at_stake,
        "deferred_until": review.deferred_until,
        "last_judgement_id": review.last_judgement_id,
        "candidates": [{
            "person_key": c.person_key,
            "score": round(c.score, 2),
            "corroborated": c.corroborated,
            "drivers": [{"driver_id": d.driver_id, "park_id": d.park_id, "status": d.status,
                         "trips_in_window": d.trips_in_window} for d in c.drivers],
            "fields": [{"field": r.field, "label": r.label, "lead_value": r.lead_value, "level": r.level,
                        "bits": r.bits, "shared_by": r.shared_by,
                        "values": [{"value": cell.value, "status": cell.status} for cell in r.cells]}
                       for r in c.rows],
        } for c in review.candidates],
        "actions": list(ItemAction.LEAD),
    }


def audit_item(item_id: int) -> dict | None:
    """An open audit item, blind like the audit screen (audit_screen): the lead's values beside the person's
    driver records, values only. No score, rule, stratum, confidence, evidence or field verdict: the answer
    must not lean on the machine's."""
    screen = audit_screen(item_id)
    if screen is None:
        return None
    return {
        "kind": ItemKind.AUDIT,
        "audit_item_id": screen.item.pk,
        "source_pk": screen.lead.source_pk,
        "lead_date": screen.lead.lead_date,
        "lead": lead_values(screen.lead),
        "drivers": [{"driver_id": driver.driver_id, "values": {row.field: row.values[i] for row in screen.rows}}
                    for i, driver in enumerate(screen.drivers)],
        "actions": list(ItemAction.AUDIT),
    }


# --- a decision --------------------------------------------------------------------------------------


@dataclass
class ItemDecision:
    # applied: linked, rejected, deferred, recorded; refused: already_linked, stale, already_decided,
    # invalid, not_found, forbidden
    status: str
    message: str
    source_pk: str
    action: str
    person_keys: list[str] = field(default_factory=list)
    audit_item_id: int | None = None
    # not_same on a link item: whether the answer undid the link (None for every other action).
    link_undone: bool | None = None

    @property
    def applied(self) -> bool:
        return self.status in ("linked", "rejected", "deferred", "recorded")


def review_item_decide(
    *, source_pk: str, action: str, user, person_key: str | None = None, seen: int | None = None, note: str = "",
) -> ItemDecision:
    """Apply a decision the API received on a review item.

    link / reject / reject_all / defer go to review_decide (link, not_this_person, none_of_these, defer);
    confirm / not_same / cannot_tell answer the lead's open audit item (the oldest one) through
    audit_verdict_record. When the lead has no open audit item but an answered one, that one is passed on,
    so a second answer is refused with who answered first (already_decided), as on the screen.
    """
    if action in ItemAction.LEAD:
        outcome = review_decide(source_pk=source_pk, action=ItemAction.LEAD[action], user=user,
                                person_key=person_key, seen=seen, note=note)
        return ItemDecision(outcome.status, outcome.message, source_pk, action, outcome.person_keys)
    if action not in ItemAction.AUDIT:
        return ItemDecision("invalid", f"Unknown action {action!r}.", source_pk, action)
    item = audit_item_of_lead(source_pk)
    if item is None:
        return ItemDecision("not_found", f"Lead {source_pk} has no audit item to answer.", source_pk, action)
    outcome = audit_verdict_record(item_id=item.pk, verdict=ItemAction.AUDIT[action], user=user, note=note)
    undone = outcome.link_undone if action == ItemAction.NOT_SAME and outcome.applied else None
    return ItemDecision(outcome.status, outcome.message, source_pk, action, [str(item.person_id)], item.pk, undone)


def audit_item_of_lead(source_pk: str) -> AuditItem | None:
    """The lead's audit item an answer goes to: its oldest open one, else its latest answered one."""
    items = AuditItem.objects.filter(source_pk=source_pk)
    return (items.filter(verdict__isnull=True).order_by("sampled_at", "id").first()
            or items.order_by("-decided_at", "-id").first())
