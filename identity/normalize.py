"""Raw phones, documents, e-mails, plates and names to match keys (pure functions), and their SQL
twins in schema `canon`, generated from the same constants so both give exactly the same keys."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import cache

import phonenumbers
import polars as pl

# --- Accent folding ------------------------------------------------------------------------
# The one accent table. Python uses it through str.translate, SQL through translate()/replace();
# both are generated from here, so they cannot disagree. Each accented letter is one code point
# (NFC); combining marks of decomposed (NFD) text are deleted.
_FOLD_GROUPS = (
    ("A", "ÀÁÂÃÄÅĀĂĄ"),
    ("a", "àáâãäåāăą"),
    ("C", "ÇĆĈĊČ"),
    ("c", "çćĉċč"),
    ("D", "ĎĐ"),
    ("d", "ďđ"),
    ("E", "ÈÉÊËĒĔĖĘĚ"),
    ("e", "èéêëēĕėęě"),
    ("G", "ĜĞĠĢ"),
    ("g", "ĝğġģ"),
    ("H", "ĤĦ"),
    ("h", "ĥħ"),
    ("I", "ÌÍÎÏĨĪĬĮİ"),
    ("i", "ìíîïĩīĭįı"),
    ("J", "Ĵ"),
    ("j", "ĵ"),
    ("K", "Ķ"),
    ("k", "ķ"),
    ("L", "ĹĻĽĿŁ"),
    ("l", "ĺļľŀł"),
    ("N", "ÑŃŅŇ"),
    ("n", "ñńņň"),
    ("O", "ÒÓÔÕÖØŌŎŐ"),
    ("o", "òóôõöøōŏő"),
    ("R", "ŔŖŘ"),
    ("r", "ŕŗř"),
    ("S", "ŚŜŞŠȘ"),
    ("s", "śŝşšș"),
    ("T", "ŢŤŦȚ"),
    ("t", "ţťŧț"),
    ("U", "ÙÚÛÜŨŪŬŮŰŲ"),
    ("u", "ùúûüũūŭůűų"),
    ("W", "Ŵ"),
    ("w", "ŵ"),
    ("Y", "ÝŸŶ"),
    ("y", "ýÿŷ"),
    ("Z", "ŹŻŽ"),
    ("z", "źżž"),
)
FOLD_FROM = "".join(accented for _, accented in _FOLD_GROUPS)
FOLD_TO = "".join(base * len(accented) for base, accented in _FOLD_GROUPS)
FOLD_DELETE = "".join(chr(code) for code in range(0x0300, 0x0370))  # combining diacritical marks
FOLD_TABLE = str.maketrans(FOLD_FROM, FOLD_TO, FOLD_DELETE)
# Spanish's accented letters: SQL folds a value holding only these with replace(), far cheaper
# than translate() over the whole table (which costs per character times table size).
FOLD_COMMON = "áéíóúñüÁÉÍÓÚÑÜ"

# Shared regular expressions are written in the subset PostgreSQL AREs and Python's `re` read the
# same way: explicit ASCII classes, \A and \Z anchors, (?:), (?=); no \d, \w, \s, '.', '$'.
# PostgreSQL builds a regular expression's automaton anew on every call, so each one costs about
# a microsecond a row, more with lookahead: the twins use few, simple ones. Rejections are written
# as one "junk" pattern matching the whole value, which is then replaced by '' (and so dropped).
_NOT_ALNUM = "[^0-9A-Za-z]+"

# --- Phones --------------------------------------------------------------------------------
PHONE_SEPARATORS = " \t\n\r\u00a0-.()/"
# A Peruvian mobile: 9 digits starting with 9, optionally after 51, +51 or 0051.
PHONE_FAST_PATTERN = r"\A(?:(?:\+|00)?51)?9[0-9]{8}\Z"
# National numbers people type when they have none to give.
PHONE_PLACEHOLDERS = frozenset(
    {"999999999", "900000000", "987654321", "912345678", "123456789", "000000000"}
)
# PHONE_FAST_PATTERN on the raw value, separators allowed between any two characters: SQL tests
# this instead of stripping first (tests check it accepts exactly what strip-then-match accepts).
_PHONE_GAP = "[" + PHONE_SEPARATORS.replace("-", "") + "-]*"
PHONE_SPELLING_PATTERN = (
    rf"\A{_PHONE_GAP}(?:(?:\+{_PHONE_GAP}|0{_PHONE_GAP}0{_PHONE_GAP})?5{_PHONE_GAP}1{_PHONE_GAP})?"
    rf"9{_PHONE_GAP}(?:[0-9]{_PHONE_GAP}){{8}}\Z"
)
E164_PATTERN = r"\A\+[0-9]{8,15}\Z"

# --- Documents -----------------------------------------------------------------------------
DOCUMENT_TYPE_PREFIXES = ("PASAPORTE", "PAS", "CEX", "CE", "DNI")
DOCUMENT_NUMBER_WORDS = ("NRO", "NO", "N")  # "DNI N° 44556677", "CE Nro 001234567"
DOCUMENT_PLACEHOLDERS = (
    "12345678",
    "123456789",
    "1234567890",
    "01234567",  # 1234567 after the leading zero is restored
    "87654321",
    "123456",
    "SINDOC",
    "SINDOCUMENTO",
    "NODOC",
    "NOTIENE",
    "NINGUNO",
    "NA",
)
# A type prefix glued to the number ("DNI44556677" after cleaning).
DOCUMENT_PREFIX_PATTERN = (
    r"\A(?:" + "|".join(DOCUMENT_TYPE_PREFIXES) + ")(?:" + "|".join(DOCUMENT_NUMBER_WORDS) + r")?(?=[0-9])"
)
# A 7-digit DNI lost its leading zero in a spreadsheet: insert it.
DOCUMENT_PAD_PATTERN = r"\A(?=[0-9]{7}\Z)"
# Junk: under 6 characters, no digit, one repeated digit, or a placeholder.
DOCUMENT_JUNK_PATTERN = (
    r"\A(?:[0-9A-Z]{0,5}|[A-Z]+|"
    + "|".join([f"{digit}+" for digit in "0123456789"] + list(DOCUMENT_PLACEHOLDERS))
    + r")\Z"
)
# A Peruvian driving licence is a letter followed by the holder's DNI.
LICENSE_PATTERN = r"\A[A-Z][0-9]{8}\Z"

# --- E-mails -------------------------------------------------------------------------------
EMAIL_TRIM = " \t\n\r\f\v\u00a0"
# Placeholder local parts; "." stands for optional non-letters ("sin_correo", "n.a", "notiene2").
EMAIL_PLACEHOLDER_LOCALS = (
    "sin.correo",
    "no.correo",
    "no.email",
    "sin.email",
    "no.mail",
    "sin.mail",
    "no.tiene",
    "ninguno",
    "no.aplica",
    "n.a",
    "correo",
    "email",
    "test",
    "prueba",
    "x",
    "xx",
    "xxx",
)
EMAIL_PLACEHOLDER_DOMAINS = (
    "correo.com",
    "email.com",
    "example.com",
    "example.org",
    "example.net",
    "test.com",
    "sincorreo.com",
    "nocorreo.com",
    "notiene.com",
    "dominio.com",
)
_NOT_LETTER_OR_AT = "[^a-z@]*"
# Removes a placeholder local part with its "@", so that EMAIL_PATTERN rejects what is left.
EMAIL_PLACEHOLDER_LOCAL_PATTERN = (
    r"\A[^a-z@]*(?:"
    + "|".join(local.replace(".", _NOT_LETTER_OR_AT) for local in EMAIL_PLACEHOLDER_LOCALS)
    + r")[^a-z@]*@"
)
_EMAIL_SHAPE = r"[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+"
EMAIL_PATTERN = rf"\A{_EMAIL_SHAPE}\Z"

# --- Plates --------------------------------------------------------------------------------
# Junk: not 5 to 7 characters, or no letter, or no digit.
PLATE_JUNK_PATTERN = r"\A(?:[0-9A-Z]{0,4}|[0-9A-Z]{8,}|[A-Z]+|[0-9]+)\Z"

# --- Names ---------------------------------------------------------------------------------
NAME_PARTICLES = ("de", "del", "la", "las", "los", "y", "da", "di", "van", "von", "mc")
# Longer name text is junk; the cut also keeps SQL's tsvector lexemes far below their limit.
NAME_MAX_CHARS = 200

_FLAGS = re.DOTALL  # PostgreSQL's "." matches a newline; should a pattern ever use one
_NOT_ALNUM_RE = re.compile(_NOT_ALNUM, _FLAGS)
_PHONE_STRIP_TABLE = str.maketrans("", "", PHONE_SEPARATORS)
_PHONE_FAST_RE = re.compile(PHONE_FAST_PATTERN, _FLAGS)
_E164_RE = re.compile(E164_PATTERN, _FLAGS)
_ASCII_DIGIT_RE = re.compile("[0-9]")
_DOCUMENT_PREFIX_RE = re.compile(DOCUMENT_PREFIX_PATTERN, _FLAGS)
_DOCUMENT_PAD_RE = re.compile(DOCUMENT_PAD_PATTERN, _FLAGS)
_DOCUMENT_JUNK_RE = re.compile(DOCUMENT_JUNK_PATTERN, _FLAGS)
_LICENSE_RE = re.compile(LICENSE_PATTERN, _FLAGS)
_EMAIL_PLACEHOLDER_LOCAL_RE = re.compile(EMAIL_PLACEHOLDER_LOCAL_PATTERN, _FLAGS)
_EMAIL_RE = re.compile(EMAIL_PATTERN, _FLAGS)
_PLATE_JUNK_RE = re.compile(PLATE_JUNK_PATTERN, _FLAGS)
_LETTERS_RE = re.compile("[A-Za-z]+")
_LOWER_LETTERS_RE = re.compile("[a-z]+")
_PARTICLE_SET = frozenset(NAME_PARTICLES)
_DOCUMENT_PLACEHOLDER_SET = frozenset(DOCUMENT_PLACEHOLDERS)


def fold(text: str | None) -> str | None:
    """Accented letters to their ASCII base letter (á->a, Ñ->N); nothing else changes."""
    if text is None:
        return None
    return _fold(text)


def _fold(text: str) -> str:
    # isascii() is a flag check, and most values hold nothing to fold.
    return text if text.isascii() else text.translate(FOLD_TABLE)


def _alnum_upper(text: str) -> str:
    # Filter to ASCII before upper-casing: str.upper() and PostgreSQL's upper() disagree on
    # characters like 'ß', but never on ASCII.
    return _NOT_ALNUM_RE.sub("", _fold(text)).upper()


def phone_fast(raw: str | None) -> str | None:
    """A Peruvian mobile in any usual spelling to E.164, without phonenumbers; else None.

    None also for placeholder numbers (999999999, 987654321, ...). SQL twin: canon.norm_phone_fast.
    """
    if not raw:
        return None
    if len(raw) == 9 and raw[0] == "9" and raw.isascii() and raw.isdigit():  # most rows
        national = raw
    else:
        digits = raw.translate(_PHONE_STRIP_TABLE)
        if _PHONE_FAST_RE.match(digits) is None:
            return None
        national = digits[-9:]
    if national in PHONE_PLACEHOLDERS:
        return None
    return "+51" + national


def _is_placeholder_number(national: str) -> bool:
    return national in PHONE_PLACEHOLDERS or len(set(national)) == 1


def normalize_phone(raw: str | None, region: str = "PE") -> str | None:
    """Any phone spelling to E.164 ("+51951234567"), or None when invalid or a placeholder.

    The fast path covers Peruvian mobiles; the rest (landlines, foreign numbers) goes through
    phonenumbers, which is about a hundred times slower.
    """
    if not raw:
        return None
    if region == "PE":
        fast = phone_fast(raw)
        if fast is not None:
            return fast
    # Only ASCII digits count, so SQL can select the rows needing this fallback with `~ '[0-9]'`.
    if _ASCII_DIGIT_RE.search(raw) is None:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if _E164_RE.match(e164) is None or _is_placeholder_number(str(number.national_number)):
        return None
    return e164


def normalize_document(raw: str | None) -> str | None:
    """An identity document (DNI, CE, passport) as upper-case alphanumerics, or None when junk.

    "DNI 44.556.677" -> "44556677", "4455667" -> "04455667". SQL twin: canon.norm_document.
    """
    if not raw:
        return None
    if len(raw) >= 6 and raw.isascii() and raw.isdigit():  # a bare DNI or CE number: most rows
        number = document_zero_restored_text(raw)
        return None if number in _DOCUMENT_PLACEHOLDER_SET or number == number[0] * len(number) else number
    value = _alnum_upper(raw)
    value = _DOCUMENT_PREFIX_RE.sub("", value, count=1)
    value = _DOCUMENT_PAD_RE.sub("0", value, count=1)
    return _usable_document(value)


def document_zero_restored_text(value: str) -> str:
    """A 7-digit number with its lost leading zero back (a spreadsheet read the DNI 04455667 as a number);
    other values as they are. Frame-wise: document_zero_restored."""
    return "0" + value if len(value) == 7 and value.isascii() and value.isdigit() else value


def _usable_document(value: str) -> str | None:
    return _DOCUMENT_JUNK_RE.sub("", value, count=1) or None


def document_from_license(raw: str | None) -> str | None:
    """The DNI inside a driving licence, "Q44556677" -> "44556677"; None for other licences."""
    if not raw:
        return None
    value = _alnum_upper(raw)
    if _LICENSE_RE.match(value) is None:
        return None
    return _usable_document(value[1:])


def normalize_email(raw: str | None) -> str | None:
    """A plausible, non-placeholder e-mail address, trimmed and lower-cased; else None.

    Accents are folded first (autocorrect writes "josé@gmail.com"); anything else outside ASCII
    makes the address unusable. SQL twin: canon.norm_email.
    """
    if not raw:
        return None
    value = _fold(raw).strip(EMAIL_TRIM)
    if not value.isascii():
        return None
    value = _EMAIL_PLACEHOLDER_LOCAL_RE.sub("", value.lower(), count=1)
    if _EMAIL_RE.match(value) is None or value.partition("@")[2] in EMAIL_PLACEHOLDER_DOMAINS:
        return None
    return value


def normalize_plate(raw: str | None) -> str | None:
    """A vehicle plate as 5-7 upper-case alphanumerics with a letter and a digit ("ABC123")."""
    if not raw:
        return None
    return _PLATE_JUNK_RE.sub("", _alnum_upper(raw), count=1) or None


def name_tokens(*parts: str | None) -> tuple[str, ...]:
    """The words of a name, folded and lower-cased, in order, without particles (de, la, ...).

    The parts are joined like SQL's concat_ws(' ', ...) and cut at NAME_MAX_CHARS, so
    canon.norm_name_tokens(concat_ws(' ', first, middle, last)) gives the same tokens.
    """
    text = _fold(" ".join([part for part in parts if part is not None])[:NAME_MAX_CHARS])
    if text.isascii():
        words = _LOWER_LETTERS_RE.findall(text.lower())
    else:  # lower-case only the ASCII words: str.lower() would turn 'K' (Kelvin) into 'k'
        words = [word.lower() for word in _LETTERS_RE.findall(text)]
    return tuple([word for word in words if word not in _PARTICLE_SET])


def name_key(*parts: str | None) -> str | None:
    """The distinct name tokens sorted and space-joined: the same whichever box held which word."""
    return " ".join(sorted(set(name_tokens(*parts)))) or None


# --- SQL twins -----------------------------------------------------------------------------
# Each twin is a single-expression LANGUAGE sql function, so the planner inlines it into the
# calling query (no per-row function call). The WHEN branches before a general expression are
# cheap shortcuts for the common clean spellings, equal to the general expression on those.
# Call them on columns or cheap expressions: an inlined body reads its argument several times,
# and each read recomputes the argument expression (fence an expensive one with OFFSET 0).
# Changing a constant or rule above needs a new migration running sql_create_functions() again.

SQL_FUNCTION_SIGNATURES = (
    "canon.norm_fold(text)",
    "canon.norm_alnum_upper(text)",
    "canon.norm_phone_fast(text)",
    "canon.norm_document(text)",
    "canon.norm_license_document(text)",
    "canon.norm_email(text)",
    "canon.norm_plate(text)",
    "canon.norm_name_words(text)",
    "canon.norm_name_tokens(text)",
    "canon.norm_name_key(text)",
)


def _sql_literal(text: str) -> str:
    """A string literal that means the same whatever standard_conforming_strings says: E'' when
    it holds a backslash or an invisible character (tab, no-break space, combining mark), which
    it then spells as \\uXXXX."""
    if "\x00" in text:
        raise ValueError("PostgreSQL text cannot hold NUL")
    if all(_sql_plain_character(char) for char in text):
        return "'" + text.replace("'", "''") + "'"
    escaped = []
    for char in text:
        if char == "\\":
            escaped.append("\\\\")
        elif char == "'":
            escaped.append("''")
        elif _sql_plain_character(char):
            escaped.append(char)
        else:
            escaped.append(f"\\u{ord(char):04x}")
    return "E'" + "".join(escaped) + "'"


def _sql_plain_character(char: str) -> bool:
    return char != "\\" and char.isprintable() and char != "\u00a0" and not unicodedata.category(char).startswith("M")


def _sql_text_array(items) -> str:
    return "ARRAY[" + ", ".join(_sql_literal(item) for item in items) + "]::text[]"


def _sql_replace_common_accents(expression: str) -> str:
    for accented in FOLD_COMMON:
        expression = f"replace({expression}, {_sql_literal(accented)}, {_sql_literal(accented.translate(FOLD_TABLE))})"
    return expression


def _sql_nullif_each(expression: str, values) -> str:
    for value in sorted(values):
        expression = f"nullif({expression}, {_sql_literal(value)})"
    return expression


def _sql_without_junk(expression: str, junk_pattern: str) -> str:
    return f"nullif(regexp_replace({expression}, {_sql_literal(junk_pattern)}, ''), '')"


def _sql_usable_document(expression: str) -> str:
    return _sql_without_junk(expression, DOCUMENT_JUNK_PATTERN)


def _sql_function(signature: str, returns: str, body: str) -> str:
    name, _, _ = signature.partition("(")
    return (
        f"CREATE OR REPLACE FUNCTION {name}(value text) RETURNS {returns}\n"
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
        f"AS $norm$\nSELECT {body}\n$norm$"
    )


def sql_create_functions() -> list[str]:
    """CREATE statements of the SQL twins, in dependency order."""
    digits = _sql_literal("0123456789")
    rare_character = _sql_literal("[^\\u0001-\\u007f" + FOLD_COMMON + "]")
    fold = (
        "CASE WHEN octet_length(value) = length(value) THEN value\n"
        f"  WHEN value ~ {rare_character}\n"
        f"    THEN translate(value, {_sql_literal(FOLD_FROM + FOLD_DELETE)}, "
        f"{_sql_literal(FOLD_TO)})\n"
        f"  ELSE {_sql_replace_common_accents('value')} END"
    )
    alnum_upper = f"upper(regexp_replace(canon.norm_fold(value), {_sql_literal(_NOT_ALNUM)}, '', 'g') COLLATE \"C\")"
    national = (
        "CASE WHEN octet_length(value) = 9 AND starts_with(value, '9') "
        f"AND ltrim(value, {digits}) = '' THEN value\n"
        f"  WHEN value ~ {_sql_literal(PHONE_SPELLING_PATTERN)}\n"
        f"    THEN right(translate(value, {_sql_literal(PHONE_SEPARATORS)}, ''), 9) END"
    )
    phone_fast_sql = "'+51' || " + _sql_nullif_each(f"({national})", PHONE_PLACEHOLDERS)
    # A bare number of 6 or more digits (most rows) skips the regular expressions.
    number = "(CASE WHEN octet_length(value) = 7 THEN '0' || value ELSE value END)"
    document = (
        f"CASE WHEN octet_length(value) >= 6 AND ltrim(value, {digits}) = '' THEN\n"
        f"    CASE WHEN {number} IN ({', '.join(_sql_literal(p) for p in DOCUMENT_PLACEHOLDERS)})"
        f" OR ltrim({number}, left({number}, 1)) = '' THEN NULL ELSE {number} END\n"
        "  ELSE "
        + _sql_usable_document(
            "regexp_replace(regexp_replace(canon.norm_alnum_upper(value), "
            f"{_sql_literal(DOCUMENT_PREFIX_PATTERN)}, ''), {_sql_literal(DOCUMENT_PAD_PATTERN)}, '0')"
        )
        + " END"
    )
    license_document = _sql_usable_document(
        f"right(substring(canon.norm_alnum_upper(value) FROM {_sql_literal(LICENSE_PATTERN)}), 8)"
    )
    # substring(x FROM pattern) is x when the anchored, capture-free pattern matches, else NULL.
    # A placeholder domain is found without a regular expression (one cost 3 us a row): with a
    # '~' appended, "x@correo.com~" becomes "x@@", which the shape rejects; valid addresses only
    # lose the '~' again.
    email = (
        f"regexp_replace(lower(btrim(canon.norm_fold(value), {_sql_literal(EMAIL_TRIM)}) COLLATE \"C\"), "
        f"{_sql_literal(EMAIL_PLACEHOLDER_LOCAL_PATTERN)}, '') || '~'"
    )
    for domain in EMAIL_PLACEHOLDER_DOMAINS:
        email = f"replace({email}, {_sql_literal('@' + domain + '~')}, '@@')"
    email_with_mark = _sql_literal(r"\A" + _EMAIL_SHAPE + r"~\Z")
    email = f"left(substring({email} FROM {email_with_mark}), -1)"
    plate = _sql_without_junk("canon.norm_alnum_upper(value)", PLATE_JUNK_PATTERN)
    # The words of a name, possibly with empty strings. A short value of letters, spaces and
    # Spanish accents (most names) is split on spaces instead of by a regular expression.
    simple_name = _sql_literal("\\A[A-Za-z " + FOLD_COMMON + "]*\\Z")
    name_words = (
        f"CASE WHEN octet_length(value) <= {NAME_MAX_CHARS} AND value ~ {simple_name}\n"
        "    THEN string_to_array(lower(CASE WHEN octet_length(value) = length(value) THEN value\n"
        f"      ELSE {_sql_replace_common_accents('value')} END COLLATE \"C\"), ' ')\n"
        f"  ELSE regexp_split_to_array(lower(canon.norm_fold(left(value, {NAME_MAX_CHARS})) COLLATE \"C\"), "
        "'[^a-z]+') END"
    )
    name_tokens_sql = "canon.norm_name_words(value)"
    for particle in ("", *NAME_PARTICLES):
        name_tokens_sql = f"array_remove({name_tokens_sql}, {_sql_literal(particle)})"
    name_tokens_sql = f"coalesce({name_tokens_sql}, '{{}}'::text[])"
    # A tsvector keeps its lexemes distinct and sorted byte-wise, as Python's sorted() does for
    # ASCII; its text form quotes each lexeme ('a' 'b'), hence the final translate().
    name_key_sql = (
        "nullif(translate(ts_delete(array_to_tsvector(array_remove(canon.norm_name_words(value), '')), "
        f"{_sql_text_array(NAME_PARTICLES)})::text, '''', ''), '')"
    )
    bodies = dict(
        zip(
            SQL_FUNCTION_SIGNATURES,
            (
                ("text", fold),
                ("text", alnum_upper),
                ("text", phone_fast_sql),
                ("text", document),
                ("text", license_document),
                ("text", email),
                ("text", plate),
                ("text[]", name_words),
                ("text[]", name_tokens_sql),
                ("text", name_key_sql),
            ),
            strict=True,
        )
    )
    return [_sql_function(signature, returns, body) for signature, (returns, body) in bodies.items()]


def sql_drop_functions() -> list[str]:
    """DROP statements of the SQL twins, dependents first."""
    return [f"DROP FUNCTION IF EXISTS {signature}" for signature in reversed(SQL_FUNCTION_SIGNATURES)]


# --- Column-wise twins (Polars) ------------------------------------------------------------
# Each twin gives exactly its scalar function mapped over a Series (None as null), for batches.
# A twin is a few paths, each a sequence of stages: the expressions of a stage (Polars
# `with_columns`) read the column "raw" and the previous stages' columns, and the last stage
# leaves "value" and, for a path that decides only some rows, a boolean "decided". A path takes
# the rows the paths before it left undecided (a cheap path for the common clean spellings first,
# so the general one runs on few rows); the scalar function decides what is left, once per
# distinct value. Polars' regular expressions (the Rust regex crate) spell \Z as \z and have no
# lookahead: the patterns holding (?=) have lookahead-free equivalents here, from the same constants.

_RAW, _VALUE = pl.col("raw"), pl.col("value")
_FOLD_FROM_CHARACTERS = list(FOLD_FROM + FOLD_DELETE)
_FOLD_TO_CHARACTERS = list(FOLD_TO) + [""] * len(FOLD_DELETE)
_BARE_MOBILE = r"\A9[0-9]{8}\z"  # phone_fast's shortcut
_PHONE_SEPARATOR_CLASS = _PHONE_GAP.removesuffix("*")
_PHONE_PLACEHOLDER_LIST = sorted(PHONE_PLACEHOLDERS)
_BARE_NUMBER = r"\A[0-9]+\z"
# DOCUMENT_PREFIX_PATTERN with its lookahead digit captured, for the replacement to put it back.
_DOCUMENT_PREFIX_DIGIT = (
    r"\A(?:" + "|".join(DOCUMENT_TYPE_PREFIXES) + ")(?:" + "|".join(DOCUMENT_NUMBER_WORDS) + r")?([0-9])"
)
_DOCUMENT_TO_PAD = r"\A[0-9]{7}\z"  # what DOCUMENT_PAD_PATTERN looks ahead for
# On an address EMAIL_PATTERN accepts (one '@'), its domain is a placeholder.
_EMAIL_PLACEHOLDER_DOMAIN = "@(?:" + "|".join(re.escape(domain) for domain in EMAIL_PLACEHOLDER_DOMAINS) + r")\z"
_NAME_WORDS_ONLY = "[^A-Za-z ]"  # folded name text holding only letters and spaces: most rows
_NOT_NAME_WORDS = ["", *NAME_PARTICLES]


def _rust_regex(pattern: str) -> str:
    """A shared pattern for Polars: \\Z is \\z there, and a pattern with lookahead is refused."""
    if "(?=" in pattern:
        raise ValueError(f"Polars has no lookahead: {pattern}")
    return pattern.replace(r"\Z", r"\z")


# Up to this many rows a column is normalized by the scalar function itself: the twin's frame
# operations cost a few milliseconds per column whatever the rows, the scalar microseconds a value
# (the single-lead path normalizes a one-row frame). The twins equal the scalar functions (tested).
SCALAR_MAX_ROWS = 16


def _column_twin(raw: pl.Series, scalar: Callable, *paths, dtype: pl.DataType = pl.String) -> pl.Series:
    """`scalar` mapped over `raw`: the paths' values (see above), else the scalar function's."""
    if len(raw) <= SCALAR_MAX_ROWS:
        return pl.Series(raw.name, [scalar(text) for text in raw.cast(pl.String).to_list()], dtype=dtype)
    rows = pl.DataFrame({"raw": raw.cast(pl.String)}).with_row_index("row")
    values, overrides = None, []  # the first path's values of every row; later paths' rows
    for stages in paths:
        frame = rows.lazy().with_columns(decided=pl.lit(True))
        for stage in stages:
            frame = frame.with_columns(**stage)
        # A null goes to the scalar function too: one call, which gives None (or no tokens).
        frame = frame.select(
            "row", "raw", _VALUE.cast(dtype), decided=pl.col("decided").fill_null(False) & _RAW.is_not_null()
        ).collect()
        if values is None:
            values = frame["value"]
        elif frame.height:
            overrides.append(frame.filter("decided").select("row", "value"))
        rows = frame.filter(~pl.col("decided")).select("row", "raw")
    distinct = rows["raw"].unique()
    if distinct.len():
        by_scalar = pl.DataFrame(
            {"raw": distinct, "value": pl.Series([scalar(text) for text in distinct], dtype=dtype)}
        )
        overrides.append(rows.join(by_scalar, on="raw", nulls_equal=True).select("row", "value"))
    if overrides:  # row i takes values[i] or its override (gather, unlike scatter, takes lists)
        changed = pl.concat(overrides)
        sources = pl.int_range(len(values), eager=True, dtype=pl.UInt32).scatter(
            changed["row"], pl.int_range(len(values), len(values) + changed.height, eager=True, dtype=pl.UInt32)
        )
        values = pl.concat([values, changed["value"]]).gather(sources)
    return values.rename(raw.name)


def _is_ascii(text: pl.Expr) -> pl.Expr:
    return text.str.len_bytes() == text.str.len_chars()


def _fold_expr(text: pl.Expr) -> pl.Expr:
    return text.str.replace_many(_FOLD_FROM_CHARACTERS, _FOLD_TO_CHARACTERS)


def _alnum_upper_expr(text: pl.Expr, *, fold: bool = True) -> pl.Expr:
    return (_fold_expr(text) if fold else text).str.replace_all(_NOT_ALNUM, "").str.to_uppercase()


def _without_junk(pattern: str) -> dict[str, pl.Expr]:
    return {"value": pl.when(~_VALUE.str.contains(_rust_regex(pattern))).then(_VALUE)}


def document_zero_restored(value: pl.Expr) -> pl.Expr:
    """A 7-digit number with its lost leading zero back, as normalize_document gives it; other values as
    they are. Also for values made from normalized documents (a one-typo variant a digit shorter)."""
    return pl.when(value.str.contains(_DOCUMENT_TO_PAD)).then("0" + value).otherwise(value)


_USABLE_DOCUMENT = (
    {"value": document_zero_restored(_VALUE)},
    _without_junk(DOCUMENT_JUNK_PATTERN),
)
_DOCUMENT_IN_LICENSE = (
    {"value": pl.when(_VALUE.str.contains(_rust_regex(LICENSE_PATTERN))).then(_VALUE.str.slice(1))},
    _without_junk(DOCUMENT_JUNK_PATTERN),
)
_USABLE_EMAIL = (
    {"value": _VALUE.str.to_lowercase().str.replace(_rust_regex(EMAIL_PLACEHOLDER_LOCAL_PATTERN), "")},
    {
        "value": pl.when(
            _VALUE.str.contains(_rust_regex(EMAIL_PATTERN)) & ~_VALUE.str.contains(_EMAIL_PLACEHOLDER_DOMAIN)
        ).then(_VALUE)
    },
)


def _name_tokens_of_words(words: pl.Expr) -> dict[str, pl.Expr]:
    # Only ASCII letters and spaces are left, so lower-casing cannot turn 'K' (Kelvin) into 'k'.
    tokens = words.str.to_lowercase().str.split(" ")
    return {"value": tokens.list.eval(pl.element().filter(~pl.element().is_in(_NOT_NAME_WORDS)))}


def phones_column(raw: pl.Series) -> pl.Series:
    """normalize_phone (region PE) over a Series. Peruvian mobiles in any spelling and values
    without a digit are decided here; placeholders, landlines and foreign numbers by phonenumbers."""
    return _column_twin(raw, normalize_phone, *_phone_paths())


# The paths' expressions are constant: built once (a lead arriving now built them for its one row, ~1 ms).
@cache
def _phone_paths() -> tuple:
    bare_mobile = _RAW.str.contains(_BARE_MOBILE) & ~_RAW.is_in(_PHONE_PLACEHOLDER_LIST)
    return (
        ({"value": "+51" + _RAW, "decided": bare_mobile},),  # most rows
        (
            {"value": _RAW.str.replace_all(_PHONE_SEPARATOR_CLASS, "")},
            {"value": pl.when(_VALUE.str.contains(_rust_regex(PHONE_FAST_PATTERN))).then(_VALUE.str.slice(-9))},
            {
                "value": "+51" + _VALUE,
                "decided": pl.when(_VALUE.is_null())
                .then(~_RAW.str.contains("[0-9]"))
                .otherwise(~_VALUE.is_in(_PHONE_PLACEHOLDER_LIST)),
            },
        ),
    )


def documents_column(raw: pl.Series) -> pl.Series:
    """normalize_document over a Series; every value is decided here."""
    return _column_twin(raw, normalize_document, *_document_paths())


@cache
def _document_paths() -> tuple:
    return (
        ({"value": _RAW, "decided": _RAW.str.contains(_BARE_NUMBER)}, *_USABLE_DOCUMENT),  # most rows
        ({"value": _alnum_upper_expr(_RAW).str.replace(_DOCUMENT_PREFIX_DIGIT, "${1}")}, *_USABLE_DOCUMENT),
    )


def license_documents_column(raw: pl.Series) -> pl.Series:
    """document_from_license over a Series; every value is decided here."""
    return _column_twin(raw, document_from_license, *_license_paths())


@cache
def _license_paths() -> tuple:
    return (
        ({"value": _RAW, "decided": _RAW.str.contains(_rust_regex(LICENSE_PATTERN))}, *_DOCUMENT_IN_LICENSE),
        ({"value": _alnum_upper_expr(_RAW)}, *_DOCUMENT_IN_LICENSE),
    )


def emails_column(raw: pl.Series) -> pl.Series:
    """normalize_email over a Series; every value is decided here."""
    return _column_twin(raw, normalize_email, *_email_paths())


@cache
def _email_paths() -> tuple:
    return (
        ({"value": _RAW.str.strip_chars(EMAIL_TRIM), "decided": _is_ascii(_RAW)}, *_USABLE_EMAIL),  # no folding
        (
            {"value": _fold_expr(_RAW).str.strip_chars(EMAIL_TRIM)},
            {"value": pl.when(_is_ascii(_VALUE)).then(_VALUE)},
            *_USABLE_EMAIL,
        ),
    )


def plates_column(raw: pl.Series) -> pl.Series:
    """normalize_plate over a Series; every value is decided here."""
    return _column_twin(raw, normalize_plate, *_plate_paths())


@cache
def _plate_paths() -> tuple:
    plate = _without_junk(PLATE_JUNK_PATTERN)
    return (
        ({"value": _alnum_upper_expr(_RAW, fold=False), "decided": _is_ascii(_RAW)}, plate),  # most rows
        ({"value": _alnum_upper_expr(_RAW)}, plate),
    )


def name_tokens_column(*parts: pl.Series) -> pl.Series:
    """name_tokens of each row's parts (joined like concat_ws), as a List(String) Series; every row
    is decided here."""
    joined = pl.select(text=pl.concat_str([part.cast(pl.String) for part in parts], separator=" ", ignore_nulls=True))
    tokens = _column_twin(joined.to_series(), _name_token_list, *_name_token_paths(), dtype=pl.List(pl.String))
    return tokens.rename(parts[0].name)


def _name_token_list(text: str | None) -> list[str]:
    return list(name_tokens(text))


@cache
def _name_token_paths() -> tuple:
    folded = {"text": _fold_expr(_RAW.str.slice(0, NAME_MAX_CHARS))}
    return (
        (folded, {"decided": ~pl.col("text").str.contains(_NAME_WORDS_ONLY), **_name_tokens_of_words(pl.col("text"))}),
        (folded, _name_tokens_of_words(pl.col("text").str.replace_all("[^A-Za-z]+", " "))),
    )


def name_keys_column(tokens: pl.Series) -> pl.Series:
    """name_key from name tokens: the distinct tokens sorted and space-joined, null when none."""
    words = (
        tokens.rename("token")
        .to_frame()
        .with_row_index("row")
        .explode("token", empty_as_null=False, keep_nulls=False)
        .drop_nulls("token")
    )
    keys = pl.repeat(None, len(tokens), dtype=pl.String, eager=True).rename(tokens.name)
    if words.is_empty():
        return keys
    # Sorting (row, token) as one integer, the token's rank in the sorted vocabulary (an Enum's
    # code), is several times faster than sorting strings.
    vocabulary = words["token"].unique().sort()
    size = len(vocabulary)
    ranks = (words["row"].cast(pl.UInt64) * size + words["token"].cast(pl.Enum(vocabulary)).to_physical()).sort()
    ranks = ranks.filter(ranks.ne_missing(ranks.shift()))  # each row's distinct tokens, in order
    rows = (ranks // size).cast(pl.UInt32).set_sorted()  # grouping by a sorted key is one scan
    words = pl.DataFrame({"row": rows, "token": vocabulary.gather(ranks % size)})
    by_row = words.group_by("row", maintain_order=True).agg("token")
    joined = by_row["token"].list.join(" ").rename(tokens.name)
    return joined if by_row.height == len(tokens) else keys.scatter(by_row["row"], joined)
