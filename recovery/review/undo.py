"""A person undoes a wrong lead link, all or nothing: through identity.linking (history, judgement, origin),
then the matcher's fresh reason for the lead (its open unmatched row), the queue row and the tracking row,
so the lead is back in the red backlog and the queue exactly like a lead never matched. No job calls this."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from django.db import transaction

from identity import linking
from identity.resolution import leads_unmatched_record
from recovery.queue import queue_reopen
from recovery.review.rules import REVIEW_PERMISSION, review_allowed
from recovery.tracking import attempts_reopen


@dataclass
class UndoOutcome:
    status: str  # undone, not_linked, forbidden
    message: str
    source_pk: str
    person_key: str | None = None
    undone_by: str = ""
    history_id: int | None = None
    # The person's origin after the undo (None: no lead of theirs is linked any more).
    origin_source_id: str | None = None
    # What the matcher decides for the lead now, the undone person excluded: its reason code, or
    # "link" when another candidate is strong enough (the next recovery run links it).
    matcher_outcome: str | None = None

    @property
    def undone(self) -> bool:
        return self.status == "undone"

    def as_dict(self) -> dict:
        return {**asdict(self), "undone": self.undone}


def link_undo(
    *, source_pk: str, user, reason: str, undone_via: str, person_key: str | None = None,
    audit_item_id: int | None = None,
) -> UndoOutcome:
    """Undo the link of lead `source_pk` (to `person_key` when given: refused if it is linked to someone
    else now), as `user`, a person with the review permission, in one transaction (the caller's, when
    it has one): identity.linking.lead_unlink keeps the history row and the judgement and moves the
    origin; the matcher decides the lead again without that person and records why it is unmatched;
    the queue row is pending again (the backlog view lists the lead) and the tracking row too."""
    username = user.get_username() if user is not None else ""
    if not review_allowed(user):
        return UndoOutcome("forbidden", f"{username or 'Nobody'} may not undo links: it takes a reviewer "
                                        f"(the {REVIEW_PERMISSION} permission).", source_pk, person_key)
    with transaction.atomic():
        if person_key is None:
            person_key = linking.lead_links(source_pks=[source_pk]).get(source_pk)
            if person_key is None:
                return UndoOutcome("not_linked", f"Lead {source_pk} has no link: nothing to undo.", source_pk)
        unlinked = linking.lead_unlink(source_pk=source_pk, person_key=str(person_key), user=user, reason=reason,
                                       undone_via=undone_via, audit_item_id=audit_item_id)
        if not unlinked.unlinked:
            return UndoOutcome("not_linked", unlinked.message, source_pk, str(person_key))
        decided = leads_unmatched_record(source_pks=[source_pk]).get(source_pk)
        queue_reopen(source_pks=[source_pk])
        attempts_reopen(source_pks=[source_pk])
    return UndoOutcome(
        "undone", f"{unlinked.message} The lead is back in the queue and the red backlog.", source_pk,
        str(person_key), username, unlinked.history_id, unlinked.origin_source_id, decided)
