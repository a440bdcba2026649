"""Candidate persons for a batch of leads, fetched set-based: one query per batch, not per lead.

Blocking: exact normalized keys (phone, document or licence DNI, e-mail, plate) and, for leads
the keys did not settle, name blocks (drivers carrying the lead's rarest name tokens).
A key value carried by more than KEY_CAP persons blocks nothing: it identifies no one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.db import connection

from identity.matching import Candidate, DriverRecord, Frequencies, LeadKeys

KEY_CAP = 20  # a key shared by more persons than this is noise (placeholders, call centres)
NAME_BLOCK_CAP = 25  # drivers taken per name block
# A name block expected to hold more drivers than this would hand back an arbitrary LIMIT-slice
# of namesakes at a high GIN cost: it is skipped ("Juan Carlos Quispe Mamani" blocks nothing).
NAME_BLOCK_MAX_EXPECTED = 300

# Which index column each lead key is looked up in (a document is also sought among licence DNIs).
KEY_COLUMNS = (("phone", "phone"), ("document", "document"), ("document", "license_document"),
               ("email", "email"), ("plate", "plate"))

# Drivers sharing a key with a lead, capped per key value; then every record of their persons.
_KEY_HITS = " UNION ALL ".join(
    f"""
    SELECT k.i, k.kind, k.value, h.driver_id, h.person_key FROM k
    CROSS JOIN LATERAL (SELECT driver_id, person_key FROM canon.drivers_index di
                        WHERE di.{column} = k.value LIMIT %(cap)s) h WHERE k.kind = '{kind}'"""
    for kind, column in KEY_COLUMNS
)
_NAME_HITS = """
    UNION ALL
    SELECT b.i, 'name', NULL, h.driver_id, h.person_key
    FROM unnest(%(block_i)s::int[], %(block_tokens)s::text[]) AS b(i, tokens)
    CROSS JOIN LATERAL canon.name_block(string_to_array(b.tokens, ' '), %(name_cap)s) h"""
_CANDIDATES_SQL = f"""
WITH k AS (
    SELECT * FROM unnest(%(i)s::int[], %(kind)s::text[], %(value)s::text[]) AS k(i, kind, value)
), hits AS ({_KEY_HITS}{_NAME_HITS}
)
SELECT h.i, h.kind, h.value, h.person_key::text, NULL::text, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL::date
FROM hits h
UNION ALL
SELECT NULL, 'record', NULL, di.person_key::text, di.driver_id, di.park_id, di.phone, di.document,
       di.license_document, di.email, di.plate, di.birth_date, di.given_tokens, di.surname_tokens, di.hire_date
FROM canon.drivers_index di
WHERE di.person_key IN (SELECT person_key FROM hits WHERE person_key IS NOT NULL)
"""


@dataclass
class BatchCandidates:
    by_lead: dict[str, list[Candidate]]
    key_counts: dict[tuple[str, str], int]


def candidates_fetch(leads: list[LeadKeys], *, name_blocks: dict[str, list[tuple[str, ...]]] | None = None) -> BatchCandidates:
    """Candidate persons of each lead. `name_blocks` maps a lead to token tuples to block on."""
    i, kind, value = [], [], []
    for n, lead in enumerate(leads):
        for field_name in ("phone", "document", "email", "plate"):
            if v := getattr(lead, field_name):
                i.append(n)
                kind.append(field_name)
                value.append(v)
    # Name blocks travel as two flat arrays (lead index, space-joined tokens; tokens have no
    # spaces) and are looked up one by one by canon.name_block, which plans each with its tokens.
    block_i, block_tokens = [], []
    for n, lead in enumerate(leads):
        for tokens in (name_blocks or {}).get(lead.source_pk, ()):
            block_i.append(n)
            block_tokens.append(" ".join(tokens))
    if not i and not block_i:
        return BatchCandidates({lead.source_pk: [] for lead in leads}, {})
    params = {"i": i, "kind": kind, "value": value, "cap": KEY_CAP + 1, "name_cap": NAME_BLOCK_CAP,
              "block_i": block_i, "block_tokens": block_tokens}
    with connection.cursor() as cursor:
        cursor.execute(_CANDIDATES_SQL, params)
        rows = cursor.fetchall()
    persons_of_lead: dict[int, set[str]] = defaultdict(set)
    persons_of_value: dict[tuple[str, str], set[str]] = defaultdict(set)
    records: dict[str, list[DriverRecord]] = defaultdict(list)
    for n, row_kind, row_value, person_key, driver_id, *rest in rows:
        if row_kind == "record":
            park_id, phone, document, license_document, email, plate, birth_date, given, surnames, hired = rest
            records[person_key].append(
                DriverRecord(driver_id, park_id, phone, document, license_document, email, plate, birth_date,
                             tuple(given or ()), tuple(surnames or ()), hired)
            )
            continue
        if row_kind != "name":
            persons_of_value[(row_kind, row_value)].add(person_key)
        persons_of_lead[n].add(person_key)
    key_counts = {key: len(persons) for key, persons in persons_of_value.items()}
    too_common = {key for key, count in key_counts.items() if count > KEY_CAP}
    by_lead: dict[str, list[Candidate]] = {}
    for n, lead in enumerate(leads):
        keep = persons_of_lead.get(n, set())
        if too_common:
            keep = {p for p in keep if not _only_via(p, lead, too_common, persons_of_value)}
        by_lead[lead.source_pk] = [Candidate(p, tuple(sorted(records[p], key=lambda r: r.driver_id))) for p in sorted(keep)]
    return BatchCandidates(by_lead, key_counts)


def _only_via(person_key: str, lead: LeadKeys, too_common: set, persons_of_value: dict) -> bool:
    """True when the person reached this lead only through over-shared key values."""
    for field_name in ("phone", "document", "email", "plate"):
        value = getattr(lead, field_name)
        key = (field_name, value)
        if value and key not in too_common and person_key in persons_of_value.get(key, ()):
            return False
    return True


def frequencies_load() -> Frequencies:
    """N persons, N driver records, every name token's count and the hires per park and day
    (one read per matching run)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT person_key) FROM canon.drivers_index")
        drivers, persons = cursor.fetchone()
        cursor.execute("SELECT token, drivers FROM canon.name_token_stats")
        tokens = dict(cursor.fetchall())
        cursor.execute(
            """
            SELECT park_id, hire_date, count(*) FROM canon.drivers_index
            WHERE park_id IS NOT NULL AND hire_date IS NOT NULL GROUP BY park_id, hire_date
            """
        )
        hires: dict = defaultdict(dict)
        for park_id, day, count in cursor.fetchall():
            hires[park_id][day] = count
    return Frequencies(persons=persons, drivers=drivers, tokens=tokens, hires=dict(hires))


def name_blocks_for(lead: LeadKeys, freq: Frequencies) -> list[tuple[str, ...]]:
    """The rarest known tokens of the lead's name, in pairs and one triple.

    Unknown tokens (typos, usually) are skipped: they would block on nothing.
    """
    known = sorted({t for t in lead.name_tokens if t in freq.tokens and len(t) >= 2}, key=lambda t: (freq.tokens[t], t))
    if len(known) < 2:
        return []
    blocks = [tuple(known[:2])]
    if len(known) >= 3:
        # The triple narrows a common pair; (second, third) still finds the person when the
        # lead carries a rare token their record lacks (a second given name, a typo'd surname).
        blocks += [tuple(known[:3]), (known[1], known[2])]
    return [b for b in blocks if _expected_block_size(b, freq) <= NAME_BLOCK_MAX_EXPECTED]


def _expected_block_size(block: tuple[str, ...], freq: Frequencies) -> float:
    """Drivers expected to carry every token of the block, were tokens independent."""
    drivers = max(freq.drivers, 1)
    expected = float(drivers)
    for token in block:
        expected *= freq.tokens.get(token, 0) / drivers
    return expected
