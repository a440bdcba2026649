"""Scoring and deciding: a lead against its candidate persons, field by field, as pure functions.

The model is Fellegi–Sunter with fixed, declared probabilities (no training step that can
silently collapse): each comparison level has m = P(level | same person) and
u = P(level | different persons); its weight is log2(m / u) bits. Exact agreement on a value
uses the value's own frequency as u (term-frequency adjustment: a phone three people share or
the surname "Quispe" says less than a unique one). The posterior log-odds is the prior
(one person in N) plus the weights.

Independence fails exactly where families share phones and friends share cars, so a link also
needs corroboration: given name and surname must agree, and some key (document, phone,
e-mail, plate or birth date) must agree too. See docs/matching.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta

from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from identity.models import ReasonCode

RULE_VERSION = "fs-2026.11-r2"  # r2: recruitment comparison and rule


# --- Comparisons as data ----------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    name: str
    m: float
    u: float | None  # None: term frequency of the agreeing value(s)
    description: str


@dataclass(frozen=True)
class Comparison:
    field: str
    levels: tuple[Level, ...]
    # Keys a family or friends can share: agreement on them alone never links.
    shareable: bool = False
    # Exact agreement's u is the chance that a *different* person carries the value:
    # (other persons carrying it + share_rate) / N. share_rate is how often a value turns up
    # on someone else anyway (a DNI typed onto a relative's record, a recycled number).
    share_rate: float = 1.0

    def level(self, name: str) -> Level:
        for level in self.levels:
            if level.name == name:
                return level
        raise KeyError(f"{self.field} has no level {name!r}")


def _key_levels(exact_m: float, typo_m: float, typo_u: float, different_m: float) -> tuple[Level, ...]:
    return (
        Level("exact", exact_m, None, "same normalized value"),
        Level("one_typo", typo_m, typo_u, "one character changed, added, dropped or two swapped"),
        Level("different", different_m, 1.0, "both present and different"),
    )


COMPARISONS: dict[str, Comparison] = {
    c.field: c
    for c in (
        # A DNI is personal; typed wrong now and then; rarely different for the same person.
        Comparison("document", _key_levels(exact_m=0.95, typo_m=0.03, typo_u=1e-6, different_m=0.02),
                   share_rate=0.02),
        # People change phones; families and recycled numbers make phones shareable.
        Comparison("phone", _key_levels(exact_m=0.85, typo_m=0.03, typo_u=1e-6, different_m=0.12),
                   shareable=True, share_rate=0.5),
        # E-mails are built from names (percy.ccama@, percyeccama@): namesakes' addresses are
        # often one typo apart, so an e-mail typo says far less than a DNI or phone typo.
        Comparison("email", _key_levels(exact_m=0.80, typo_m=0.04, typo_u=1e-3, different_m=0.16), share_rate=0.1),
        # Cars are lent and sold: a plate is weak and shareable.
        Comparison("plate", _key_levels(exact_m=0.60, typo_m=0.03, typo_u=1e-5, different_m=0.37),
                   shareable=True, share_rate=1.0),
        Comparison(
            "birth_date",
            (
                Level("exact", 0.95, 1 / 14600, "same day (40 years of birth dates)"),
                Level("near", 0.03, 1 / 500, "day and month swapped, or one part differs"),
                Level("different", 0.02, 1.0, "both present and different"),
            ),
        ),
        # Names: u is the frequency of the agreeing tokens (Quispe is common, Ccahuana is not).
        Comparison(
            "name",
            (
                Level("exact", 0.80, None, "same tokens, in any box order"),
                Level("typo", 0.06, None, "all tokens agree, some with a typo"),
                Level("subset", 0.09, None, "given name and surname agree; one side has extra tokens"),
                Level("partial", 0.03, None, "given name and surname agree; both sides have other tokens"),
                Level("surnames_only", 0.01, None, "surnames agree, given names do not"),
                Level("given_only", 0.004, None, "given names agree, surnames do not"),
                Level("different", 0.002, 1.0, "no token in common"),
            ),
        ),
        # The partner recruits a lead and hires them in its park days later. u: the share of all
        # drivers hired in that park in that window, from the data (a busy park's hires say less).
        # Its absence says nothing (many leads were drivers already, or were hired elsewhere), so
        # it has no disagreeing level.
        Comparison(
            "recruitment",
            (Level("hired_after_lead", 0.75, None,
                   "a record hired in the lead's park within the window after the lead date"),),
        ),
    )
}

KEY_FIELDS = ("document", "phone", "email", "plate")
# Name levels in which both a given name and a surname agree.
NAME_CORROBORATES = frozenset({"exact", "typo", "subset", "partial"})
# ...and with no token on either side contradicting the other.
NAME_AGREES_WITHOUT_CONFLICT = frozenset({"exact", "typo", "subset"})
# The recruitment rule (no key at all) wants every token on both sides to agree.
RECRUITMENT_NAME_LEVELS = frozenset({"exact", "typo"})
FUZZY_TOKEN_MIN = 0.90  # Jaro-Winkler similarity for two name tokens to count as a typo
FUZZY_TOKEN_WEIGHT = 0.8  # a typo'd token carries this share of an exact token's information


# --- Inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadKeys:
    """A lead's normalized keys (identity.normalize); None where the lead has nothing usable."""

    source_pk: str
    phone: str | None = None
    document: str | None = None
    email: str | None = None
    plate: str | None = None
    birth_date: date | None = None
    name_tokens: tuple[str, ...] = ()
    park_id: str | None = None
    lead_date: date | None = None  # the calendar day of the lead in Lima

    @property
    def has_full_name(self) -> bool:
        return len(set(self.name_tokens)) >= 2

    @property
    def has_identifier(self) -> bool:
        return any((self.phone, self.document, self.email, self.plate)) or self.has_full_name


@dataclass(frozen=True)
class DriverRecord:
    """One driver record of a candidate person, as the drivers index holds it."""

    driver_id: str
    park_id: str | None = None
    phone: str | None = None
    document: str | None = None
    license_document: str | None = None
    email: str | None = None
    plate: str | None = None
    birth_date: date | None = None
    given_tokens: tuple[str, ...] = ()
    surname_tokens: tuple[str, ...] = ()
    hire_date: date | None = None


@dataclass(frozen=True)
class Candidate:
    person_key: str
    records: tuple[DriverRecord, ...]


# Pseudo-counts: the population a lead could come from is larger than a small index, and a
# token seen once among ten drivers is not one in ten of all Peruvians. Frequencies are smoothed
# toward these priors; at a million drivers the smoothing is negligible.
PSEUDO_PERSONS = 10_000
PSEUDO_DRIVERS = 10_000
BASE_TOKEN_F = 0.002  # a name token's frequency before the data says otherwise


@dataclass(frozen=True)
class Frequencies:
    """What the data says about how common things are."""

    persons: int  # N: persons in the registry
    drivers: int  # driver records in the index (denominator of token frequencies)
    tokens: dict[str, int] = field(default_factory=dict)  # name token -> driver records carrying it
    # (field, value) -> persons carrying it, for exact key agreement
    keys: dict[tuple[str, str], int] = field(default_factory=dict)
    # park_id -> {hire_date: driver records hired that day}, for the recruitment comparison
    hires: dict[str, dict[date, int]] = field(default_factory=dict)

    @property
    def population(self) -> int:
        return self.persons + PSEUDO_PERSONS

    def key_u(self, field_name: str, value: str, share_rate: float) -> float:
        """P(a different person carries this value): the others who do, plus the field's share rate."""
        others = max(self.keys.get((field_name, value), 1), 1) - 1
        return (others + share_rate) / self.population

    def hire_u(self, park_id: str, first: date, days: int) -> float:
        """P(a different driver was hired in this park between `first` and `days` days later)."""
        per_day = self.hires.get(park_id, {})
        hired = sum(per_day.get(first + timedelta(days=n), 0) for n in range(days + 1))
        return (hired + 1) / (self.drivers + PSEUDO_DRIVERS)

    def token_f(self, token: str) -> float:
        count = self.tokens.get(token, 0)
        return (count + PSEUDO_DRIVERS * BASE_TOKEN_F) / (self.drivers + PSEUDO_DRIVERS)


@dataclass(frozen=True)
class Thresholds:
    link_bits: float = 8.0  # posterior log-odds a link needs
    margin_bits: float = 6.0  # how far the best must be ahead of the second
    weak_bits: float = -6.0  # below this, with no key agreeing, a candidate is noise
    # Recruitment: a record hired in the lead's park 0..N days after the lead date (0 turns the
    # comparison and the recruitment rule off).
    recruit_window_days: int = 7

    @classmethod
    def from_settings(cls) -> Thresholds:
        from django.conf import settings  # noqa: PLC0415

        return cls(**getattr(settings, "CT4_MATCHING", {}))


# --- Scoring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldEvidence:
    field: str
    level: str
    bits: float
    driver_id: str | None = None
    shared_by: int | None = None  # persons carrying the agreeing value (term frequency)

    def as_dict(self) -> dict:
        data = {"field": self.field, "level": self.level, "bits": round(self.bits, 2)}
        if self.driver_id:
            data["driver_id"] = self.driver_id
        if self.shared_by and self.shared_by > 1:
            data["shared_by"] = self.shared_by
        return data


@dataclass(frozen=True)
class Scored:
    person_key: str
    bits: float  # posterior log-odds, prior included
    fields: tuple[FieldEvidence, ...]
    corroborated: bool
    excluded: bool = False  # a reviewer said this lead is not this person

    def level_of(self, field_name: str) -> str | None:
        return next((f.level for f in self.fields if f.field == field_name), None)

    @property
    def key_agrees(self) -> bool:
        return any(f.field in (*KEY_FIELDS, "birth_date") and f.level in ("exact", "one_typo") for f in self.fields)

    def as_dict(self) -> dict:
        data = {
            "person_key": self.person_key,
            "score": round(self.bits, 2),
            "corroborated": self.corroborated,
            "fields": [f.as_dict() for f in self.fields],
        }
        if self.excluded:
            data["excluded_by_judgement"] = True
        return data


def _bits(level: Level, u: float) -> float:
    return math.log2(level.m / max(u, 1e-12))


def _compare_key(field_name: str, lead_value: str | None, candidate: Candidate, freq: Frequencies) -> FieldEvidence | None:
    if not lead_value:
        return None
    comparison = COMPARISONS[field_name]
    values: list[tuple[str, str]] = []
    for record in candidate.records:
        if field_name == "document":
            values += [(v, record.driver_id) for v in (record.document, record.license_document) if v]
        elif (value := getattr(record, field_name)) is not None:
            values.append((value, record.driver_id))
    if not values:
        return None
    for value, driver_id in values:
        if value == lead_value or (field_name == "document" and _same_without_leading_zeros(value, lead_value)):
            shared = freq.keys.get((field_name, value), 1)
            level = comparison.level("exact")
            u = freq.key_u(field_name, value, comparison.share_rate)
            return FieldEvidence(field_name, "exact", _bits(level, u), driver_id, shared)
    for value, driver_id in values:
        if len(value) == len(lead_value) and DamerauLevenshtein.distance(value, lead_value, score_cutoff=1) <= 1:
            level = comparison.level("one_typo")
            return FieldEvidence(field_name, "one_typo", _bits(level, level.u), driver_id)
    level = comparison.level("different")
    return FieldEvidence(field_name, "different", _bits(level, level.u), values[0][1])


def _same_without_leading_zeros(a: str, b: str) -> bool:
    """Spreadsheets drop leading zeros: 844210 and 00844210 are one document."""
    return a.isdigit() and b.isdigit() and a.lstrip("0") == b.lstrip("0") != ""


def _compare_birth_date(lead_value: date | None, candidate: Candidate) -> FieldEvidence | None:
    if lead_value is None:
        return None
    comparison = COMPARISONS["birth_date"]
    dated = [(r.birth_date, r.driver_id) for r in candidate.records if r.birth_date]
    if not dated:
        return None
    best = "different"
    best_driver = dated[0][1]
    for value, driver_id in dated:
        if value == lead_value:
            best, best_driver = "exact", driver_id
            break
        same_parts = (value.year == lead_value.year) + (value.month == lead_value.month) + (value.day == lead_value.day)
        swapped = value.year == lead_value.year and value.month == lead_value.day and value.day == lead_value.month
        if same_parts == 2 or swapped:
            best, best_driver = "near", driver_id
    level = comparison.level(best)
    return FieldEvidence("birth_date", best, _bits(level, level.u), best_driver)


def _token_match(token: str, pool: tuple[str, ...]) -> tuple[str | None, bool]:
    """(matched token, exact?) for one lead token against a candidate's tokens.

    A typo: one edit (or two letters swapped) in a token of four letters or more, Jaro-Winkler
    >= 0.90, or two letters swapped in a three-letter token (luz / lzu).
    """
    if token in pool:
        return token, True
    best, best_sim = None, FUZZY_TOKEN_MIN
    for other in pool:
        if len(token) >= 4 and len(other) >= 4:
            sim = JaroWinkler.similarity(token, other)
            if DamerauLevenshtein.distance(token, other, score_cutoff=1) <= 1:
                sim = max(sim, 1.0 - 1e-9)
        elif len(token) == len(other) == 3 and sorted(token) == sorted(other):
            sim = 1.0 - 1e-9
        else:
            continue
        if sim >= best_sim:
            best, best_sim = other, sim
    return (best, False) if best is not None else (None, False)


def _compare_name(lead_tokens: tuple[str, ...], record: DriverRecord, freq: Frequencies) -> FieldEvidence | None:
    given, surnames = record.given_tokens, record.surname_tokens
    pool = given + surnames
    lead = tuple(dict.fromkeys(lead_tokens))
    if not lead or not pool:
        return None
    comparison = COMPARISONS["name"]
    matched: dict[str, bool] = {}  # candidate token -> exact?
    for token in lead:
        hit, exact = _token_match(token, pool)
        if hit is not None and (hit not in matched or exact):
            matched[hit] = exact
    if not matched:
        level = comparison.level("different")
        return FieldEvidence("name", "different", _bits(level, level.u), record.driver_id)
    given_hit = any(t in matched for t in given)
    surname_hit = any(t in matched for t in surnames)
    lead_all = len(matched) >= len(lead)
    pool_all = all(t in matched for t in pool)
    if given_hit and surname_hit:
        if lead_all and pool_all:
            name = "exact" if all(matched.values()) else "typo"
        elif lead_all or pool_all:
            name = "subset"
        else:
            name = "partial"
    elif surname_hit:
        name = "surnames_only"
    elif given_hit:
        name = "given_only"
    else:  # pragma: no cover - matched implies a given or surname hit
        name = "different"
    # u: how likely a random person carries all the agreeing tokens (independence, so capped below).
    log_u = sum(math.log2(freq.token_f(t)) * (1.0 if exact else FUZZY_TOKEN_WEIGHT) for t, exact in matched.items())
    u = max(2.0 ** log_u, 1 / (freq.drivers + PSEUDO_DRIVERS))
    level = comparison.level(name)
    return FieldEvidence("name", name, _bits(level, u), record.driver_id)


def _compare_recruitment(lead: LeadKeys, candidate: Candidate, freq: Frequencies, window_days: int) -> FieldEvidence | None:
    if not window_days or lead.lead_date is None or not lead.park_id:
        return None
    for record in candidate.records:
        if record.park_id == lead.park_id and record.hire_date is not None \
                and 0 <= (record.hire_date - lead.lead_date).days <= window_days:
            level = COMPARISONS["recruitment"].level("hired_after_lead")
            u = freq.hire_u(lead.park_id, lead.lead_date, window_days)
            return FieldEvidence("recruitment", "hired_after_lead", _bits(level, u), record.driver_id)
    return None


def candidate_score(lead: LeadKeys, candidate: Candidate, freq: Frequencies, *, excluded: bool = False,
                    recruit_window_days: int = 0) -> Scored:
    """Every comparison of a lead against one candidate person, with the evidence for each."""
    fields: list[FieldEvidence] = []
    for field_name in KEY_FIELDS:
        evidence = _compare_key(field_name, getattr(lead, field_name), candidate, freq)
        if evidence:
            fields.append(evidence)
    if evidence := _compare_birth_date(lead.birth_date, candidate):
        fields.append(evidence)
    names = [e for r in candidate.records if (e := _compare_name(lead.name_tokens, r, freq))]
    if names:
        fields.append(max(names, key=lambda e: e.bits))
    if evidence := _compare_recruitment(lead, candidate, freq, recruit_window_days):
        fields.append(evidence)
    prior = -math.log2(freq.population)
    bits = prior + sum(f.bits for f in fields)
    return Scored(candidate.person_key, bits, tuple(fields), _corroborated(lead, fields), excluded)


def _corroborated(lead: LeadKeys, fields: list[FieldEvidence]) -> bool:
    """The canonical guard against what independence gets wrong (families, recycled numbers, cars).

    - A personal key (document exact or one typo, e-mail exact, birth date exact) needs a given
      name and a surname to agree (name level exact, typo, subset or partial).
    - A shareable key (phone, plate, or an e-mail one typo away, e-mails being built from names)
      needs the names to agree without a conflict: exact, typo or subset. Siblings share a phone,
      the surnames and often a second given name ("Jorge Luis" / "Luis Enrique"): that is
      "partial", and not enough.
    - A document plus another exact key (phone, e-mail, birth date) needs some name overlap only.
    - Without a name on the lead, only a document plus another exact key will do.
    """
    levels = {f.field: f.level for f in fields}
    if not lead.name_tokens:
        others = ("phone", "email", "birth_date")
        return levels.get("document") == "exact" and any(levels.get(k) == "exact" for k in others)
    name = levels.get("name")
    personal = (
        levels.get("document") in ("exact", "one_typo")
        or levels.get("email") == "exact"
        or levels.get("birth_date") == "exact"
    )
    shareable = levels.get("phone") in ("exact", "one_typo") or levels.get("plate") in ("exact", "one_typo") \
        or levels.get("email") == "one_typo"
    if personal and name in NAME_CORROBORATES:
        return True
    # A DNI plus a second key of this person: any name overlap will do (a name typed oddly).
    if levels.get("document") == "exact" and name not in (None, "different") and any(
        levels.get(k) == "exact" for k in ("phone", "email", "birth_date")
    ):
        return True
    return shareable and name in NAME_AGREES_WITHOUT_CONFLICT


# --- Deciding -----------------------------------------------------------------------------


def _recruited_namesake(eligible: list[Scored]) -> Scored | None:
    """The recruitment rule: the one person who both carries the lead's name and was hired in the
    lead's park within days of the lead, when no key settles anything.

    A full name alone is not enough (about one lead in ten has an exact namesake among a million
    drivers) and a recent hire in a busy park alone is not either; together, and unique, they are
    (measured at 1M drivers: 1,987 right and 13 wrong links, docs/benchmarks.md). Never used when some
    candidate is corroborated by a key: then the keys decide (a link, a conflict, or review).
    """
    if any(s.corroborated for s in eligible):
        return None
    recruited = [s for s in eligible if s.level_of("recruitment") == "hired_after_lead"
                 and s.level_of("name") in RECRUITMENT_NAME_LEVELS]
    if len(recruited) != 1:
        return None
    (found,) = recruited
    # Nothing personal may contradict it (a different DNI or birth date is another human),
    # and the whole evidence, disagreements included, must be at even odds or better.
    if found.bits < 0 or any(found.level_of(f) == "different" for f in ("document", "birth_date")):
        return None
    return found


@dataclass(frozen=True)
class Decision:
    source_pk: str
    outcome: str  # "link" or a ReasonCode
    person_key: str | None
    score: float | None
    margin: float | None
    candidates: tuple[Scored, ...]
    rule: str = "fellegi_sunter"  # or "recruitment" (see lead_decide)

    @property
    def is_link(self) -> bool:
        return self.outcome == "link"

    @property
    def confidence_level(self) -> str:
        if not self.is_link:
            return "low"
        if self.rule == "recruitment":
            return "medium"  # a name and a hire date, no key: never "high"
        return "high" if (self.score or 0) >= 16 and (self.margin or 0) >= 12 else "medium"

    def evidence(self, thresholds: Thresholds, top: int = 5) -> dict:
        return {
            "rule_version": RULE_VERSION,
            "rule": self.rule,
            "outcome": self.outcome,
            "score": None if self.score is None else round(self.score, 2),
            "margin": None if self.margin is None or math.isinf(self.margin) else round(self.margin, 2),
            "thresholds": {"link": thresholds.link_bits, "margin": thresholds.margin_bits, "weak": thresholds.weak_bits},
            "candidates": [c.as_dict() for c in self.candidates[:top]],
        }


def lead_decide(
    lead: LeadKeys,
    candidates: list[Candidate],
    freq: Frequencies,
    thresholds: Thresholds,
    rejected: set[str] | frozenset[str] = frozenset(),
) -> Decision:
    """The decision for one lead: a pure function of the lead, its candidates, the judgements
    on record (persons a reviewer said it is not) and the thresholds."""
    if not lead.has_identifier:
        return Decision(lead.source_pk, ReasonCode.MISSING_IDENTIFIERS, None, None, None, ())
    scored = sorted(
        (candidate_score(lead, c, freq, excluded=c.person_key in rejected,
                         recruit_window_days=thresholds.recruit_window_days) for c in candidates),
        key=lambda s: (-s.bits, s.person_key),
    )
    eligible = [s for s in scored if not s.excluded]
    plausible = [s for s in eligible if s.key_agrees or s.bits >= thresholds.weak_bits]
    if not plausible:
        return Decision(lead.source_pk, ReasonCode.NO_CANDIDATES, None, None, None, tuple(scored))
    best = plausible[0]
    # Only candidates that could themselves be linked compete: a sibling who shares the family
    # phone but not the given name is evidence of a family, not a rival.
    rivals = [s.bits for s in plausible[1:] if s.corroborated]
    margin = best.bits - (rivals[0] if rivals else -math.inf)
    if best.bits >= thresholds.link_bits and best.corroborated:
        if margin >= thresholds.margin_bits:
            return Decision(lead.source_pk, "link", best.person_key, best.bits, margin, tuple(scored))
        return Decision(lead.source_pk, ReasonCode.CONFLICT_MULTIPLE_CANDIDATES, None, best.bits, margin, tuple(scored))
    if recruited := _recruited_namesake(eligible):
        others = [s.bits for s in eligible if s is not recruited]
        return Decision(lead.source_pk, "link", recruited.person_key, recruited.bits,
                        recruited.bits - (others[0] if others else -math.inf), tuple(scored), rule="recruitment")
    # The top scorer is not corroborated (or too weak): a person looks at it.
    return Decision(lead.source_pk, ReasonCode.WEAK_MATCH_ONLY, None, best.bits, margin, tuple(scored))
