"""The column-wise (Polars) twins give exactly their scalar normalizer mapped over the Series."""

import string

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import identity.normalize
from identity.normalize import (
    DOCUMENT_NUMBER_WORDS,
    DOCUMENT_TYPE_PREFIXES,
    EMAIL_TRIM,
    FOLD_DELETE,
    FOLD_FROM,
    NAME_MAX_CHARS,
    NAME_PARTICLES,
    PHONE_SEPARATORS,
    document_from_license,
    documents_column,
    emails_column,
    license_documents_column,
    name_key,
    name_keys_column,
    name_tokens,
    name_tokens_column,
    normalize_document,
    normalize_email,
    normalize_phone,
    normalize_plate,
    phones_column,
    plates_column,
)
from identity.tests.test_normalize import (
    DOCUMENT_EXAMPLES,
    EMAIL_EXAMPLES,
    LICENSE_EXAMPLES,
    MOBILE_SPELLINGS,
    PHONENUMBERS_EXAMPLES,
    PLACEHOLDER_PHONES,
    PLATE_EXAMPLES,
    REALISTIC,
    UNUSABLE_PHONES,
    any_value,
    names,
)

TWINS = [
    (phones_column, normalize_phone),
    (documents_column, normalize_document),
    (license_documents_column, document_from_license),
    (emails_column, normalize_email),
    (plates_column, normalize_plate),
]
TWIN_IDS = [twin.__name__ for twin, _ in TWINS]


def column(values) -> pl.Series:
    return pl.Series("raw", values, dtype=pl.String)


def mapped(scalar, values) -> list:
    return [scalar(value) for value in values]


@pytest.fixture(autouse=True, scope="module")
def twins_at_every_size():
    """Every test here checks the twins themselves: a column of up to SCALAR_MAX_ROWS rows is otherwise
    normalized by the scalar function (the single-lead path), which would make them compare it with itself."""
    saved, identity.normalize.SCALAR_MAX_ROWS = identity.normalize.SCALAR_MAX_ROWS, 0
    yield
    identity.normalize.SCALAR_MAX_ROWS = saved


@pytest.mark.parametrize(("twin", "scalar"), TWINS, ids=TWIN_IDS)
def test_a_small_column_is_the_scalar_function_mapped_and_equals_the_twin(twin, scalar):
    values = [value for value in REALISTIC if value is None or isinstance(value, str)][:12]
    identity.normalize.SCALAR_MAX_ROWS = 16
    try:
        small = twin(column(values)).to_list()
    finally:
        identity.normalize.SCALAR_MAX_ROWS = 0
    assert small == mapped(scalar, values) == twin(column(values)).to_list()
    tokens = name_tokens_column(column(["José Luis", None, "María"]), column(["Quispe", "Ccahuana", None]))
    assert tokens.to_list() == [["jose", "luis", "quispe"], ["ccahuana"], ["maria"]]


# --- The example tables of test_normalize.py ------------------------------------------------


@pytest.mark.parametrize(
    ("twin", "examples"),
    [
        (phones_column, [(raw, "+51951234567") for raw in MOBILE_SPELLINGS]),
        (phones_column, PHONENUMBERS_EXAMPLES),
        (phones_column, [(raw, None) for raw in PLACEHOLDER_PHONES + UNUSABLE_PHONES]),
        (documents_column, DOCUMENT_EXAMPLES),
        (license_documents_column, LICENSE_EXAMPLES),
        (emails_column, EMAIL_EXAMPLES),
        (plates_column, PLATE_EXAMPLES),
    ],
    ids=["mobiles", "phonenumbers", "no-phone", "documents", "licences", "emails", "plates"],
)
def test_the_example_tables(twin, examples):
    raws = [raw for raw, _ in examples]
    assert twin(column(raws)).to_list() == [expected for _, expected in examples]


@pytest.mark.parametrize(("twin", "scalar"), TWINS, ids=TWIN_IDS)
def test_realistic_values(twin, scalar):
    assert twin(column(REALISTIC)).to_list() == mapped(scalar, REALISTIC)


# The parts of the names in test_normalize.py's name tests: (first, middle, last) boxes.
NAME_ROWS = [
    ("José Ñahui Quispe", None, None),
    ("JOSÉ  ÑAHUI-QUISPE", None, None),
    ("Jose\u0301 N\u0303ahui", None, None),
    ("QUISPE MAMANI JUAN CARLOS", None, None),
    ("Juan Carlos", None, "Quispe Mamani"),
    ("Juan", "Carlos", "Quispe Mamani"),
    ("María del Pilar", None, "de la Cruz Huamán"),
    ("MARIA DEL PILAR DE LA CRUZ", None, None),
    ("María Pilar", None, "Cruz"),
    (None, "", "  "),
    ("de la", "y", None),
    (None, None, None),
    *((value, None, None) for value in REALISTIC),
]


def name_columns(rows) -> list[pl.Series]:
    return [column([row[box] for row in rows]) for box in range(3)]


def test_the_example_names():
    tokens = name_tokens_column(*name_columns(NAME_ROWS))
    assert tokens.dtype == pl.List(pl.String)
    assert tokens.to_list() == [list(name_tokens(*row)) for row in NAME_ROWS]
    assert name_keys_column(tokens).to_list() == [name_key(*row) for row in NAME_ROWS]
    assert tokens[0].to_list() == ["jose", "nahui", "quispe"]
    assert name_keys_column(tokens)[3] == "carlos juan mamani quispe"


# --- Nulls, empty strings, empty Series -----------------------------------------------------


@pytest.mark.parametrize(("twin", "scalar"), TWINS, ids=TWIN_IDS)
def test_nulls_and_empty_strings_are_null(twin, scalar):
    assert twin(column([None, "", None, " ", ""])).to_list() == mapped(scalar, [None, "", None, " ", ""])
    assert twin(column([None, None])).to_list() == [None, None]
    assert twin(pl.Series("raw", [None, None])).to_list() == [None, None]  # dtype Null
    empty = twin(column([]))
    assert (empty.len(), empty.dtype, empty.name) == (0, pl.String, "raw")


def test_a_row_of_null_names_has_no_tokens_and_no_key():
    first, middle, last = column([None, "", None, "Rosa"]), column([None, None, "", None]), pl.Series([None] * 4)
    tokens = name_tokens_column(first, middle, last)
    assert tokens.to_list() == [[], [], [], ["rosa"]]
    assert name_keys_column(tokens).to_list() == [None, None, None, "rosa"]
    assert name_keys_column(pl.Series([None, [], ["b", "a", "b"]], dtype=pl.List(pl.String))).to_list() == [
        None,
        None,
        "a b",
    ]
    assert name_tokens_column(column([])).dtype == pl.List(pl.String)


def test_the_scalar_function_is_called_once_per_distinct_undecided_value(monkeypatch):
    calls = []

    def counting(raw, region="PE"):
        calls.append(raw)
        return normalize_phone(raw, region)

    monkeypatch.setattr(identity.normalize, "normalize_phone", counting)
    values = ["(01) 555-1234", "951234567", "(01) 555-1234", None, "987654321", "+58 412 1234567"] * 50
    assert phones_column(column(values)).to_list() == mapped(normalize_phone, values)
    assert sorted(calls, key=str) == sorted({"(01) 555-1234", "987654321", "+58 412 1234567", None}, key=str)


# --- Properties (hypothesis) ----------------------------------------------------------------

alphabet = (
    string.digits
    + string.ascii_letters
    + PHONE_SEPARATORS
    + "+@._%-#°º:;,'\"\f\v\x00"
    + FOLD_FROM
    + FOLD_DELETE
    + "ßİı\u212aﬁ½²٣９ØøŁ€😀\u2028"  # \u212a: the Kelvin sign, whose lower case is ASCII 'k'
)
characters = st.one_of(st.sampled_from(alphabet), st.characters(codec="utf-8", exclude_categories=("Cs",)))
fragments = st.sampled_from(
    [
        *NAME_PARTICLES,
        *(particle.upper() for particle in NAME_PARTICLES),
        "José",
        "Jose\u0301",
        "ÑAHUI",
        "N\u0303ahui",
        "\u212aarla",
        "DNI",
        "dni",
        "N°",
        "Nro",
        "NO",
        "CE",
        "CEX",
        "PASAPORTE",
        "PAS",
        "sin.correo",
        "notiene2",
        "x",
        "xx",
        "na",
        "@",
        "@gmail.com",
        "@correo.com",
        ".com",
        "+51",
        "0051",
        "51",
        "951234567",
        "987654321",
        "999999999",
        "(01) 555-1234",
        "+58 412 1234567",
        "Q",
        "44556677",
        "4455667",
        "12345678",
        "0000000",
        "ABC-123",
        "a1b",
    ]
)
pieces = st.one_of(fragments, st.text(characters, max_size=6))
# Trimmed characters and combining marks around an address: folding deletes the marks first.
padding = st.text(st.sampled_from(EMAIL_TRIM + "\u0301\u0303\u036f"), max_size=4)
padded_emails = st.tuples(padding, st.sampled_from([raw for raw, _ in EMAIL_EXAMPLES if raw]), padding).map("".join)
# A type prefix and a number word glued to the number or not ("DNI44556677", "cex-N°001234567").
glued_documents = st.tuples(
    st.sampled_from([*DOCUMENT_TYPE_PREFIXES, *(prefix.lower() for prefix in DOCUMENT_TYPE_PREFIXES), "", "X"]),
    st.sampled_from(["", " ", "-", ":"]),
    st.sampled_from([*DOCUMENT_NUMBER_WORDS, "", "N°", "nro."]),
    st.sampled_from(["", " "]),
    st.one_of(st.from_regex(r"\A[0-9]{0,10}\Z"), st.from_regex(r"\A[0-9A-Za-z]{0,10}\Z")),
).map("".join)
values = st.one_of(
    st.none(),
    st.just(""),
    any_value,
    padded_emails,
    glued_documents,
    st.text(characters, max_size=40),
    st.lists(pieces, max_size=10).map("".join),
    st.lists(pieces, max_size=10).map(" ".join),
    # Around the name cut: a decomposed accent or a separator can fall on either side of it.
    st.lists(pieces, min_size=30, max_size=90).map(" ".join),
    st.integers(NAME_MAX_CHARS - 3, NAME_MAX_CHARS + 3).map(lambda size: "Ñ\u0303 " * (size // 3) + "quispe"),
)
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("twin", "scalar"), TWINS, ids=TWIN_IDS)
@PROPERTIES
@given(raws=st.lists(values, max_size=30))
def test_each_twin_is_its_scalar_function_mapped(twin, scalar, raws):
    assert twin(column(raws)).to_list() == mapped(scalar, raws)


REPEATED = ["951234567", "(01) 555-1234", "", None, "DNI 4455667", "Q44556677", "ABC-123", "juan@gmail.com"]


@pytest.mark.parametrize(("twin", "scalar"), TWINS, ids=TWIN_IDS)
@settings(max_examples=100, deadline=None)
@given(raws=st.lists(st.sampled_from(REPEATED), max_size=60))
def test_repeated_values_agree(twin, scalar, raws):
    assert twin(column(raws)).to_list() == mapped(scalar, raws)


name_parts = st.one_of(st.none(), names, values)


@PROPERTIES
@given(rows=st.lists(st.tuples(name_parts, name_parts, name_parts), max_size=30))
def test_name_tokens_and_keys_columns_are_the_scalar_functions_mapped(rows):
    tokens = name_tokens_column(*name_columns(rows))
    assert tokens.to_list() == [list(name_tokens(*row)) for row in rows]
    assert name_keys_column(tokens).to_list() == [name_key(*row) for row in rows]


@PROPERTIES
@given(texts=st.lists(values, max_size=30))
def test_one_name_box(texts):
    tokens = name_tokens_column(column(texts))
    assert tokens.to_list() == [list(name_tokens(text)) for text in texts]
    assert name_keys_column(tokens).to_list() == [name_key(text) for text in texts]
