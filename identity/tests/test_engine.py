"""The vectorized engine: each comparison's levels on hand-made pairs, a batch scored at once equal
to its leads scored one by one, the registry driving evidence, and both candidate sources."""

import dataclasses
import json
import math
import threading
from datetime import date

import polars as pl
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models.functions import Now
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import DamerauLevenshtein

from identity import candidates as candidates_module
from identity import estimate, linking, resolution
from identity import fields as registry
from identity import index as index_module
from identity.candidates import (
    _VARIANTS_IN_PYTHON_MAX,
    IndexFrame,
    SqlIndex,
    _contained,
    _one_typo_variants_small,
    _typo_variants_as_indexed,
    _typo_variants_as_indexed_small,
    blocking_report,
    equal_wanted,
    frequencies_load,
    initials_hits,
    name_blocks,
    one_typo_variants,
    stage_hits,
)
from identity.estimate import SHARE_RANGE
from identity.fields import FIELDS, Field, Kind, Role
from identity.index import drivers_index_refresh
from identity.matching import (
    KEYS_SCHEMA,
    PERSON,
    PSEUDO_PERSONS,
    RECORD_SCHEMA,
    Candidate,
    DriverRecord,
    Frequencies,
    LeadKeys,
    Thresholds,
    candidate_weights,
    decisions_make,
    decisions_materialize,
    evidence_json,
    lead_decide,
    leads_frame,
    pairs_frame,
    pairs_score,
)
from identity.models import (
    CabinetLead,
    DriverIndexEntry,
    IdentityLink,
    IdentityUnmatched,
    JobRun,
    MatchModel,
    ReasonCode,
    SourceTable,
)
from identity.resolution import MatchContext, leads_decide_frame, leads_load, leads_match
from identity.tests.factories import make_driver, make_lead
from identity.tests.factories import make_lead as _make_lead

TOKENS = {"juan": 30000, "carlos": 20000, "quispe": 50000, "mamani": 30000, "rosa": 15000, "flores": 40000,
          "luz": 9000, "gutierrez": 12000, "salazar": 11000, "wilmer": 300, "ccahuana": 40, "huillca": 200}
FREQ = Frequencies(persons=1_000_000, drivers=1_000_000, tokens=TOKENS)
T = Thresholds()


def record(driver_id="D1", given="juan carlos", surnames="quispe mamani", **keys) -> DriverRecord:
    return DriverRecord(driver_id, given_tokens=tuple(given.split()), surname_tokens=tuple(surnames.split()), **keys)


def lead(name="juan carlos quispe mamani", pk="L1", **keys) -> LeadKeys:
    return LeadKeys(pk, name_tokens=tuple(name.split()), **keys)


def level(field_name: str, the_lead: LeadKeys, *records: DriverRecord) -> str | None:
    decision = lead_decide(the_lead, [Candidate("P1", records)], FREQ, T)
    return decision.candidates[0].level_of(field_name)


@pytest.mark.parametrize(("lead_keys", "record_keys", "expected"), [
    ({"phone": "+51987654321"}, {"phone": "+51987654321"}, "exact"),
    ({"phone": "+51987654321"}, {"phone": "+51987654312"}, "one_typo"),  # two digits swapped
    ({"phone": "+51987654321"}, {"phone": "+51987654329"}, "one_typo"),  # one digit changed
    ({"phone": "+51987654321"}, {"phone": "+51911111111"}, "different"),
    ({"phone": "+51987654321"}, {}, None),  # the record has no phone: no evidence either way
    ({"document": "44556677"}, {"license_document": "44556677"}, "exact"),  # a licence DNI counts
    ({"document": "844210"}, {"document": "00844210"}, "exact"),  # leading zeros lost in a spreadsheet
    # A digit dropped or typed twice is one typo (since fs-2026.12-v12), counted without leading zeros.
    ({"document": "44556677"}, {"document": "4455667"}, "one_typo"),
    ({"document": "44556677"}, {"document": "445566777"}, "one_typo"),
    ({"document": "5552692"}, {"document": "005052692"}, "one_typo"),  # zeros lost, then one digit changed
    ({"document": "02759585"}, {"document": "22059585"}, "two_typos"),  # a typed 0 can be a typo too
    ({"document": "44556677"}, {"document": "445567"}, "different"),  # two digits dropped
    ({"document": "44556677"}, {"document": "4455677"}, "one_typo"),  # one of two equal digits dropped
    ({"document": "44556677"}, {"document": "4495667"}, "different"),  # dropped and changed: two, not same length
    ({"document": "44556677"}, {"document": "44596627"}, "two_typos"),
    ({"email": "jc@gmail.com"}, {"email": "jc@gmial.com"}, "one_typo"),
    ({"email": "josecontreras@gmail.com"}, {"email": "josecotreras@gmail.com"}, "one_typo"),  # a letter dropped
    ({"plate": "ABC123"}, {"plate": "ABC123"}, "exact"),
])
def test_key_levels(lead_keys, record_keys, expected):
    field_name = next(iter(lead_keys))
    assert level(field_name, lead(**lead_keys), record(**record_keys)) == expected


@pytest.mark.parametrize(("lead_day", "record_day", "expected"), [
    (date(1990, 5, 17), date(1990, 5, 17), "exact"),
    (date(1990, 5, 7), date(1990, 7, 5), "near"),  # day and month swapped
    (date(1990, 5, 17), date(1991, 5, 17), "near"),  # one part differs
    (date(1990, 5, 17), date(1975, 1, 2), "different"),
])
def test_birth_date_levels(lead_day, record_day, expected):
    assert level("birth_date", lead(birth_date=lead_day), record(birth_date=record_day)) == expected


@pytest.mark.parametrize(("lead_name", "given", "surnames", "expected"), [
    ("juan carlos quispe mamani", "juan carlos", "quispe mamani", "exact"),
    ("quispe mamani juan carlos", "juan carlos", "quispe mamani", "exact"),  # box order does not matter
    ("juan carlso quispe mamani", "juan carlos", "quispe mamani", "typo"),  # two letters swapped
    ("gutierrez salazar lzu", "luz", "gutierrez salazar", "typo"),  # three-letter anagram
    ("lui quispe mamani", "luis", "quispe mamani", "typo"),  # a four-letter name one letter short
    ("lor quispe mamani", "flor", "quispe mamani", "typo"),  # its first letter lost
    ("ana quispe mamani", "ada", "quispe mamani", "surnames_only"),  # three letters, one changed: another name
    ("juan quispe mamani", "juan carlos", "quispe mamani", "subset"),
    ("juan alberto quispe mamani", "juan carlos", "quispe mamani", "partial"),
    ("rosa quispe mamani", "juan carlos", "quispe mamani", "surnames_only"),
    ("juan carlos flores", "juan carlos", "quispe mamani", "given_only"),
    ("rosa flores", "juan carlos", "quispe mamani", "different"),
    # A word typed in two pieces is that word: "quis pe" is quispe, hit exactly.
    ("juan carlos quis pe mamani", "juan carlos", "quispe mamani", "exact"),
    ("ju an carlos quis pe mamani", "juan carlos", "quispe mamani", "exact"),
    ("juan carlos qui spe mamani pedro", "juan carlos", "quispe mamani", "subset"),
    ("juan carlos quispemamani", "juan carlos", "quispe mamani", "subset"),  # not the other way round
    ("juan carlos quis pa mamani", "juan carlos", "quispe mamani", "subset"),  # pieces must join exactly
])
def test_name_levels(lead_name, given, surnames, expected):
    assert level("name", lead(lead_name), record(given=given, surnames=surnames)) == expected


@pytest.mark.parametrize(("lead_name", "surname_box", "given", "surnames", "expected"), [
    # One side gives no given name (or no surname) and every token it gives agrees: nothing disagrees.
    ("mccarthy", "mccarthy", "travis", "mccarthy", "part_missing"),  # the lead's given-name box blank
    ("alyssa clarke", "clarke", "", "clarke", "part_missing"),  # the record's given name blank
    ("quispe", "quispe", "", "quispe mamani", "part_missing"),
    ("madison", "", "madison", "ebdell", "part_missing"),  # the lead's surname box blank
    # Another given name is not a blank one (a relative), nor a surname the record lacks.
    ("rosa quispe", "quispe", "juan", "quispe", "surnames_only"),
    ("quispe rojas", "quispe rojas", "juan", "quispe mamani", "surnames_only"),
    ("juan quispe", "", "pedro", "quispe", "surnames_only"),  # all in the given-name box: a given name
    ("juan flores", "flores", "juan", "quispe", "given_only"),
])
def test_a_blank_name_part_is_not_a_different_one(lead_name, surname_box, given, surnames, expected):
    the_lead = LeadKeys("L1", name_tokens=tuple(lead_name.split()), surname_tokens=tuple(surname_box.split()),
                        phone="+51987654321")
    assert level("name", the_lead, record(given=given, surnames=surnames, phone="+51987654321")) == expected


@pytest.mark.parametrize(("document", "name", "expected"), [
    # A stranger whose DNI is one typo off the lead's: the typo rules meet such records by chance (a DNI
    # has 169 one-typo neighbours), so the typo alone makes no review; its score would have to.
    ("44556678", ("rosa", "flores ccahuana"), ReasonCode.NO_CANDIDATES),
    ("44556677", ("rosa", "flores ccahuana"), ReasonCode.WEAK_MATCH_ONLY),  # an exact DNI: worth a look
    ("44556678", ("juan carlos", "quispe mamani"), "link"),  # one typo off with the name: the score says so
])
def test_a_key_one_typo_off_alone_makes_no_candidate_plausible(document, name, expected):
    the_lead = lead(document="44556677")
    decision = lead_decide(the_lead, [Candidate("P1", (record("D1", *name, document=document),))], FREQ, T)
    if expected == "link":
        assert decision.is_link
    else:
        assert decision.outcome == expected and not decision.is_link
    if expected == ReasonCode.NO_CANDIDATES:
        assert decision.candidates[0].level_of("document") == "one_typo" and decision.candidates[0].bits < T.weak_bits


def test_pruning_drops_only_persons_no_name_could_make_plausible():
    the_lead = lead(phone="+51987654321", document="44556677", email="juan.quispe@correo.pe",
                    birth_date=date(1990, 5, 17))
    rows = [
        (0, "TRUE", record("D1", phone="+51987654321", document="44556677"), False),
        # Namesakes found by the name blocks: every key they have differs from the lead's.
        *((0, f"NAMESAKE{i}", record(f"N{i}", phone=f"+5191111111{i}", document=f"1122334{i}",
                                     email=f"jq{i}@correo.pe", birth_date=date(1970, 1, 1 + i)), False)
          for i in range(5)),
        # Keys differing too, but the birth date agrees: plausible whatever its score, kept.
        (0, "SAME_DAY", record("B1", given="rosa", surnames="flores", phone="+51922222222",
                               birth_date=date(1990, 5, 17)), False),
        # Rejected by a reviewer: kept, so that the evidence shows it.
        (0, "REJECTED", record("R1", phone="+51933333333", document="99887766"), True),
        # Nothing but a rare name: could reach weak_bits on its name alone, kept.
        (1, "RARE", record("W1", given="wilmer", surnames="ccahuana huillca"), False),
    ]
    leads = leads_frame([the_lead, lead("wilmer ccahuana huillca", pk="L2", phone="+51944444444")])
    pairs = pairs_frame(rows)
    full = pairs_score(leads, pairs, FREQ, T)
    pruned = pairs_score(leads, pairs, FREQ, T, prune=True)
    dropped = set(full.candidates["person_key"]) - set(pruned.candidates["person_key"])
    assert dropped == {f"NAMESAKE{i}" for i in range(5)}
    assert full.candidates.filter(pl.col("person_key").str.starts_with("NAMESAKE"))["bits"].max() < T.weak_bits
    assert decisions_make(leads, pruned, T).equals(decisions_make(leads, full, T))
    kept = full.candidates.join(pruned.candidates.select(PERSON), on=PERSON, how="semi").sort(PERSON)
    assert kept.select(*PERSON, pl.col("bits").round(9)).equals(
        pruned.candidates.sort(PERSON).select(*PERSON, pl.col("bits").round(9)))


def test_a_persons_best_record_gives_its_name_evidence():
    records = (record("D1", given="rosa"), record("D2"))
    decision = lead_decide(lead(phone="+51987654321"), [Candidate("P1", records)], FREQ, T)
    name = next(f for f in decision.candidates[0].fields if f.field == "name")
    assert (name.level, name.driver_id) == ("exact", "D2")


# --- A batch is its leads scored one by one ------------------------------------------------

NAMES = sorted(TOKENS)
PHONES = ("+51987654321", "+51987654312", "+51911111111")
records_st = st.builds(
    lambda n, given, surnames, phone, doc: DriverRecord(
        f"D{n}", given_tokens=tuple(given), surname_tokens=tuple(surnames), phone=phone, document=doc),
    st.integers(0, 99), st.lists(st.sampled_from(NAMES), min_size=1, max_size=2, unique=True),
    st.lists(st.sampled_from(NAMES), min_size=0, max_size=2, unique=True),
    st.sampled_from((None, *PHONES)), st.sampled_from((None, "44556677", "44556678")))
leads_st = st.builds(
    lambda name, phone, doc: (tuple(name), phone, doc),
    st.lists(st.sampled_from(NAMES), min_size=0, max_size=4, unique=True),
    st.sampled_from((None, *PHONES)), st.sampled_from((None, "44556677", "44556678")))


@settings(deadline=None, max_examples=25)
@given(st.lists(st.tuples(leads_st, st.lists(st.lists(records_st, min_size=1, max_size=2), max_size=3)),
                min_size=1, max_size=4))
def test_a_batch_decides_each_lead_as_it_would_alone(cases):
    leads, rows = [], []
    for i, ((name, phone, doc), persons) in enumerate(cases):
        leads.append(LeadKeys(f"L{i}", name_tokens=name, phone=phone, document=doc))
        seen = set()
        for p, person_records in enumerate(persons):
            for r in person_records:
                if r.driver_id not in seen:  # a driver record belongs to one person
                    seen.add(r.driver_id)
                    rows.append((i, f"P{i}-{p}", r, False))
    frame = leads_frame(leads)
    scores = pairs_score(frame, pairs_frame(rows), FREQ, T)
    batch = decisions_materialize(decisions_make(frame, scores, T), scores)
    for i, one in enumerate(leads):
        alone_rows = [(0, p, r, x) for li, p, r, x in rows if li == i]
        alone_frame = leads_frame([one])
        alone_scores = pairs_score(alone_frame, pairs_frame(alone_rows), FREQ, T)
        alone = decisions_materialize(decisions_make(alone_frame, alone_scores, T), alone_scores)[one.source_pk]
        assert _rounded(batch[one.source_pk]) == _rounded(alone)


def _rounded(value):
    """A decision with its floats rounded: a batch may add the same weights in another order."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, tuple):
        return tuple(_rounded(v) for v in value)
    if dataclasses.is_dataclass(value):
        return tuple(_rounded(getattr(value, f.name)) for f in dataclasses.fields(value))
    return value


def test_stored_evidence_is_the_decisions_own():
    """The JSON the batch writer stores says what Decision.evidence says."""
    leads = [lead(phone="+51987654321"), lead("rosa flores", pk="L2", phone="+51987654321"), lead("juan", pk="L3")]
    rows = [(0, "P1", record(phone="+51987654321"), False), (1, "P1", record(phone="+51987654321"), False),
            (1, "P2", record("D2", given="rosa", surnames="flores", phone="+51911111111"), True)]
    frame = leads_frame(leads)
    scores = pairs_score(frame, pairs_frame(rows), FREQ, T)
    decisions = decisions_make(frame, scores, T)
    evidence = evidence_json(decisions, scores, T)
    stored = {row["lead_i"]: json.loads(row["evidence"]) for row in evidence.iter_rows(named=True)}
    objects = decisions_materialize(decisions, scores)
    for i, one in enumerate(leads):
        assert _without_nulls(stored[i]) == objects[one.source_pk].evidence(T)
    assert stored[2]["outcome"] == ReasonCode.MISSING_IDENTIFIERS and stored[2]["candidates"] == []


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None or k in ("score", "margin")}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


# --- The registry drives the engine ------------------------------------------------------------


@pytest.fixture
def extra_field(monkeypatch):
    """A field declared only here: a second look at the phone, under its own name."""
    extra = Field("phone_again", "Phone (second look)", Role.SHAREABLE_KEY, Kind.KEY,
                  FIELDS["phone"].levels, "phone", ("phone",), share_rate=0.5)
    monkeypatch.setitem(registry.FIELDS, "phone_again", extra)
    return extra


def test_a_field_declared_in_the_registry_shows_up_in_the_evidence(extra_field):
    decision = lead_decide(lead(phone="+51987654321"), [Candidate("P1", (record(phone="+51987654321"),))], FREQ, T)
    fields = {f["field"]: f["level"] for f in decision.evidence(T)["candidates"][0]["fields"]}
    assert fields["phone_again"] == "exact" == fields["phone"]


@pytest.mark.django_db
def test_a_field_declared_in_the_registry_shows_up_in_explain_lead(extra_field, capsys):
    make_driver(driver_id="D1", first_name="Juan Carlos", last_name="Quispe Mamani", phone="951234567")
    drivers_index_refresh()
    make_lead(external_id="L-explain", first_name="Juan Carlos", last_name="Quispe Mamani", phone="951234567")
    call_command("explain_lead", "L-explain")
    assert "phone_again" in capsys.readouterr().out


# --- Both candidate sources, on PostgreSQL --------------------------------------------------------


@pytest.fixture
def park(db):
    _park(indexed=True)


@pytest.fixture
def unindexed_park(transactional_db):
    """The park, committed, before any refresh of the drivers index."""
    _park(indexed=False)


def _park(*, indexed: bool):
    make_driver(driver_id="D1", first_name="Juan Carlos", last_name="Quispe Mamani", phone="951234567",
                document="44556677")
    make_driver(driver_id="D2", first_name="Rosa", last_name="Quispe Mamani", phone="951234567")  # his sister
    make_driver(driver_id="D3", first_name="Wilmer", last_name="Ccahuana Huillca", document="11223344")
    make_driver(driver_id="D4", first_name="Wilmer", last_name="Ccahuana Huillca", plate="ABC123")
    make_driver(driver_id="D5", first_name="Luz", last_name="Gutierrez Salazar", phone="960703192")
    if indexed:
        drivers_index_refresh()
    # Leads carry only what each case says (the factory would give each a DNI, e-mail and birth date of its own).
    none = {"phone": None, "document": None, "email": None, "birth_date": None}
    make_lead = lambda **fields: _make_lead(**{**none, **fields})  # noqa: E731
    make_lead(external_id="A", first_name="Juan Carlos", last_name="Quispe Mamani", phone="951 234 567")
    make_lead(external_id="B", first_name="Rosa", last_name="Quispe Mamani", phone="951234567")
    make_lead(external_id="C", first_name="Wilmer", last_name="Ccahuana Huillca")
    make_lead(external_id="D", first_name="Wilmer", last_name="Ccahuana Huillca", document="11223345")
    make_lead(external_id="E", first_name="Lzu", last_name="Gutierrez Salazar", phone="960703192")
    make_lead(external_id="F", first_name="Pedro", last_name="Nadie Nunca", phone="999888777")


def _outcomes(context: MatchContext) -> dict:
    resolved = leads_decide_frame(leads_load(), context)
    decisions = decisions_materialize(resolved.decisions, resolved.scores)
    return {pk: (d.outcome, d.person_key, tuple((s.person_key, round(s.bits, 6)) for s in d.candidates))
            for pk, d in decisions.items()}


def test_the_database_lookups_and_the_index_in_memory_decide_alike(park):
    in_sql = _outcomes(MatchContext.load(in_memory=False))
    in_memory = _outcomes(MatchContext.load(in_memory=True))
    assert in_sql == in_memory
    assert in_sql["A"][0] == "link" and in_sql["E"][0] == "link"
    assert in_sql["F"][0] == ReasonCode.NO_CANDIDATES


def test_the_database_and_the_index_in_memory_find_the_same_records_by_value(park):
    # The database probes each value (dates too) instead of one `= ANY`: the same records either way.
    index = IndexFrame.load()
    born = DriverIndexEntry.objects.exclude(birth_date=None).values_list("birth_date", flat=True)[0]
    for column, values in (("birth_date", pl.Series([born, date(1901, 1, 1), None])),
                           ("document", pl.Series(["11223344", "11223344", "99999999"])), ("phone", pl.Series([None]))):
        found = [source.records_with(column, values).select("value", "person_key", "initials").sort("person_key")
                 for source in (SqlIndex(index.freq), index)]
        assert found[0].equals(found[1]), column
        assert found[0].height == {"birth_date": 1, "document": 1, "phone": 0}[column]
    # D3, "Wilmer Ccahuana Huillca": w, c and h.
    assert _found_initials(SqlIndex(index.freq)) == _found_initials(index) == (1 << 22) | (1 << 2) | (1 << 7)


def test_the_equal_rules_want_each_value_some_driver_holds_within_each_rules_cap():
    equal = tuple(rule for rule in registry.BLOCKING_RULES if rule.kind == registry.BlockKind.EQUAL)
    leads = pl.DataFrame({"lead_i": [0, 1, 2], "phone": ["951234567", "999999999", None],
                          "document": ["44556677", None, "12345678"], "email": [None, None, "rosa@mail.pe"],
                          "plate": [None, "ABC123", None]},
                         schema={"lead_i": pl.UInt32, "phone": pl.String, "document": pl.String, "email": pl.String,
                                 "plate": pl.String})
    counts = pl.DataFrame([("phone", "951234567", 2), ("phone", "999999999", 400), ("document", "44556677", 1),
                           ("email", "rosa@mail.pe", 1)], schema=KEYS_SCHEMA, orient="row")
    wanted = equal_wanted(equal, leads, counts).sort("lead_i", "rule")
    # The call centre's phone (400 persons) and the values nobody holds (a plate, a document) want nothing;
    # a document is wanted by both rules that look for it (the document, and a licence's DNI).
    assert wanted.rows() == [(0, "document", "44556677"), (0, "document_in_licence", "44556677"),
                             (0, "phone", "951234567"), (2, "email", "rosa@mail.pe")]


def test_both_sources_find_the_same_persons_by_each_equal_rule(park):
    _make_lead(external_id="G", first_name="Wilmer", last_name="Ccahuana Huillca", document="11223344",
               plate="ABC 123", phone=None, email=None, birth_date=None)
    index = IndexFrame.load()
    leads = leads_load()
    freq = dataclasses.replace(index.freq, keys=index.key_counts(leads))

    def hits(source) -> list[tuple]:
        found = stage_hits(source, 1, leads, freq).join(leads.select("lead_i", "source_pk"), on="lead_i")
        return sorted(found.select("source_pk", "person_key", "rule").unique().rows())

    in_memory, in_sql = hits(index), hits(SqlIndex(index.freq))
    assert in_memory == in_sql
    persons = dict(index.records.select("driver_id", "person_key").rows())
    # A's and B's phone is the family's: both siblings, by the phone rule; E's phone is Luz's. C gives no key,
    # D's document is one typo off (stage 2's), F's phone is nobody's.
    family = [(persons["D1"], "phone"), (persons["D2"], "phone")]
    # G: Wilmer's DNI (D3's document; a licence holding it too would be found by its own rule), and D4's plate.
    records = index.records
    wilmer = {(person, rule) for rule, column, value in (("document", "document", "11223344"),
                                                         ("document_in_licence", "license_document", "11223344"),
                                                         ("plate", "plate", "ABC123"))
              for person in records.filter(pl.col(column) == value)["person_key"]}
    assert {rule for _, rule in wilmer} >= {"document", "plate"}
    assert in_sql == sorted([("A", *hit) for hit in family] + [("B", *hit) for hit in family]
                            + [("E", persons["D5"], "phone")] + [("G", *hit) for hit in wilmer])


def _found_initials(source) -> int:
    return source.records_with("document", pl.Series(["11223344"]))["initials"].item()


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_small_batch_scored_once_decides_as_the_staged_path(park, in_memory):
    # G settles in stage 1 (its document), and its name also blocks D4, a namesake stage 1 never found:
    # scored once, D4 is in the pass but must stay out of G's decision and evidence.
    none = {"phone": None, "document": None, "email": None, "birth_date": None}
    _make_lead(**{**none, "external_id": "G", "first_name": "Wilmer", "last_name": "Ccahuana Huillca",
                  "document": "11223344"})
    context = MatchContext.load(in_memory=in_memory)
    leads = leads_load()
    staged = leads_decide_frame(leads, context, score_once=False, per_record=True)
    once = leads_decide_frame(leads, context, score_once=True, per_record=True)
    assert leads.height <= resolution.SCORE_ONCE_MAX_LEADS  # what the single-lead path does by default
    _assert_same_resolved(once, staged, context)
    g = once.decisions.filter(pl.col("source_pk") == "G")
    assert g["outcome"].item() == "link"
    d4 = IndexFrame.load().records.filter(pl.col("driver_id") == "D4")["person_key"].item()
    g_candidates = once.scores.candidates.join(g.select("lead_i"), on="lead_i")["person_key"].to_list()
    assert d4 not in g_candidates


def _assert_same_resolved(once, staged, context) -> None:
    assert once.decisions.equals(staged.decisions)
    assert evidence_json(once.decisions, once.scores, context.thresholds).sort("lead_i").equals(
        evidence_json(staged.decisions, staged.scores, context.thresholds).sort("lead_i"))
    for frame in ("candidates", "fields", "records"):
        theirs, ours = getattr(staged.scores, frame), getattr(once.scores, frame)
        order = [c for c in ("lead_i", "person_key", "driver_id", "field") if c in theirs.columns]
        assert ours.sort(order).equals(theirs.sort(order)), frame
    hits = ["lead_i", "person_key", "rule"]
    assert once.hits.select(hits).unique().sort(hits).equals(staged.hits.select(hits).unique().sort(hits))


@pytest.mark.parametrize("in_memory", [True, False])
def test_each_lead_alone_scored_once_decides_as_the_staged_path(park, in_memory):
    # One lead a batch, as a lead arriving now: a lead no key finds, and one a key finds without settling,
    # go on to stage 2 whole (_decide_scored_once's shortcut); a lead a key settles stops at stage 1.
    # The family phone finds D1 and D2, neither of them "Maria": unsettled, her surnames block both again.
    _make_lead(external_id="M", first_name="Maria", last_name="Quispe Mamani", phone="951234567", document=None,
               email=None, birth_date=None)
    context = MatchContext.load(in_memory=in_memory)
    paths = set()
    for pk in leads_load()["source_pk"]:
        lead = leads_load([pk])
        staged = leads_decide_frame(lead, context, score_once=False, per_record=True)
        once = leads_decide_frame(lead, context, score_once=True, per_record=True)
        _assert_same_resolved(once, staged, context)
        paths.add((bool(staged.hits.filter(pl.col("rule").is_in([r.name for r in registry.BLOCKING_RULES
                                                                   if r.stage == 1])).height),
                   staged.decisions["outcome"].item() in resolution.SETTLED_BY_KEYS,
                   bool(staged.hits.filter(pl.col("rule").is_in([r.name for r in registry.BLOCKING_RULES
                                                                    if r.stage == 2])).height)))
    # Each way through: no key hit and stage 2's candidates; a key hit, unsettled, and stage 2's; settled.
    assert {(False, False, True), (True, False, True)} <= paths and any(settled for _, settled, _ in paths)


def test_blocking_report_counts_each_rules_new_pairs(park):
    report = {r.rule: r for r in blocking_report(leads_load(), IndexFrame.load())}
    assert report["phone"].pairs == 5  # A and B reach both siblings; E reaches Luz
    assert report["document"].new_pairs == 0  # no lead's document is on a record
    assert report["name_tokens"].pairs >= 4 and report["name_tokens"].new_leads == 2  # C and D


def test_blocking_report_counts_the_links_each_rule_finds(park, capsys):
    leads_match()
    linked = IdentityLink.objects.filter(source_table=SourceTable.CABINET_LEADS)
    links = pl.DataFrame([(link.source_pk, str(link.person_id)) for link in linked],
                         schema={"source_pk": pl.String, "person_key": pl.String}, orient="row")
    assert sorted(links["source_pk"]) == ["A", "B", "D", "E"]
    report = {r.rule: (r.links, r.new_links) for r in blocking_report(leads_load(), IndexFrame.load(), links)}
    assert report["phone"] == (3, 3)  # A, B and E by their phone
    assert report["name_tokens"] == (4, 1)  # all four by name; D by name first
    assert report["document_one_typo"] == (1, 0)  # D's document is one typo off D3's; found by name already
    assert sum(new for _, new in report.values()) == 4  # every link found once
    call_command("blocking_report")
    out = capsys.readouterr().out
    assert "6 leads, 4 of them linked" in out and "links some rule finds: 4 of 4 linked leads" in out


def test_leads_match_writes_links_and_unmatched_rows_with_evidence_in_bulk(park, settings):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1  # the in-memory path even for this small park
    totals = leads_match()
    assert totals["processed"] == 6 and totals["linked"] >= 2
    link = IdentityLink.objects.get(source_pk="A")
    assert link.evidence["rule_version"] and link.evidence["candidates"][0]["fields"]
    assert IdentityUnmatched.objects.get(source_pk="F").reason_code == ReasonCode.NO_CANDIDATES
    assert leads_match(redecide=True)["processed"] == 6 - totals["linked"]  # linked leads are not decided again


def test_frequencies_from_the_index_in_memory_and_from_sql_agree(park):
    in_sql, in_memory = frequencies_load(), IndexFrame.load().freq
    assert (in_sql.persons, in_sql.drivers) == (in_memory.persons, in_memory.drivers)
    sort = ["park_id", "hire_date"]
    assert in_sql.hires_frame().sort(sort).equals(in_memory.hires_frame().sort(sort))
    tokens_in_sql = dataclasses.replace(in_sql, keys={}).tokens_frame().sort("token")
    assert tokens_in_sql.equals(in_memory.tokens_frame().sort("token"))
    assert isinstance(in_memory.tokens, pl.DataFrame)


@pytest.fixture
def typo_park(db):
    """A lead whose document and two name tokens are each one typo off its driver's: no exact key, no
    known pair of name tokens; only the birth date with the name's initials finds the driver."""
    make_driver(driver_id="T1", first_name="Marisol", last_name="Huamani Ttito", phone="951000111",
                document="70112233", birth_date=date(1970, 2, 3))
    # Same birth date, initials in common with the lead's but one: not a candidate of the rule.
    make_driver(driver_id="T2", first_name="Rosa", last_name="Huamani Quispe", birth_date=date(1970, 2, 3))
    drivers_index_refresh()
    _make_lead(external_id="TYPO", first_name="Marsiol", last_name="Huamani Titto", document="70112234",
               phone=None, email=None, birth_date=date(1970, 2, 3))


@pytest.mark.parametrize("in_memory", [True, False])
def test_birth_date_initials_blocking_finds_a_lead_with_a_typo_in_every_key(typo_park, in_memory):
    context = MatchContext.load(in_memory=in_memory)
    resolved = leads_decide_frame(leads_load(), context)
    rules = resolved.hits.group_by("person_key").agg(pl.col("rule").unique())
    found = {tuple(sorted(r)) for r in rules["rule"].to_list()}
    # T1 only, by its birth date and by its document one typo off; T2 shares the date and one initial ("h")
    assert found == {("birth_date_initials", "document_one_typo")}
    decision = decisions_materialize(resolved.decisions, resolved.scores)["TYPO"]
    assert decision.is_link
    assert {f.field: f.level for f in decision.candidates[0].fields}["document"] == "one_typo"


def test_birth_date_initials_blocking_needs_the_initials(typo_park):
    rule = next(r for r in registry.BLOCKING_RULES if r.name == "birth_date_initials")
    leads = leads_load()
    assert initials_hits(IndexFrame.load(), rule, leads).height == 1
    other = leads.with_columns(pl.lit(["rosa", "quispe"]).alias("name_tokens"))  # initials r, q: T2 shares both
    hits = initials_hits(IndexFrame.load(), rule, other)
    assert hits.height == 1 and hits["person_key"][0] != initials_hits(IndexFrame.load(), rule, leads)["person_key"][0]
    no_date = leads.with_columns(pl.lit(None, pl.Date).alias("birth_date"))
    assert initials_hits(IndexFrame.load(), rule, no_date).height == 0


@pytest.fixture
def compound_name_park(db, monkeypatch):
    """A compound given name: three drivers are "César Augusto Rojas", one of them Quispe too, and four
    others are Quispes. The lead's three rarest tokens (augusto, cesar, rojas) are carried by three drivers,
    over the name rule's cap (2 here, as 100 is at a million drivers for names like it); only the four
    tokens together find its driver."""
    capped = tuple(dataclasses.replace(r, cap=2) if r.name == "name_tokens" else r for r in registry.BLOCKING_RULES)
    monkeypatch.setattr(candidates_module, "BLOCKING_RULES", capped)
    none = {"phone": None, "document": None, "email": None, "plate": None, "birth_date": None}
    make_driver(driver_id="C1", first_name="César Augusto", last_name="Rojas Quispe", **none)
    make_driver(driver_id="C2", first_name="Cesar Augusto", last_name="Rojas Vega", **none)
    make_driver(driver_id="C3", first_name="César Augusto", last_name="Rojas Soto", **none)
    for i, first in enumerate(["Maria", "Pedro", "Ana", "Luis"]):
        make_driver(driver_id=f"Q{i}", first_name=first, last_name="Quispe Flores", **none)
    drivers_index_refresh()
    _make_lead(external_id="CAQR", first_name="CESAR AUGUSTO", last_name="ROJAS QUISPE", phone="999000111",
               document=None, email=None, birth_date=None)


def test_name_blocks_add_the_four_rarest_tokens_where_their_triple_is_a_block():
    tokens = {"augusto": 10, "cesar": 20, "rojas": 30, "quispe": 40,
              "carlos": 20_000, "flores": 20_000, "mamani": 20_000, "juan": 30_000}
    freq = frequencies_load(records=pl.DataFrame(schema=RECORD_SCHEMA), tokens=pl.DataFrame(
        {"token": list(tokens), "drivers": list(tokens.values())}, schema={"token": pl.String, "drivers": pl.Int64}))
    freq = dataclasses.replace(freq, drivers=100_000)
    leads = pl.DataFrame({"lead_i": [0, 1, 2], "name_tokens": [["cesar", "augusto", "quispe", "rojas"],
                                                               ["cesar", "augusto", "rojas"],
                                                               ["juan", "carlos", "mamani", "flores"]]},
                         schema={"lead_i": pl.UInt32, "name_tokens": pl.List(pl.String)})
    blocks = {(i, tuple(b)) for i, b in name_blocks(leads, freq).iter_rows()}
    assert (0, ("augusto", "cesar", "rojas", "quispe")) in blocks
    assert (0, ("augusto", "cesar", "rojas")) in blocks
    assert not any(i == 1 and len(b) == 4 for i, b in blocks)  # three tokens: no block of four
    # Common tokens: the triple (carlos, flores, mamani) would hold 800 drivers were tokens independent, over
    # NAME_BLOCK_MAX_EXPECTED, so it is no block; nor are the four (240 expected), because their triple is not.
    assert not any(i == 2 and len(b) >= 3 for i, b in blocks)


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_compound_given_name_over_the_cap_is_narrowed_by_the_other_tokens(compound_name_park, in_memory):
    context = MatchContext.load(in_memory=in_memory)
    resolved = leads_decide_frame(leads_load(), context)
    person_of = dict(DriverIndexEntry.objects.values_list("driver_id", "person_id"))
    found = {(str(person), rule) for person, rule in resolved.hits.select("person_key", "rule").unique().iter_rows()}
    assert found == {(str(person_of["C1"]), "name_tokens")}
    decision = decisions_materialize(resolved.decisions, resolved.scores)["CAQR"]
    assert {f.field: f.level for f in decision.candidates[0].fields}["name"] == "exact"


@pytest.fixture
def key_typo_park(db):
    """Leads whose document (K1) or phone (K2) is one typo off their driver's and whose given name and a
    surname are typed wrong too: no exact key, no known pair of name tokens, no birth date; only a
    key's one-typo neighbours with the name's initials find the driver."""
    make_driver(driver_id="K1", first_name="Yesenia", last_name="Ccorimanya Huallpa", phone="951000222",
                document="41526374")
    make_driver(driver_id="K2", first_name="Wilfredo", last_name="Pumacayo Tintaya", phone="962000333",
                document="52637485")
    # One typo off the DOC lead's document as well, but another name: its initials (r, q) are not the lead's.
    make_driver(driver_id="K3", first_name="Rosa", last_name="Quispe", document="41526348")
    drivers_index_refresh()
    _make_lead(external_id="DOC", first_name="Yessenia", last_name="Ccorimanay Huallpa", document="41526347",
               phone=None, email=None, birth_date=None)
    _make_lead(external_id="PHONE", first_name="Wilfreddo", last_name="Pumacayo Tintayaa", document=None,
               phone="962000343", email=None, birth_date=None)


@pytest.mark.parametrize("in_memory", [True, False])
def test_one_typo_blocking_finds_a_lead_whose_key_and_name_both_carry_a_typo(key_typo_park, in_memory):
    context = MatchContext.load(in_memory=in_memory)
    resolved = leads_decide_frame(leads_load(), context)
    pks = dict(zip(resolved.decisions["lead_i"], resolved.decisions["source_pk"], strict=True))
    found = {(pks[i], rule) for i, rule in resolved.hits.select("lead_i", "rule").unique().iter_rows()}
    assert found == {("DOC", "document_one_typo"), ("PHONE", "phone_one_typo")}
    assert resolved.hits["person_key"].n_unique() == 2  # K1 and K2; not K3 (other initials)
    decisions = decisions_materialize(resolved.decisions, resolved.scores)
    doc, phone = decisions["DOC"].candidates[0], decisions["PHONE"].candidates[0]
    assert {f.field: f.level for f in doc.fields}["document"] == "one_typo"
    assert {f.field: f.level for f in phone.fields}["phone"] == "one_typo"
    assert decisions["DOC"].is_link  # a personal key one typo off, given name and surname agreeing


def test_one_typo_blocking_needs_the_initials(key_typo_park):
    rule = next(r for r in registry.BLOCKING_RULES if r.name == "document_one_typo")
    leads = leads_load().filter(pl.col("source_pk") == "DOC")
    k1 = initials_hits(IndexFrame.load(), rule, leads)
    assert k1.height == 1
    k3 = initials_hits(IndexFrame.load(), rule, leads.with_columns(pl.lit(["rosa", "quispe"]).alias("name_tokens")))
    assert k3.height == 1 and k3["person_key"][0] != k1["person_key"][0]
    nobody = leads.with_columns(pl.lit(["pedro", "mamani"]).alias("name_tokens"))
    assert initials_hits(IndexFrame.load(), rule, nobody).height == 0


def test_one_typo_blocking_beside_a_document_needs_one_initial_and_beside_a_phone_two(key_typo_park):
    # "Yesenia Flores": only the given name's initial is K1's (y, c, h); K2's phone one typo off likewise.
    document_rule, phone_rule = (next(r for r in registry.BLOCKING_RULES if r.name == name)
                                 for name in ("document_one_typo", "phone_one_typo"))
    one_initial = leads_load().with_columns(pl.lit(["yesenia", "flores"]).alias("name_tokens"))
    doc = one_initial.filter(pl.col("source_pk") == "DOC")
    index = IndexFrame.load()
    k1 = index.records.filter(pl.col("driver_id") == "K1")["person_key"].item()
    for source in (index, SqlIndex(index.freq)):
        assert initials_hits(source, document_rule, doc)["person_key"].to_list() == [k1]
    phone = (one_initial.filter(pl.col("source_pk") == "PHONE")
             .with_columns(pl.lit(["wilfredo", "flores"]).alias("name_tokens")))
    assert initials_hits(IndexFrame.load(), phone_rule, phone).height == 0


# K1's DNI 41526374 typed with a digit dropped (the last: normalized 04152637, as any 7-digit number) or
# typed twice; K4's 5263741 on its record (stored 05263741) with the lead's DNI a digit longer.
@pytest.mark.parametrize(("typed", "driver"), [("4152637", "K1"), ("4152674", "K1"), ("415263744", "K1"),
                                               ("052637419", "K4"), ("52637411", "K4")])
def test_one_typo_blocking_beside_a_document_finds_a_digit_dropped_or_typed_twice(key_typo_park, typed, driver):
    make_driver(driver_id="K4", first_name="Yesenia", last_name="Huallpa Quispe", document="5263741")
    drivers_index_refresh()
    rule = next(r for r in registry.BLOCKING_RULES if r.name == "document_one_typo")
    CabinetLead.objects.filter(external_id="DOC").update(document=typed)
    doc = leads_load().filter(pl.col("source_pk") == "DOC")  # initials y, c, h: two of K1's, two of K4's
    index = IndexFrame.load()
    wanted = index.records.filter(pl.col("driver_id") == driver)["person_key"].item()
    for source in (index, SqlIndex(index.freq)):
        assert initials_hits(source, rule, doc)["person_key"].to_list() == [wanted]
        assert initials_hits(source, dataclasses.replace(rule, indels=False), doc).height == 0
        # Through a dropped or added digit one shared initial is not enough (beside a same-length typo it is).
        one_initial = doc.with_columns(pl.lit(["yesenia", "flores"]).alias("name_tokens"))
        assert initials_hits(source, rule, one_initial).height == 0
    resolved = leads_decide_frame(doc, MatchContext.load(in_memory=True))
    decision = decisions_materialize(resolved.decisions, resolved.scores)["DOC"]
    assert {f.field: f.level for f in decision.candidates[0].fields}["document"] == "one_typo"


def test_one_typo_variants_are_the_one_typo_level_of_a_key():
    wanted = pl.DataFrame({"lead_i": [0, 1, 2], "value": ["41526374", "+51962000333", "CE0A1"]})
    variants = one_typo_variants(wanted)
    for i, value in enumerate(wanted["value"]):
        mine = variants.filter(pl.col("lead_i") == i)["value"].to_list()
        assert len(mine) == len(set(mine)) and value not in mine
        assert all(len(v) == len(value) and DamerauLevenshtein.distance(v, value) == 1 for v in mine)
    dni = variants.filter(pl.col("lead_i") == 0)["value"].to_list()
    assert len(dni) == 8 * 9 + 7  # every digit changed to another, every neighbouring pair swapped
    assert "41526347" in dni and "41526384" in dni and "41526X74" not in dni
    phone = variants.filter(pl.col("lead_i") == 1)["value"]
    assert phone.str.starts_with("+").all()  # "+" is never changed
    ce = variants.filter(pl.col("lead_i") == 2)["value"].to_list()
    assert "CE0B1" in ce and "CE091" in ce and "CE0A1" not in ce  # a letter becomes a letter or a digit
    assert one_typo_variants(wanted.clear()).height == 0


def test_one_typo_variants_with_indels_add_a_character_dropped_or_added():
    wanted = pl.DataFrame({"lead_i": [0, 1], "value": ["41526374", "CE0A1"]})
    variants = one_typo_variants(wanted, indels=True)
    for i, value in enumerate(wanted["value"]):
        mine = variants.filter(pl.col("lead_i") == i)["value"].to_list()
        assert len(mine) == len(set(mine)) and value not in mine
        assert all(DamerauLevenshtein.distance(v, value) == 1 for v in mine)
        assert set(one_typo_variants(wanted, indels=False).filter(pl.col("lead_i") == i)["value"]) < set(mine)
    dni = variants.filter(pl.col("lead_i") == 0)["value"].to_list()
    # 79 as above; 8 digits dropped (all different); 9 places x 10 digits, less the 8 that double a digit twice
    assert len(dni) == 79 + 8 + 9 * 10 - 8
    assert {"4152637", "415263744", "1526374", "415263740", "041526374"} <= set(dni)
    assert all(v.isdigit() for v in dni)  # a digit goes into a number
    ce = variants.filter(pl.col("lead_i") == 1)["value"].to_list()
    assert "CEX0A1" in ce and "CE0A" in ce  # a letter or digit into other values


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="0123456789AZ+-ñ", min_size=1, max_size=12), min_size=65, max_size=90),
       st.booleans())
def test_one_typo_variants_frame_wise_and_value_by_value_agree(values, indels):
    wanted = pl.DataFrame({"lead_i": range(len(values)), "value": values},
                          schema={"lead_i": pl.UInt32, "value": pl.String})
    assert wanted.height > _VARIANTS_IN_PYTHON_MAX  # the frame-wise way
    frame_wise = one_typo_variants(wanted, indels).sort("lead_i", "value")
    assert frame_wise.equals(_one_typo_variants_small(wanted, indels).sort("lead_i", "value"))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="000123456789A", min_size=1, max_size=10), min_size=1, max_size=90))
def test_typo_variants_as_indexed_frame_wise_and_value_by_value_agree(values):
    rule = next(r for r in registry.BLOCKING_RULES if r.name == "document_one_typo")
    wanted = pl.DataFrame({"lead_i": range(len(values)), "value": values},
                          schema={"lead_i": pl.UInt32, "value": pl.String})
    small = _typo_variants_as_indexed_small(wanted, rule).sort("lead_i", "value")
    filler = pl.DataFrame({"lead_i": range(1000, 1000 + _VARIANTS_IN_PYTHON_MAX), "value": "41526374"},
                          schema={"lead_i": pl.UInt32, "value": pl.String})  # past the Python way's bound
    frame_wise = _typo_variants_as_indexed(pl.concat([wanted, filler]), rule)
    assert frame_wise.filter(pl.col("lead_i") < 1000).sort("lead_i", "value").equals(small)
    for (lead_i, value), rows in small.group_by("lead_i", "value"):
        assert rows.height == 1 and value != values[lead_i] and rows["initials_min"][0] in (1, 2)


# --- m estimated from the data, used by the scorer ------------------------------------------------


def test_an_estimated_m_moves_its_levels_bits_by_log2_of_the_ratio():
    the_lead = lead(document="44556677", birth_date=date(1990, 1, 2))
    the_record = record(document="44556677", birth_date=date(1990, 1, 3))
    declared = lead_decide(the_lead, [Candidate("P1", (the_record,))], FREQ, T).candidates[0]
    halved = {"document": {"exact": FIELDS["document"].level("exact").m / 2},
              "birth_date": {"near": FIELDS["birth_date"].level("near").m * 4}}
    shifted = dataclasses.replace(FREQ, m=halved)
    estimated = lead_decide(the_lead, [Candidate("P1", (the_record,))], shifted, T).candidates[0]
    bits = lambda scored: {f.field: f.bits for f in scored.fields}  # noqa: E731
    assert bits(estimated)["document"] == pytest.approx(bits(declared)["document"] - 1.0)
    assert bits(estimated)["birth_date"] == pytest.approx(bits(declared)["birth_date"] + 2.0)
    assert bits(estimated)["name"] == pytest.approx(bits(declared)["name"])
    assert estimated.bits == pytest.approx(declared.bits + 1.0)


def test_the_prior_is_the_estimated_share_of_leads_with_a_driver_when_there_is_one():
    assert FREQ.prior_bits == pytest.approx(-math.log2(1_000_000 + PSEUDO_PERSONS))  # declared
    half = dataclasses.replace(FREQ, match_share=0.5)
    assert half.prior_bits == pytest.approx(math.log2(0.5 / (1_000_000 - 0.5)))
    the_lead = lead(document="44556677", birth_date=date(1990, 1, 2))
    the_record = record(document="44556677", birth_date=date(1990, 1, 3))
    declared = lead_decide(the_lead, [Candidate("P1", (the_record,))], FREQ, T).candidates[0]
    estimated = lead_decide(the_lead, [Candidate("P1", (the_record,))], half, T).candidates[0]
    assert estimated.bits - declared.bits == pytest.approx(half.prior_bits - FREQ.prior_bits)
    # A park of three persons where every lead has a driver: odds of one in two, not 1 in 10,003.
    tiny = Frequencies(persons=3, drivers=3, match_share=0.99)
    assert tiny.prior_bits == pytest.approx(math.log2(0.99 / 2.01))


def test_a_run_s_candidates_are_reweighed_to_a_new_m_as_if_scored_with_it(park):
    context = MatchContext.load(in_memory=True)
    leads = leads_load()
    scored = leads_decide_frame(leads, context).scores.candidates
    new_m = {"document": {"exact": 0.5, "different": 0.08}, "name": {"typo": 0.2, "exact": 0.6}}
    rescored_context = dataclasses.replace(context, freq=dataclasses.replace(context.freq, m=new_m, match_share=0.4))
    rescored = leads_decide_frame(leads, rescored_context).scores.candidates
    reweighed = scored.select("lead_i", "person_key", candidate_weights(scored, context.freq, new_m))
    expected = rescored.select("lead_i", "person_key",
                               (pl.col("bits") - rescored_context.freq.prior_bits).alias("expected"))
    both = reweighed.join(expected, on=["lead_i", "person_key"])
    assert both.height == scored.height > 5
    assert (both["weight"] - both["expected"]).abs().max() < 1e-9
    assert (both["weight"] - scored["bits"]).abs().max() > 1  # the m moved something


@pytest.mark.django_db
def test_every_matching_path_scores_with_the_latest_match_model():
    assert MatchContext.load().freq.m == {}
    MatchModel.objects.create(leads=10, pairs=500, m={"document": {"exact": 0.5}})
    MatchModel.objects.create(leads=10, pairs=900, m={"document": {"exact": 0.9}}, match_share=0.6)
    assert MatchContext.load().freq.m == {"document": {"exact": 0.9}}
    assert MatchContext.load(in_memory=True).freq.m == {"document": {"exact": 0.9}}
    assert MatchContext.load().freq.match_share == MatchContext.load(in_memory=True).freq.match_share == 0.6


def test_a_match_run_estimates_its_model_and_says_what_the_data_cannot_support(park, settings, monkeypatch, caplog):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    monkeypatch.setattr(resolution, "ESTIMATE_MIN_LEADS", 1)
    totals = leads_match()
    model = MatchModel.objects.get()
    assert model.leads == 6 and model.pairs >= 5 and model.run_id is not None
    # Six leads: every compared field rests on fewer pairs than an estimate needs; each keeps its declared m,
    # and the share of leads with a driver rests on fewer leads than it needs: the declared prior is kept.
    assert model.m == {} and totals["m_levels_estimated"] == 0
    *m_failures, share_failure = model.failures
    assert m_failures and all("fewer than the 100 required" in line for line in m_failures)
    assert share_failure == ("share of leads with a driver rests on 6 leads with an identifier, "
                             "fewer than the 500 required")
    assert model.match_share is None and model.share_estimate["status"] == "too_few_leads"
    messages = [r.getMessage() for r in caplog.records]
    assert any("the declared m is kept" in m for m in messages)
    assert any("the declared prior is kept" in m for m in messages)


def test_a_match_run_estimates_the_share_of_leads_with_a_driver_and_scores_with_it(park, settings, monkeypatch):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    monkeypatch.setattr(resolution, "ESTIMATE_MIN_LEADS", 1)
    monkeypatch.setattr(estimate, "MIN_SHARE_LEADS", 1)
    declared = leads_decide_frame(leads_load(), MatchContext.load(in_memory=True)).decisions
    leads_match()
    model = MatchModel.objects.get()
    assert model.share_estimate["leads"] == 6 and model.share_estimate["status"] in ("ok", "bounded")
    assert SHARE_RANGE[0] <= model.match_share <= SHARE_RANGE[1]
    context = MatchContext.load(in_memory=True)
    assert context.freq.match_share == model.match_share
    # Scored with the estimated prior: every score moves by the same number of bits (m aside, none estimated).
    moved = leads_decide_frame(leads_load(), context).decisions
    shift = context.freq.prior_bits + math.log2(context.freq.population)
    both = declared.join(moved, on="source_pk", suffix="_new").drop_nulls("score")
    assert both.height and ((both["score_new"] - both["score"]) - shift).abs().max() < 0.01


def test_a_lead_decided_since_the_index_and_the_model_last_changed_is_not_decided_again(transactional_db, park,
                                                                                         settings):
    """Committed runs, as in production (inside one test transaction every row has the same now())."""
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    first = leads_match()
    undecided = 6 - first["linked"]
    assert undecided >= 2
    assert leads_match()["processed"] == 0  # same index, same model, same leads: same decisions
    assert leads_match(redecide=True)["processed"] == undecided
    CabinetLead.objects.filter(external_id="F").update(updated_at=Now())  # the lead changed
    assert leads_match()["processed"] == 1
    drivers_index_refresh(full=True)  # nothing changed in the drivers: nothing to decide again
    assert leads_match()["processed"] == 0
    make_driver(driver_id="D9", first_name="Pedro", last_name="Nadie Nunca")
    drivers_index_refresh()  # the index changed: every unlinked lead is decided again
    assert leads_match()["processed"] == undecided


def test_chunks_written_by_a_second_thread_while_the_next_is_decided(transactional_db, park, settings, monkeypatch):
    """Committed data (the writer thread has a connection of its own): three chunks of two leads."""
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    monkeypatch.setattr(resolution, "DECIDE_BATCHES", 1)
    alone = {pk: d.outcome for pk, d in decisions_materialize(*_decided(MatchContext.load())).items()}
    totals = leads_match(batch_size=2)
    assert totals["processed"] == 6 and totals["linked"] == sum(o == "link" for o in alone.values())
    lead_links = IdentityLink.objects.filter(source_table="module_ct_cabinet_leads")
    linked = set(lead_links.values_list("source_pk", flat=True))
    assert linked == {pk for pk, outcome in alone.items() if outcome == "link"}
    unmatched = dict(IdentityUnmatched.objects.values_list("source_pk", "reason_code"))
    assert unmatched == {pk: outcome for pk, outcome in alone.items() if outcome != "link"}
    assert JobRun.objects.get(name="match_leads").counts["processed"] == 6


def _lead_outcomes() -> dict:
    """What the runs wrote for each lead: ("link", its person's drivers) or its open unmatched reason."""
    written = {pk: reason for pk, reason in IdentityUnmatched.objects.filter(status="open")
               .values_list("source_pk", "reason_code")}
    for link in IdentityLink.objects.filter(source_table=SourceTable.CABINET_LEADS):
        drivers = IdentityLink.objects.filter(source_table=SourceTable.DRIVERS, person_id=link.person_id)
        written[link.source_pk] = ("link", tuple(sorted(drivers.values_list("source_pk", flat=True))))
    return written


@pytest.fixture
def decided_beside_the_build(monkeypatch):
    """Holds the first build's writes until the matcher has decided a chunk against the index it handed
    over (a matcher that waited for the build would never get there: the build goes on after 30 s)."""
    decided = threading.Event()
    resolve = resolution.leads_resolve_frame

    def resolve_noted(*args, **kwargs):
        outcome = resolve(*args, **kwargs)
        decided.set()
        return outcome

    write = linking.drivers_first_write

    def write_held(**kwargs):
        decided.wait(30)
        return write(**kwargs)

    monkeypatch.setattr(resolution, "leads_resolve_frame", resolve_noted)
    monkeypatch.setattr(linking, "drivers_first_write", write_held)
    return decided


def test_match_with_refresh_decides_beside_the_first_build_as_after_it(unindexed_park, settings, monkeypatch,
                                                                      decided_beside_the_build):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    monkeypatch.setattr(resolution, "DECIDE_BATCHES", 1)
    totals = leads_match(refresh=True, batch_size=2)
    assert decided_beside_the_build.is_set()  # decided before the build wrote its persons
    assert totals["processed"] == 6
    runs = dict(JobRun.objects.values_list("name", "status"))
    assert runs == {"refresh_drivers_index": "succeeded", "match_leads": "succeeded"}
    beside = _lead_outcomes()
    assert {pk for pk, outcome in beside.items() if outcome[0] == "link"} == {"A", "B", "D", "E"}
    assert beside["A"] == ("link", ("D1",)) and beside["F"] == ReasonCode.NO_CANDIDATES
    # The same decisions as a run after the committed build makes against the same index.
    after = decisions_materialize(*_decided(MatchContext.load(in_memory=True)))
    assert {pk: d.outcome for pk, d in after.items()} == {
        pk: "link" if isinstance(outcome, tuple) else outcome for pk, outcome in beside.items()}
    persons = dict(IdentityLink.objects.filter(source_table=SourceTable.CABINET_LEADS)
                   .values_list("source_pk", "person_id"))
    assert {pk: d.person_key for pk, d in after.items() if d.outcome == "link"} == {
        pk: str(person) for pk, person in persons.items()}


def test_a_first_build_failing_beside_the_match_leaves_nothing_written(unindexed_park, settings, monkeypatch,
                                                                       decided_beside_the_build):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    write = linking.drivers_first_write

    def write_fails(**kwargs):
        write(**kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(linking, "drivers_first_write", write_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        leads_match(refresh=True)
    assert decided_beside_the_build.is_set()
    assert not IdentityLink.objects.exists() and not IdentityUnmatched.objects.exists()
    assert not DriverIndexEntry.objects.exists()
    assert dict(JobRun.objects.values_list("name", "status")) == {"refresh_drivers_index": "failed",
                                                                  "match_leads": "failed"}


def test_match_with_refresh_when_the_builds_index_fails_matches_after_the_build(unindexed_park, settings,
                                                                                monkeypatch):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1

    def index_fails(entries, freq):
        raise MemoryError("no room for the index")

    monkeypatch.setattr(index_module, "_index_of", index_fails)
    totals = leads_match(refresh=True)  # the build stands; the leads are decided after it, from the tables
    assert totals["processed"] == 6 and totals["linked"] == 4
    assert dict(JobRun.objects.values_list("name", "status")) == {"refresh_drivers_index": "succeeded",
                                                                  "match_leads": "succeeded"}


def test_match_with_refresh_after_an_incremental_refresh(transactional_db, park, settings):
    settings.CT4_IN_MEMORY_MIN_LEADS = 1
    assert leads_match()["linked"] == 4
    make_driver(driver_id="D9", first_name="Pedro", last_name="Nadie Nunca", phone="999888777")
    totals = leads_match(refresh=True)
    assert totals["processed"] == 2 and totals["linked"] == 1  # C and F decided again; F has a driver now
    assert _lead_outcomes()["F"] == ("link", ("D9",))
    assert JobRun.objects.filter(name="refresh_drivers_index").count() == 2


@pytest.mark.django_db
def test_match_with_refresh_refuses_a_dry_run():
    with pytest.raises(CommandError, match="--refresh does not combine"):
        call_command("match_leads", "--refresh", "--dry-run")


def _decided(context: MatchContext):
    resolved = leads_decide_frame(leads_load(), context)
    return resolved.decisions, resolved.scores


@given(st.lists(st.integers(0, 50), max_size=40), st.lists(st.integers(0, 60), max_size=40))
def test_contained_answers_each_wanted_key_in_its_own_order(keys, wanted):
    import numpy as np  # noqa: PLC0415 (only this test needs numpy itself)

    sorted_keys = np.array(sorted(set(keys)), dtype=np.uint64)
    found = _contained(sorted_keys, np.array(wanted, dtype=np.uint64))
    assert found.tolist() == [w in set(keys) for w in wanted]
