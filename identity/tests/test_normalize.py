"""Normalization: realistic Peruvian values, hypothesis properties, and Python/SQL twin agreement."""

import re
import unicodedata

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity.normalize import (
    FOLD_COMMON,
    FOLD_FROM,
    FOLD_TO,
    PHONE_FAST_PATTERN,
    PHONE_PLACEHOLDERS,
    PHONE_SEPARATORS,
    PHONE_SPELLING_PATTERN,
    SQL_FUNCTION_SIGNATURES,
    document_from_license,
    fold,
    name_key,
    name_tokens,
    normalize_document,
    normalize_email,
    normalize_phone,
    normalize_plate,
    phone_fast,
)

E164 = re.compile(r"\A\+[0-9]{8,15}\Z")

# --- Unit tests: the spellings operators actually find in the sheets -------------------------
# The example tables are module-level: test_normalize_columns.py checks the Polars twins on them.

MOBILE_SPELLINGS = [  # of +51951234567
    "951234567",
    "+51 951 234 567",
    "951-234-567",
    "51951234567",
    "0051951234567",
    "(+51) 951.234.567",
    " 951 234 567\t",
]
PHONENUMBERS_EXAMPLES = [("(01) 555-1234", "+5115551234"), ("+58 412 1234567", "+584121234567")]
PLACEHOLDER_PHONES = [
    "987654321",
    "+51 987 654 321",
    "987-654-321",
    "999999999",
    "900000000",
    "912345678",
    "51999999999",
]
UNUSABLE_PHONES = [None, "", "   ", "sin telefono", "98765432", "9512345678", "+987654321", "12"]
DOCUMENT_EXAMPLES = [
    ("44556677", "44556677"),
    ("4455667", "04455667"),  # a spreadsheet dropped the leading zero
    ("DNI 44.556.677", "44556677"),
    ("dni: 44556677", "44556677"),
    ("DNI N° 44556677", "44556677"),
    ("001234567", "001234567"),  # carné de extranjería, 9 digits
    ("CE 001234567", "001234567"),
    ("CEX-001234567", "001234567"),
    ("Pasaporte 118834567", "118834567"),
    ("pas AB123456", "PASAB123456"),  # a prefix followed by letters stays: it may be the number
    ("12345678", None),
    ("1234567", None),
    ("00000000", None),
    ("0000000", None),
    ("77777777", None),
    ("SINDOC", None),
    ("NA", None),
    ("no doc", None),
    ("12345", None),
    ("", None),
    (None, None),
]
LICENSE_EXAMPLES = [
    ("Q44556677", "44556677"),
    ("q-44556677", "44556677"),
    ("Q 44556677", "44556677"),
    ("A-44556677", "44556677"),
    ("Q4455667", None),
    ("Q12345678", None),  # the DNI inside is a placeholder
    ("QA4455667", None),
    ("44556677", None),
    (None, None),
]
EMAIL_EXAMPLES = [
    (" Juan.Quispe@Gmail.com ", "juan.quispe@gmail.com"),
    ("ROSA_MAMANI87@HOTMAIL.COM", "rosa_mamani87@hotmail.com"),
    ("josé.ñahui@gmail.com", "jose.nahui@gmail.com"),
    ("maria+uber@outlook.com.pe", "maria+uber@outlook.com.pe"),
    ("sincorreo@gmail.com", None),
    ("SIN.CORREO2@hotmail.com", None),
    ("notiene@gmail.com", None),
    ("na@na.com", None),
    ("juan.quispe@correo.com", None),
    ("juan.quispe@example.com", None),
    ("juan quispe@gmail.com", None),
    ("juan.quispe@gmail", None),
    ("juan@@gmail.com", None),
    ("@gmail.com", None),
    ("juan.quispe.gmail.com", None),
    ("ana@gmail.com", "ana@gmail.com"),
    (None, None),
]
PLATE_EXAMPLES = [
    ("ABC-123", "ABC123"),
    ("a1b 234", "A1B234"),
    ("BHT-941", "BHT941"),
    ("AB12", None),
    ("ABCDEF", None),
    ("123456", None),
    ("ABCD-12345", None),
    (None, None),
]


@pytest.mark.parametrize("raw", MOBILE_SPELLINGS)
def test_a_mobile_in_any_spelling_is_one_e164(raw):
    assert phone_fast(raw) == "+51951234567"
    assert normalize_phone(raw) == "+51951234567"


@pytest.mark.parametrize(("raw", "expected"), PHONENUMBERS_EXAMPLES)
def test_a_lima_landline_and_a_foreign_mobile_go_through_phonenumbers(raw, expected):
    assert phone_fast(raw) is None
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize("raw", PLACEHOLDER_PHONES)
def test_placeholder_phones_are_no_phone(raw):
    # 987654321 is the sequence people type when they have no number to give.
    assert phone_fast(raw) is None
    assert normalize_phone(raw) is None


@pytest.mark.parametrize("raw", UNUSABLE_PHONES)
def test_unusable_phones_are_none(raw):
    assert phone_fast(raw) is None
    assert normalize_phone(raw) is None


@pytest.mark.parametrize(("raw", "expected"), DOCUMENT_EXAMPLES)
def test_documents(raw, expected):
    assert normalize_document(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), LICENSE_EXAMPLES)
def test_the_dni_inside_a_licence(raw, expected):
    assert document_from_license(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), EMAIL_EXAMPLES)
def test_emails(raw, expected):
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), PLATE_EXAMPLES)
def test_plates(raw, expected):
    assert normalize_plate(raw) == expected


def test_names_fold_accents_and_case():
    assert name_tokens("José Ñahui Quispe") == ("jose", "nahui", "quispe")
    assert name_tokens("JOSÉ  ÑAHUI-QUISPE") == ("jose", "nahui", "quispe")
    assert name_tokens("Jose\u0301 N\u0303ahui") == ("jose", "nahui")  # decomposed (NFD) accents


def test_a_name_in_one_box_equals_the_same_name_in_three():
    one_box = name_key("QUISPE MAMANI JUAN CARLOS")
    assert one_box == name_key("Juan Carlos", None, "Quispe Mamani")
    assert one_box == name_key("Juan", "Carlos", "Quispe Mamani")
    assert one_box == "carlos juan mamani quispe"


def test_particles_are_dropped():
    assert name_tokens("María del Pilar", "de la Cruz Huamán") == ("maria", "pilar", "cruz", "huaman")
    assert name_key("MARIA DEL PILAR DE LA CRUZ") == name_key("María Pilar", None, "Cruz")


def test_no_name_is_none():
    assert name_key(None, "", "  ") is None
    assert name_key("de la", "y") is None
    assert name_tokens(None) == ()


def test_fold_changes_accents_only():
    assert fold("Ñahui Huamán, José Ü. Çelik") == "Nahui Huaman, Jose U. Celik"
    assert fold("e\u0301") == "e"
    assert fold("ß 9 ½") == "ß 9 ½"
    assert fold(None) is None


def test_the_accent_table_is_one_to_one_and_folds_to_the_base_letter():
    assert len(FOLD_FROM) == len(FOLD_TO) == len(set(FOLD_FROM))
    assert set(FOLD_COMMON) <= set(FOLD_FROM)
    no_decomposition = set("ĐđĦħıŁłØøŦŧĿŀ")
    for accented, base in zip(FOLD_FROM, FOLD_TO, strict=True):
        assert unicodedata.normalize("NFC", accented) == accented
        assert base.isascii() and base.isalpha()
        if accented not in no_decomposition:
            assert unicodedata.normalize("NFD", accented)[0] == base, accented


# --- Properties (hypothesis) ---------------------------------------------------------------

mobiles = st.integers(0, 99_999_999).map(lambda n: f"9{n:08d}").filter(lambda n: n not in PHONE_PLACEHOLDERS)
SPELLINGS = (
    "{n}",
    "{a} {b} {c}",
    "{a}-{b}-{c}",
    "{a}.{b}.{c}",
    "51{n}",
    "+51{n}",
    "+51 {a} {b} {c}",
    "+51-{a}-{b}-{c}",
    "(+51) {a} {b} {c}",
    "0051 {n}",
    "0051{n}",
    "+51 ({a}) {b}-{c}",
    " {n} ",
    "{n}\t",
    "{a}/{b}/{c}",
    "+51\u00a0{n}",
)


def spell(national: str, spelling: str) -> str:
    return spelling.format(n=national, a=national[:3], b=national[3:6], c=national[6:])


interesting_characters = (
    "0123456789 .-_()/+@,;:'\"#°ºª\t\n\u00a0ñÑáéíóúÁÉÍÓÚüÜçÇßİıKﬁ½²٣９ØøŁ\u0301\u0303€😀"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" + FOLD_FROM
)
characters = st.one_of(
    st.sampled_from(interesting_characters),
    st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=("Cs",)),
)
junk = st.text(alphabet=characters, max_size=40)
first_names = ["Juan", "José", "María", "Rosa", "Luis", "Ángel", "Jesús", "Pilar", "Nayeli", "Wilber", "Yésica"]
surnames = ["Quispe", "Mamani", "Ñahui", "Huamán", "Flores", "Cóndor", "Chávez", "Rodríguez", "Ccori", "Peña"]
name_words = st.sampled_from(first_names + surnames + ["de", "la", "del", "y", "DE LA"])
names = st.lists(name_words, min_size=0, max_size=6).map(" ".join)
dnis = st.integers(0, 99_999_999).map(lambda n: f"{n:08d}")
documents = st.one_of(
    dnis,
    dnis.map(lambda d: d.lstrip("0") or "0"),
    st.tuples(st.sampled_from(["DNI ", "dni:", "DNI N° ", "CE ", "CEX-", "Pasaporte ", "PAS "]), dnis).map("".join),
    st.integers(0, 999_999_999).map(lambda n: f"{n:09d}"),
    st.sampled_from(["SINDOC", "NA", "00000000", "12345678", "-", "no tiene", "S/N"]),
)
licences = st.tuples(st.sampled_from("QAqbB"), st.sampled_from(["", "-", " "]), dnis).map("".join)
emails = st.tuples(
    st.sampled_from(["juan.quispe", "ROSA_MAMANI87", "josé", "sin.correo", "notiene2", "na", "m+uber", "a b", ""]),
    st.sampled_from(["@", "@@", "", " @ "]),
    st.sampled_from(["gmail.com", "Hotmail.com", "correo.com", "outlook.com.pe", "gmail", "example.com", "yahoo.es"]),
    st.sampled_from(["", " ", "\t", "."]),
).map(lambda parts: parts[0] + parts[1] + parts[2] + parts[3])
plates = st.from_regex(r"\A[A-Za-z0-9]{2,4}[- ]?[A-Za-z0-9]{2,4}\Z")
phones = st.tuples(mobiles, st.sampled_from(SPELLINGS)).map(lambda pair: spell(*pair))
any_value = st.one_of(junk, names, documents, licences, emails, plates, phones, st.sampled_from(["(01) 555-1234"]))


@given(national=mobiles, spelling=st.sampled_from(SPELLINGS))
def test_every_spelling_of_a_mobile_gives_the_same_e164(national, spelling):
    assert phone_fast(spell(national, spelling)) == "+51" + national
    assert normalize_phone(spell(national, spelling)) == "+51" + national


@given(
    national=st.integers(0, 999_999_999).map(lambda n: f"{n:09d}"),
    number=st.one_of(dnis, st.from_regex(r"\A[0-9]{6,12}\Z"), st.sampled_from(["0000000", "1234567", "111111111"])),
)
def test_the_python_shortcuts_for_bare_numbers_match_the_general_path(national, number):
    # A leading space sends the same value down the general path.
    assert phone_fast(national) == phone_fast(" " + national)
    assert normalize_document(number) == normalize_document(" " + number)


@settings(max_examples=500)
@given(raw=st.one_of(phones, st.text(alphabet="0123456789+5 -.()/\t\n\u00a0x", max_size=20)))
def test_the_sql_phone_spelling_pattern_accepts_what_strip_then_match_accepts(raw):
    stripped = raw.translate(str.maketrans("", "", PHONE_SEPARATORS))
    assert bool(re.match(PHONE_SPELLING_PATTERN, raw)) == bool(re.match(PHONE_FAST_PATTERN, stripped))


@settings(max_examples=300)
@given(raw=st.one_of(junk, phones, st.text(alphabet="0123456789 +-()", max_size=20)))
def test_phone_output_is_e164_and_stable(raw):
    phone = normalize_phone(raw)
    assert phone is None or E164.match(phone)
    if phone is not None:
        assert normalize_phone(phone) == phone
    fast = phone_fast(raw)
    assert fast is None or fast == phone
    if fast is None and not re.search("[0-9]", raw):
        # The index sends to Python only the rows SQL left NULL that hold an ASCII digit.
        assert phone is None


@settings(max_examples=300)
@given(raw=any_value)
def test_normalizers_are_idempotent(raw):
    for normalize in (normalize_document, normalize_email, normalize_plate, name_key, fold):
        once = normalize(raw)
        assert normalize(once) == once


@settings(max_examples=300)
@given(raw=any_value)
def test_normalized_formats(raw):
    document = normalize_document(raw)
    assert document is None or (re.fullmatch("[0-9A-Z]{6,}", document) and re.search("[0-9]", document))
    email = normalize_email(raw)
    assert email is None or (email == email.strip().lower() and email.count("@") == 1 and email.isascii())
    plate = normalize_plate(raw)
    assert plate is None or re.fullmatch("[0-9A-Z]{5,7}", plate)
    key = name_key(raw)
    assert key is None or re.fullmatch("[a-z]+( [a-z]+)*", key)
    licence_dni = document_from_license(raw)
    if licence_dni is not None:
        assert re.fullmatch("[0-9]{8}", licence_dni) and normalize_document(licence_dni) == licence_dni


@given(
    words=st.lists(name_words, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 6), min_size=2, max_size=2),
    order=st.permutations([0, 1, 2]),
    case=st.sampled_from([str.upper, str.lower, str.title, lambda text: text]),
    strip_accents=st.booleans(),
)
def test_name_key_ignores_boxes_order_case_and_accents(words, cuts, order, case, strip_accents):
    first, second = sorted(cuts)
    boxes = [" ".join(words[:first]), " ".join(words[first:second]), " ".join(words[second:])]
    changed = [case(fold(box) if strip_accents else box) for box in boxes]
    assert name_key(*(changed[i] for i in order)) == name_key(" ".join(words))


# --- The SQL twins give exactly the Python results -------------------------------------------

TWINS = (
    ("canon.norm_fold", fold),
    ("canon.norm_phone_fast", phone_fast),
    ("canon.norm_document", normalize_document),
    ("canon.norm_license_document", document_from_license),
    ("canon.norm_email", normalize_email),
    ("canon.norm_plate", normalize_plate),
    ("canon.norm_name_tokens", lambda value: list(name_tokens(value))),
    ("canon.norm_name_key", name_key),
)

REALISTIC = [
    None,
    "",
    "987654321",
    "951234567",
    "+51 951 234 567",
    "951-234-567",
    "0051951234567",
    "(01) 555-1234",
    "+58 412 1234567",
    "44556677",
    "4455667",
    "DNI 44.556.677",
    "DNI N° 44556677",
    "CE 001234567",
    "Q44556677",
    "q-44556677",
    "Q 12345678",
    " Juan.Quispe@Gmail.com ",
    "josé.ñahui@gmail.com",
    "sin.correo@gmail.com",
    "ABC-123",
    "a1b 234",
    "José Ñahui Quispe",
    "QUISPE MAMANI JUAN CARLOS",
    "María del Pilar de la Cruz Huamán",
    "Jose\u0301 N\u0303ahui",
    "Øyvind Łukasz Ștefan",
    "ß İ K ﬁ ٣٤٥ ９５１２３４５６７",
    "x" * 250 + " quispe",
    "Ñ" * 150 + " quispe",  # over 200 bytes, under 200 characters
    "á" * 100,
    "JOSÉ.ÑAHUI@GMAIL.COM\r\n",
    "\u212aarla@gmail.com",  # Kelvin sign: str.lower() would make it ASCII
    "951\u00a0234\u00a0567",
]


def sql_apply(function: str, values: list) -> list:
    """Evaluate an SQL twin over many values in one query, in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {function}(v) FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, n) ORDER BY n",
            [values],
        )
        return [row[0] for row in cursor.fetchall()]


def disagreements(values: list) -> list:
    found = []
    for function, python in TWINS:
        for value, in_sql in zip(values, sql_apply(function, values), strict=True):
            in_python = python(value)
            if in_sql != in_python:
                found.append((function, value, in_python, in_sql))
    return found


@pytest.mark.django_db
def test_sql_twins_agree_on_realistic_values():
    assert disagreements(REALISTIC) == []


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(any_value, min_size=1, max_size=200))
def test_sql_twins_agree_on_generated_values(values):
    assert disagreements(values) == []


@pytest.mark.django_db
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boxes=st.lists(st.tuples(st.one_of(st.none(), names, junk), st.one_of(st.none(), names), names), max_size=50))
def test_sql_name_key_of_the_joined_boxes_agrees(boxes):
    firsts, middles, lasts = (list(column) for column in zip(*boxes, strict=True)) if boxes else ([], [], [])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT canon.norm_name_key(concat_ws(' ', f, m, l)) "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS t(f, m, l, n) ORDER BY n",
            [firsts, middles, lasts],
        )
        in_sql = [row[0] for row in cursor.fetchall()]
    assert in_sql == [name_key(*box) for box in boxes]


@pytest.mark.django_db
def test_sql_twins_are_immutable_parallel_safe_and_inlined():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oid::regprocedure::text, provolatile, proparallel FROM pg_proc "
            "WHERE pronamespace = 'canon'::regnamespace AND proname LIKE 'norm\\_%'"
        )
        found = {row[0]: row[1:] for row in cursor.fetchall()}
        assert {signature: found.get(signature) for signature in SQL_FUNCTION_SIGNATURES} == {
            signature: ("i", "s") for signature in SQL_FUNCTION_SIGNATURES
        }
        calls = ", ".join(f"{function}(v)" for function, _ in TWINS)
        cursor.execute(f"EXPLAIN VERBOSE SELECT {calls} FROM unnest(ARRAY['x']) AS t(v)")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # Inlined functions become plain expressions: no per-row SQL function call remains.
    assert "canon." not in plan
