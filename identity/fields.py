"""The field registry: every field the matcher knows, declared once (SPEC §3, STYLE.md "Matching code").

Each `Field` says where its values come from on a lead and on a driver record (the index
columns), what role it plays, which comparison computes its level, and each level's m and u.
Blocking rules are declared here too. The index refresh, candidate generation, the scorer, the
evidence JSON, `explain_lead`, the review screen and the admin read this module; adding a field
is one entry here plus a migration for its index column.

m = P(level | same person), u = P(level | different persons); u None means "term frequency of
the agreeing value" (computed from the data). Weights are log2(m / u) bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from identity import normalize


class Role(StrEnum):
    PERSONAL_ID = "personal_id"  # a document: one human's own
    SHAREABLE_KEY = "shareable_key"  # phones, plates: families, friends and recycled numbers share them
    NAME = "name"
    DATE = "date"
    CONTEXT = "context"  # where and when the driver was hired: says something, never alone


class Kind(StrEnum):
    """Which vectorized comparison of identity.matching computes a field's level."""

    KEY = "key"  # exact (term frequency) / one typo [/ two typos] / different, over one or more index columns
    DATE = "date"  # exact / near (one part differs, day and month swapped) / different
    NAME = "name"  # token agreement between the lead's words and the record's given names and surnames
    RECRUITMENT = "recruitment"  # hired in the lead's park within the window after the lead


@dataclass(frozen=True)
class Level:
    name: str
    m: float
    u: float | None  # None: term frequency of the agreeing value(s)
    description: str
    # How a reviewer sees it beside the lead's value: agree, near or disagree.
    shown_as: str = "near"
    # The prior range of m: an estimate from the data outside it is an error, never a silent weight
    # (identity.estimate). Declared from what the field is, not from any generator's output.
    m_range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class Field:
    name: str
    label: str  # what a reviewer reads
    role: Role
    kind: Kind
    levels: tuple[Level, ...]
    # The lead frame's column and the drivers-index columns it is compared with, in the order a
    # tie is settled (a document is sought among documents, then licence DNIs).
    lead_column: str | None
    index_columns: tuple[str, ...]
    # Exact agreement's u is the chance that a *different* person carries the value:
    # (other persons carrying it + share_rate) / N. share_rate is how often a value turns up on
    # someone else anyway (a DNI typed onto a relative's record, a recycled number).
    share_rate: float = 1.0
    # A spreadsheet dropped leading zeros (844210 and 00844210 are one document).
    leading_zeros_equal: bool = False
    # Personal data (SPEC §9): masked in logs and command output unless asked for.
    pii: bool = False
    # False: the level is computed and shown (evidence, review) but adds no weight, until its m is
    # estimated from the data or from reviewers' verdicts rather than assumed.
    weighed: bool = True

    def level(self, name: str) -> Level:
        for level in self.levels:
            if level.name == name:
                return level
        raise KeyError(f"{self.name} has no level {name!r}")

    @property
    def shareable(self) -> bool:
        return self.role == Role.SHAREABLE_KEY

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)


def _key_levels(exact_m: float, typo_m: float, typo_u: float, different_m: float,
                ranges: tuple[tuple[float, float], tuple[float, float], tuple[float, float]],
                two_typos: Level | None = None) -> tuple[Level, ...]:
    exact_range, typo_range, different_range = ranges
    return (
        Level("exact", exact_m, None, "same normalized value", "agree", exact_range),
        Level("one_typo", typo_m, typo_u, "one character changed, dropped or added, or two swapped", m_range=typo_range),
        *((two_typos,) if two_typos else ()),
        Level("different", different_m, 1.0, "both present and different", "disagree", different_range),
    )


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        # A DNI is personal; typed wrong now and then; rarely different for the same person.
        # one_typo's u: a DNI's 79 same-length neighbours among 10^8 numbers (~8e-7); the shorter and
        # longer ones a dropped or doubled digit reaches add little, 7- and 9-digit documents being rare.
        Field("document", "Document (DNI / CE)", Role.PERSONAL_ID, Kind.KEY,
              _key_levels(exact_m=0.95, typo_m=0.03, typo_u=1e-6, different_m=0.02,
                          ranges=((0.80, 0.995), (0.002, 0.08), (0.002, 0.12)),
                          # Two digits typed wrong (issue 12). u from the format, as one_typo's: about
                          # 2,400 of the 10^8 eight-digit numbers are two edits from a given one. Not a
                          # key that agrees (AGREEING_LEVELS), nor a personal key: weight only.
                          two_typos=Level("two_typos", 0.01, 2.5e-5, "two characters changed or swapped",
                                          m_range=(0.0005, 0.08))),
              "document", ("document", "license_document"), share_rate=0.02, leading_zeros_equal=True, pii=True),
        # People change phones; families and recycled numbers make phones shareable.
        Field("phone", "Phone", Role.SHAREABLE_KEY, Kind.KEY,
              _key_levels(exact_m=0.85, typo_m=0.03, typo_u=1e-6, different_m=0.12,
                          ranges=((0.50, 0.98), (0.002, 0.08), (0.02, 0.45))),
              "phone", ("phone",), share_rate=0.5, pii=True),
        # E-mails are built from names (percy.ccama@, percyeccama@): namesakes' addresses are
        # often one typo apart, so an e-mail typo says far less than a DNI or phone typo.
        Field("email", "E-mail", Role.PERSONAL_ID, Kind.KEY,
              _key_levels(exact_m=0.80, typo_m=0.04, typo_u=1e-3, different_m=0.16,
                          ranges=((0.40, 0.98), (0.002, 0.15), (0.02, 0.55))),
              "email", ("email",), share_rate=0.1, pii=True),
        # Cars are lent and sold: a plate is weak and shareable.
        Field("plate", "Plate", Role.SHAREABLE_KEY, Kind.KEY,
              _key_levels(exact_m=0.60, typo_m=0.03, typo_u=1e-5, different_m=0.37,
                          ranges=((0.20, 0.95), (0.002, 0.08), (0.05, 0.80))),
              "plate", ("plate",), share_rate=1.0),
        Field("birth_date", "Birth date", Role.DATE, Kind.DATE, (
            Level("exact", 0.95, 1 / 14600, "same day (40 years of birth dates)", "agree", (0.75, 0.995)),
            Level("near", 0.03, 1 / 500, "day and month swapped, or one part differs", m_range=(0.002, 0.12)),
            Level("different", 0.02, 1.0, "both present and different", "disagree", (0.002, 0.15)),
        ), "birth_date", ("birth_date",), pii=True),
        # Names: u is the frequency of the agreeing tokens (Quispe is common, Ccahuana is not).
        Field("name", "Name", Role.NAME, Kind.NAME, (
            Level("exact", 0.80, None, "same tokens, in any box order", "agree", (0.40, 0.95)),
            # Peruvian names: given names, then the paternal, then the maternal surname. The same
            # two surnames the other way round are usually another family, rarely a typing slip.
            Level("surnames_swapped", 0.01, None, "the same surnames in the other order (usually another family)",
                  m_range=(0.0005, 0.05)),
            Level("typo", 0.06, None, "all tokens agree, some with a typo", m_range=(0.01, 0.25)),
            Level("subset", 0.09, None, "given name and surname agree; one side has extra tokens",
                  m_range=(0.02, 0.40)),
            Level("partial", 0.03, None, "given name and surname agree; both sides have other tokens",
                  m_range=(0.002, 0.15)),
            # Nothing disagrees: one side gives no given name (or no surname), and every token it gives agrees.
            # A blank box is no evidence of another person, as a different given name is (a relative). A
            # source that never leaves a box blank shows it 0 times: the range reaches down for it.
            Level("part_missing", 0.02, None, "the name one side gives agrees; it lacks a given name or a surname",
                  m_range=(0.0001, 0.15)),
            Level("surnames_only", 0.01, None, "surnames agree, given names do not", m_range=(0.001, 0.10)),
            Level("given_only", 0.004, None, "given names agree, surnames do not", m_range=(0.0005, 0.05)),
            Level("different", 0.002, 1.0, "no token in common", "disagree", (0.0001, 0.02)),
        ), "name_tokens", ("given_tokens", "surname_tokens")),
        # A record hired in the lead's park days after the lead. u: the share of all drivers hired
        # in that park in that window, from the data. Shown to reviewers, not weighed: its m was an
        # assumption that held only on our own generator (58 wrong links of 65 at 1M on other data).
        Field("recruitment", "Hired in the lead's park", Role.CONTEXT, Kind.RECRUITMENT, (
            # Nobody knows this m yet: the widest range, so only the data can say.
            Level("hired_after_lead", 0.75, None,
                  "a record hired in the lead's park within the window after the lead date", "agree",
                  (0.0001, 0.95)),
        ), None, ("park_id", "hire_date"), weighed=False),
    )
}

def shown_as(field_name: str, level: str | None) -> str:
    """A field level as the review screen shows it: agree, near, disagree, or missing (no level)."""
    return "missing" if level is None else FIELDS[field_name].level(level).shown_as


KEY_FIELDS = tuple(f.name for f in FIELDS.values() if f.kind == Kind.KEY)
# Fields whose exact agreement makes a candidate worth a look whatever its score. A key one typo off does
# not (since fs-2026.12-v13): the typo blocking rules search a DNI's 169 neighbours and a phone's ~100, so
# at 1M a lead meets about one stranger there by chance, and a namesake's e-mail is often a letter off.
# Such a candidate is worth a look when its score says so (weak_bits), as every other one.
AGREEING_FIELDS = (*KEY_FIELDS, "birth_date")
AGREEING_LEVELS = ("exact",)


# --- Where the compared columns come from ---------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A normalized column of the lead frame or of the drivers index, made from raw columns by a
    column-wise normalizer of identity.normalize (one Series per raw column in, one Series out)."""

    column: str
    raw: tuple[str, ...]
    normalize: Callable


# A lead's match keys, from public.module_ct_cabinet_leads. Dates are used as they are.
LEAD_SOURCES = (
    Source("phone", ("phone",), normalize.phones_column),
    Source("document", ("document",), normalize.documents_column),
    Source("email", ("email",), normalize.emails_column),
    Source("plate", ("plate",), normalize.plates_column),
    Source("name_tokens", ("first_name", "middle_name", "last_name"), normalize.name_tokens_column),
    # The surnames in their order, where the lead typed them in the surname box.
    Source("surname_tokens", ("last_name",), normalize.name_tokens_column),
)
# A driver record's index columns, from public.drivers (canon.drivers_index holds them).
INDEX_SOURCES = (
    Source("phone", ("phone",), normalize.phones_column),
    Source("document", ("document",), normalize.documents_column),
    Source("license_document", ("license_number",), normalize.license_documents_column),
    Source("email", ("email",), normalize.emails_column),
    Source("plate", ("plate",), normalize.plates_column),
    Source("given_tokens", ("first_name", "middle_name"), normalize.name_tokens_column),
    Source("surname_tokens", ("last_name",), normalize.name_tokens_column),
)


# --- Blocking rules ------------------------------------------------------------------------


class BlockKind(StrEnum):
    EQUAL = "equal"  # the lead's value equals the index column
    NAME_TOKENS = "name_tokens"  # the record carries every token of one of the lead's name blocks
    # The same value in lead_column and index_column, and at least the rule's initials_min of the lead's
    # name tokens' first letters among the record's: one typo in every key and name token survives it.
    EQUAL_AND_INITIALS = "equal_and_initials"
    # As EQUAL_AND_INITIALS, with the lead's value one typo off the index column's: one character
    # changed (a digit for a digit, a letter for a letter or digit) or two neighbours swapped, and, for
    # a rule with `indels`, one character dropped or added: the one_typo level of a key
    # (Damerau-Levenshtein distance 1).
    ONE_TYPO_AND_INITIALS = "one_typo_and_initials"


@dataclass(frozen=True)
class BlockingRule:
    name: str
    kind: BlockKind
    lead_column: str
    index_column: str
    # Stage 1 runs for every lead; stage 2 only for the leads stage 1 did not settle (no link and
    # no conflict), so common names cost nothing where a key already decided.
    stage: int = 1
    # A value shared by more persons than this identifies no one (placeholders, call centres,
    # "Juan Quispe"): it blocks nothing.
    cap: int = 20
    # *_AND_INITIALS rules: the name initials the lead's name and the record's must share (fewer when the
    # lead gives fewer name tokens).
    initials_min: int = 2
    # ONE_TYPO_AND_INITIALS rules: also the values one character shorter or longer than the lead's (a
    # digit dropped or typed twice). Only for keys whose length varies: a phone or a plate missing a
    # character is no valid phone or plate, so the index never holds one.
    indels: bool = False
    # The initials a record found through a dropped or added character must share (fewer when the lead
    # gives fewer name tokens): those neighbours add to the same-length ones (identity.candidates).
    indels_initials_min: int = 2


BLOCKING_RULES: tuple[BlockingRule, ...] = (
    BlockingRule("phone", BlockKind.EQUAL, "phone", "phone"),
    BlockingRule("document", BlockKind.EQUAL, "document", "document"),
    BlockingRule("document_in_licence", BlockKind.EQUAL, "document", "license_document"),
    BlockingRule("email", BlockKind.EQUAL, "email", "email"),
    BlockingRule("plate", BlockKind.EQUAL, "plate", "plate"),
    # The lead's rarest known name tokens, in pairs and one triple (identity.candidates).
    BlockingRule("name_tokens", BlockKind.NAME_TOKENS, "name_tokens", "name_tokens", stage=2, cap=100),
    # A document and a name token both typed wrong leave no exact key and no known name pair; the
    # birth date with the name's initials still finds the record (FEBRL-style typos, docs/engine.md).
    BlockingRule("birth_date_initials", BlockKind.EQUAL_AND_INITIALS, "birth_date", "birth_date", stage=2, cap=20),
    # A document or phone typed one typo off, and a name token typed wrong too: no exact key and no
    # known name pair finds the record; the key's one-typo neighbours with the name's initials do
    # (issue 12 item 2; FEBRL corrupts one digit of the ID and a name token together).
    # One initial is enough beside a document: a DNI has 79 one-typo neighbours among 10^8 numbers, so
    # a million drivers put about one record on them by chance, where a birth date holds about fifty.
    # A digit dropped or typed twice adds 8 shorter and about 80 longer neighbours; few records hold
    # a 7-digit document (a DNI whose leading zero a spreadsheet dropped) or a 9-digit one (a CE).
    # With two, a duplicate whose other name was replaced (FEBRL) was never found; its one-typo DNI and
    # exact birth date can link it when the given name agrees (matching: fs_document_typo_birth_date).
    BlockingRule("document_one_typo", BlockKind.ONE_TYPO_AND_INITIALS, "document", "document", stage=2, cap=20,
                 initials_min=1, indels=True),
    BlockingRule("phone_one_typo", BlockKind.ONE_TYPO_AND_INITIALS, "phone", "phone", stage=2, cap=20),
)

# Name blocks: tokens known to the index, at least this long; a block expected (were tokens
# independent) to hold more drivers than this is skipped: "Juan Carlos Quispe Mamani" blocks nothing.
NAME_BLOCK_MIN_TOKEN = 2
NAME_BLOCK_MAX_EXPECTED = 300
