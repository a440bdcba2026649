"""What the review screens share: their constants, the reviewer's actions, and when a candidate is
plausible enough to show (the matcher's own rule, read from identity.fields)."""

from __future__ import annotations

from identity.fields import AGREEING_FIELDS, AGREEING_LEVELS
from identity.matching import Scored, Thresholds

REVIEWER_GROUP = "reviewer"
REVIEW_PERMISSION = "identity.review_lead"
REVIEW_PERMISSION_CODENAME = "review_lead"
# A deferred lead stays in the list, below the undeferred ones, for this long.
DEFER_HOURS = 24
# Candidates shown side by side on the review screen (the matcher's top plausible ones).
MAX_CANDIDATES_SHOWN = 5
MANUAL_MATCH_RULE = "manual_review"


def review_allowed(user) -> bool:
    """Who may review (see, decide, answer audit items, undo a link): a logged-in, active user holding
    identity.review_lead, given by the `reviewer` group or granted to the user directly. The one home of
    the rule: the review screens, the review API (recovery.api.permissions.CanReview), undo and the
    link_undo command all ask it."""
    return bool(user is not None and user.is_authenticated and user.has_perm(REVIEW_PERMISSION))


class Action:
    LINK = "link"
    NOT_THIS_PERSON = "not_this_person"
    NONE_OF_THESE = "none_of_these"
    DEFER = "defer"

    ALL = (LINK, NOT_THIS_PERSON, NONE_OF_THESE, DEFER)
    LABELS = {
        LINK: "Link to this candidate",
        NOT_THIS_PERSON: "Not this person",
        NONE_OF_THESE: "None of these",
        DEFER: "Defer",
    }


# "Plausible", as the matcher has it (matching.Scored.key_agrees, the `plausible` column): a key
# field agrees (identity.fields.AGREEING_FIELDS at AGREEING_LEVELS), or the score is at least the weak
# threshold. Three readers, one rule: a live Scored, a stored candidate (identity_unmatched.details),
# and the same stored candidate in SQL (the review list).


def scored_plausible(scored: Scored, thresholds: Thresholds) -> bool:
    """A candidate the matcher just scored."""
    return scored.key_agrees or scored.bits >= thresholds.weak_bits


def stored_plausible(candidate: dict, weak_bits: float) -> bool:
    """A candidate as identity_unmatched.details stores it (its score and per-field levels)."""
    agrees = any(f.get("field") in AGREEING_FIELDS and f.get("level") in AGREEING_LEVELS
                 for f in candidate.get("fields", []))
    return agrees or (candidate.get("score") is not None and candidate["score"] >= weak_bits)


# stored_plausible in SQL over a stored candidate `c` (jsonb); parameters weak, key_fields, key_levels.
STORED_PLAUSIBLE_SQL = """((c->>'score')::float8 >= %(weak)s OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(coalesce(c->'fields', '[]'::jsonb)) f
            WHERE f->>'field' = ANY(%(key_fields)s) AND f->>'level' = ANY(%(key_levels)s)))"""


def plausible_params() -> dict:
    return {"weak": Thresholds.from_settings().weak_bits, "key_fields": list(AGREEING_FIELDS),
            "key_levels": list(AGREEING_LEVELS)}
