"""A reviewer's decision on a lead, all or nothing: through identity.linking like an automatic match,
then the queue row and the attempt, as the recover job does, so a reviewed lead leaves the backlog,
the queue and the daily metrics exactly like a lead the recover job linked."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from identity import linking
from identity.matching import RULE_VERSION, Thresholds
from identity.models import LEADS_TABLE, IdentityJudgement, IdentityLink, IdentityUnmatched, Verdict
from identity.resolution import lead_explain
from recovery.queue import queue_mark_linked
from recovery.review.rules import DEFER_HOURS, MANUAL_MATCH_RULE, Action, scored_plausible, stored_plausible
from recovery.tracking import attempts_record


@dataclass
class ReviewOutcome:
    status: str  # linked, rejected, deferred, already_linked, stale, invalid, not_found
    message: str
    source_pk: str
    person_keys: list[str] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.status in ("linked", "rejected", "deferred")


def review_decide(
    *, source_pk: str, action: str, user, person_key: str | None = None, seen: int | None = None, note: str = "",
) -> ReviewOutcome:
    """Apply a reviewer's decision on a lead, all or nothing.

    - link: the lead is linked to `person_key` through identity.linking.leads_link (decided_by =
      the reviewer's username, origin written, unmatched row resolved), the queue row is marked
      matched and the attempt tracked, as the recover job does for a lead linked elsewhere;
    - not_this_person: a negative judgement for `person_key` (no automatic run links them again);
    - none_of_these: a negative judgement for every candidate still standing;
    - defer: a judgement without a person; the lead stays listed, below the others, DEFER_HOURS.

    Every decision is also stored as a judgement (who and when). The lead's row is locked first,
    so two decisions on one lead run one after the other; the second finds the lead linked
    (already_linked) or decided since the reviewer's page was drawn (stale, when `seen`, the
    newest judgement id the page showed, is given) and changes nothing.
    """
    if action not in Action.ALL:
        return ReviewOutcome("invalid", f"Unknown action {action!r}.", source_pk)
    with transaction.atomic():
        if not _lead_lock(source_pk):
            return ReviewOutcome("not_found", f"There is no lead {source_pk}.", source_pk)
        existing = IdentityLink.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).first()
        if existing is not None:
            return _already_linked(source_pk, existing)
        if seen is not None:
            newer = (IdentityJudgement.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk, id__gt=seen)
                     .exclude(verdict=Verdict.DEFER).order_by("-id").first())
            if newer is not None:
                return ReviewOutcome(
                    "stale",
                    f"{newer.decided_by_name} decided \u201c{newer.get_verdict_display()}\u201d on lead {source_pk} "
                    f"at {timezone.localtime(newer.decided_at):%Y-%m-%d %H:%M} after you opened it. "
                    "Nothing was applied: look at the lead again.",
                    source_pk,
                )
        explanation = lead_explain(source_pk)
        if explanation is None:
            return ReviewOutcome("not_found", f"There is no lead {source_pk}.", source_pk)
        decision, thresholds = explanation.decision, explanation.thresholds
        live = {s.person_key: s for s in decision.candidates if not s.excluded}
        username = user.get_username()

        if action == Action.DEFER:
            linking.judgement_record(source_pk=source_pk, person_key=None, verdict=Verdict.DEFER, user=user, note=note)
            return ReviewOutcome("deferred", f"Lead {source_pk} deferred for {DEFER_HOURS} hours.", source_pk)

        if action == Action.NONE_OF_THESE:
            standing = sorted(
                {s.person_key for s in live.values() if scored_plausible(s, thresholds)} | _stored_candidates(source_pk)
            )
            for key in standing:
                linking.judgement_record(source_pk=source_pk, person_key=key, verdict=Verdict.NOT_THIS_PERSON,
                                         user=user, note=note)
            return ReviewOutcome(
                "rejected",
                f"Lead {source_pk}: {len(standing)} candidate(s) rejected; none will be linked automatically.",
                source_pk, standing,
            )

        person_key = str(person_key or "")
        stored_only = action == Action.NOT_THIS_PERSON and person_key in _stored_candidates(source_pk)
        if person_key not in live and not stored_only:
            return ReviewOutcome("invalid", f"That person is not a standing candidate of lead {source_pk}.", source_pk)

        if action == Action.NOT_THIS_PERSON:
            linking.judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.NOT_THIS_PERSON,
                                     user=user, note=note)
            return ReviewOutcome("rejected", f"Lead {source_pk}: noted, it is not person {person_key}.", source_pk,
                                 [person_key])

        chosen = live[person_key]
        evidence = decision.evidence(thresholds)
        evidence["review"] = {"action": Action.LINK, "decided_by": username, "person_key": person_key,
                              "automatic_outcome": str(decision.outcome), "candidate": chosen.as_dict()}
        written = linking.leads_link(
            links=[linking.LeadLink(source_pk=source_pk, person_key=person_key, match_rule=MANUAL_MATCH_RULE,
                                    match_score=chosen.bits, confidence_level="manual", evidence=evidence,
                                    rule_version=RULE_VERSION)],
            decided_by=username,
        )
        if written.already_linked:  # an automatic job got there first (it does not lock the lead)
            return _already_linked(
                source_pk, IdentityLink.objects.get(source_table=LEADS_TABLE, source_pk=source_pk)
            )
        linking.judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.LINK, user=user,
                                 note=note)
        _drain(source_pk, person_key)
        return ReviewOutcome("linked", f"Lead {source_pk} linked to person {person_key}.", source_pk, [person_key])


def _drain(source_pk: str, person_key: str) -> None:
    """What the recover job does for a lead linked elsewhere: queue row matched, attempt tracked."""
    queue_mark_linked(source_pks=[source_pk])
    attempts_record(outcomes={}, linked={source_pk: person_key})


def _lead_lock(source_pk: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM public.module_ct_cabinet_leads WHERE source_pk = %s FOR UPDATE", [source_pk])
        return cursor.fetchone() is not None


def _already_linked(source_pk: str, existing: IdentityLink) -> ReviewOutcome:
    by = "the automatic matching" if existing.decided_by == "system" else existing.decided_by
    return ReviewOutcome(
        "already_linked",
        f"Lead {source_pk} was already linked to person {existing.person_id} by {by} at "
        f"{timezone.localtime(existing.linked_at):%Y-%m-%d %H:%M}. Your decision was not applied.",
        source_pk, [str(existing.person_id)],
    )


def _stored_candidates(source_pk: str) -> set[str]:
    """Plausible candidates in the lead's unmatched record (what the review list counts)."""
    unmatched = IdentityUnmatched.objects.filter(source_table=LEADS_TABLE, source_pk=source_pk).first()
    if unmatched is None:
        return set()
    weak = Thresholds.from_settings().weak_bits
    return {str(c["person_key"]) for c in (unmatched.details or {}).get("candidates", [])
            if c.get("person_key") and not c.get("excluded_by_judgement") and stored_plausible(c, weak)}
