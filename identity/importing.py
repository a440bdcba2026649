"""Load the source CSV files of SPEC §8 into the source tables: stream and validate each row,
COPY the good ones into a staging table, then dedupe, check and upsert them in set-based SQL.
"""

from __future__ import annotations

import codecs
import csv
import heapq
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from psycopg import sql
from tqdm import tqdm

from identity.models import (
    LEADS_TABLE,
    PARK_TIME_ZONE,
    CabinetLead,
    Claim,
    ClaimStatus,
    Driver,
    DriverTrips,
    IdentityLink,
)

logger = logging.getLogger("ct4.import")

LIMA = ZoneInfo(PARK_TIME_ZONE)
DELIMITERS = (",", ";", "\t", "|")
REJECTS_SUFFIX = ".rejects.csv"
STAGE_TABLE = "import_stage"
REJECTS_TABLE = "import_rejects"
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
# Dates outside these years are typing errors in this business (no driver born in 1850).
YEAR_MIN, YEAR_MAX = 1900, 2100


class ImportFileError(Exception):
    """The file or the arguments cannot be imported at all. The message never holds row values."""


class Invalid(ValueError):
    """A cell that cannot be loaded. The message is the reason, safe to log: never the value."""


# --- Cell parsers: a stripped, non-empty string in, the value's canonical text out ------------

NO_SUCH_DAY = "not a valid date (no such calendar day)"
DATE_FORMATS = "not a valid date (use YYYY-MM-DD or DD/MM/YYYY)"
_DMY_DATE = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})")
_DMY_TIMESTAMP = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_AMOUNT = re.compile(r"\d{1,10}(?:\.\d{1,2})?")


def parse_date(raw: str) -> str:
    """YYYY-MM-DD or DD/MM/YYYY (Peruvian day-first order)."""
    if len(raw) == 10 and raw[4] == "-":
        try:
            value = date.fromisoformat(raw)
        except ValueError:
            raise Invalid(NO_SUCH_DAY if _ISO_DATE.fullmatch(raw) else DATE_FORMATS) from None
    else:
        match = _DMY_DATE.fullmatch(raw)
        if match is None:
            raise Invalid(DATE_FORMATS)
        try:
            value = date(int(match[3]), int(match[2]), int(match[1]))
        except ValueError:
            raise Invalid(NO_SUCH_DAY) from None
    if not YEAR_MIN <= value.year <= YEAR_MAX:
        raise Invalid("not a valid date (year outside 1900-2100)")
    return value.isoformat()


def parse_timestamp(raw: str) -> str:
    """ISO 8601 with or without offset, or DD/MM/YYYY HH:MM[:SS]; naive values are Lima time."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        match = _DMY_TIMESTAMP.fullmatch(raw)
        if match is None:
            raise Invalid("not a valid timestamp (use YYYY-MM-DD HH:MM[:SS][+HH:MM] or DD/MM/YYYY HH:MM)") from None
        day, month, year, hour, minute, second = match.groups()
        try:
            value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
        except ValueError:
            raise Invalid("not a valid timestamp (no such day or time of day)") from None
    if not YEAR_MIN <= value.year <= YEAR_MAX:
        raise Invalid("not a valid timestamp (year outside 1900-2100)")
    if value.tzinfo is None:
        value = value.replace(tzinfo=LIMA)
    return value.isoformat()


def parse_lead_id(raw: str) -> str:
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= BIGINT_MAX:
        return str(int(raw))
    raise Invalid("not a whole number (digits only, at most 9223372036854775807)")


def parse_trips(raw: str) -> str:
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= INT_MAX:
        return str(int(raw))
    raise Invalid("not a whole number of trips >= 0")


def parse_milestone(raw: str) -> str:
    if raw.isascii() and raw.isdigit() and int(raw) in Claim.MILESTONES:
        return str(int(raw))
    raise Invalid("milestone must be 1, 5 or 25")


def parse_amount(raw: str) -> str:
    """A non-negative amount with at most 2 decimals; a decimal comma is accepted (1250,50)."""
    text = raw.replace(" ", "")
    if text.startswith("-"):
        raise Invalid("amount must not be negative")
    if "," in text:
        if "." in text:
            # Both separators: the last one is the decimal separator.
            if text.rfind(",") > text.rfind("."):
                text = text.replace(".", "").replace(",", ".")
            else:
                text = text.replace(",", "")
        elif re.fullmatch(r"\d{1,3}(,\d{3})+", text):
            raise Invalid("ambiguous amount (a comma before 3 digits); write it with a decimal point")
        else:
            text = text.replace(",", ".")
    if _AMOUNT.fullmatch(text) is None:
        raise Invalid("not an amount >= 0 with at most 2 decimals")
    return text


CLAIM_STATUSES = frozenset(ClaimStatus.values)


def parse_claim_status(raw: str) -> str:
    value = raw.lower()
    if value in CLAIM_STATUSES:
        return value
    raise Invalid(f"status must be one of {', '.join(ClaimStatus.values)}")


# --- The formats: each kind's columns as data ------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A CSV column: its parser (None: trimmed text), whether a value is required, its SQL type,
    and what an empty cell (or a column absent from the file) loads as on insert."""

    name: str
    parse: Callable[[str], str] | None = None
    required: bool = False
    sql_type: str = "text"
    empty: str | None = None


@dataclass(frozen=True)
class SourceKind:
    name: str
    table: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    # Set to the statement time when a row's values really change (None: the table has none).
    touch: str | None = "updated_at"
    # Values set on insert only, as SQL literals.
    insert_only: tuple[tuple[str, str], ...] = ()
    # Extra set-based checks that reject staged rows before the upsert.
    check: Callable[..., None] | None = None


def _text(*names: str) -> tuple[Column, ...]:
    return tuple(Column(name) for name in names)


# --- Reading ----------------------------------------------------------------------------------


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) when the whole file decodes as UTF-8, else Latin-1; a
    non-UTF-8 file using Windows-1252's extra characters (curly quotes, dashes) is cp1252."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8 = True
    has_c1 = False  # bytes 0x80-0x9F: control characters in Latin-1, punctuation in cp1252
    cp1252_gaps = False  # bytes Windows-1252 leaves undefined
    c1, gaps = re.compile(rb"[\x80-\x9f]"), re.compile(rb"[\x81\x8d\x8f\x90\x9d]")
    with _open_binary(path) as binary:
        head = binary.read(4)
        if not head:
            raise ImportFileError(f"{path}: the file is empty")
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise ImportFileError(f"{path}: the file is UTF-16 text; save it as CSV (UTF-8)")
        bom = head.startswith(codecs.BOM_UTF8)
        binary.seek(0)
        while chunk := binary.read(1 << 20):
            if b"\0" in chunk:
                raise ImportFileError(f"{path}: not a CSV file (it has binary content)")
            if utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
            has_c1 = has_c1 or c1.search(chunk) is not None
            cp1252_gaps = cp1252_gaps or gaps.search(chunk) is not None
        if utf8:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8 = False
    if utf8:
        return "utf-8-sig" if bom else "utf-8"
    return "cp1252" if has_c1 and not cp1252_gaps else "latin-1"


def _open_binary(path: Path):
    try:
        return open(path, "rb", buffering=1 << 20)
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportFileError(f"{path}: is a directory, not a file") from None
    except OSError as error:
        raise ImportFileError(f"{path}: cannot read the file ({error.strerror})") from None


class CsvFile:
    """An open CSV file: its delimiter, header, and its records with their physical line numbers."""

    def __init__(self, path: Path, encoding: str):
        self.path = path
        self.binary = _open_binary(path)
        self.text = io.TextIOWrapper(self.binary, encoding=encoding, newline="")
        first = self.text.readline()
        if not first.strip():
            self.close()
            raise ImportFileError(f"{path}: no header row (line 1 is empty)")
        counts = {d: first.count(d) for d in DELIMITERS}
        self.delimiter = max(DELIMITERS, key=lambda d: counts[d]) if any(counts.values()) else ","
        self.header = next(csv.reader([first], delimiter=self.delimiter))

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """(line number where the record starts, fields); the header is line 1, blank lines skipped."""
        reader = csv.reader(self.text, delimiter=self.delimiter)
        end = 1
        try:
            for row in reader:
                start, end = end + 1, reader.line_num + 1
                if row:
                    yield start, row
        except csv.Error as error:
            raise ImportFileError(f"{self.path}: line {reader.line_num + 1}: not valid CSV ({error})") from None

    def close(self) -> None:
        self.text.close()

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _column_name(raw: str) -> str:
    return re.sub(r"[\s\-]+", "_", raw.strip().strip('"').strip().lower())


@dataclass(frozen=True)
class Layout:
    """Where each of the kind's columns is in this file's rows."""

    positions: dict[str, int]
    ignored: list[str]
    absent: list[str]
    width: int


def known_in(kind: SourceKind, names: list[str]) -> set[str]:
    return {c.name for c in kind.columns} & set(names)


def read_layout(kind: SourceKind, header: list[str], path: Path) -> Layout:
    names = [_column_name(h) for h in header]
    known = {c.name for c in kind.columns}
    positions: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in known:
            if name in positions:
                raise ImportFileError(f"{path}: column {name} appears twice in the header")
            positions[name] = index
    expected = ", ".join(c.name for c in kind.columns)
    if not positions:
        raise ImportFileError(f"{path}: line 1 is not a {kind.name} header: no known column (expected {expected})")
    # A trips file given as drivers shares driver_id and would load id-only drivers: refuse a
    # header that another kind explains better.
    for other in KINDS.values():
        if other is not kind and len(known_in(other, names)) > len(positions):
            raise ImportFileError(f"{path}: the header looks like a {other.name} file, not {kind.name}; check KIND")
    missing = [c.name for c in kind.columns if c.required and c.name not in positions]
    if missing:
        raise ImportFileError(
            f"{path}: required column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing from the header"
            f" (expected {expected})"
        )
    return Layout(
        positions=positions,
        ignored=[h.strip() for h, n in zip(header, names) if n and n not in known],
        absent=[c.name for c in kind.columns if c.name not in positions],
        width=len(header),
    )


# --- The result -------------------------------------------------------------------------------


@dataclass
class ImportResult:
    kind: str
    path: Path
    encoding: str = ""
    delimiter: str = ","
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects_path: Path | None = None
    seconds: float = 0.0
    dry_run: bool = False
    ignored_columns: list[str] = field(default_factory=list)
    absent_columns: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        return self.inserted + self.updated + self.unchanged

    @property
    def exit_status(self) -> int:
        return 1 if self.rejected else 0

    def summary(self) -> str:
        dry = " (dry run, nothing written)" if self.dry_run else ""
        text = (
            f"{self.kind}{dry}: {self.rows_read} rows read, {self.loaded} loaded ({self.inserted} new, "
            f"{self.updated} updated, {self.unchanged} unchanged), {self.rejected} rejected"
        )
        if self.rejects_path:
            text += f" -> {self.rejects_path}"
        name = "TAB" if self.delimiter == "\t" else self.delimiter
        delimiter = "" if self.delimiter == "," else f", {name}-separated"
        text += f" [{self.encoding}{delimiter}, {self.seconds:.1f}s]"
        if self.absent_columns:
            text += f"; absent columns (empty on new rows, kept on existing): {', '.join(self.absent_columns)}"
        if self.ignored_columns:
            text += f"; ignored columns: {', '.join(self.ignored_columns)}"
        return text

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "rows_read": self.rows_read,
            "loaded": self.loaded,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejects_path": str(self.rejects_path) if self.rejects_path else None,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "ignored_columns": self.ignored_columns,
            "absent_columns": self.absent_columns,
        }


# --- The import -------------------------------------------------------------------------------


def rejects_path_for(path: Path) -> Path:
    return path.with_name(path.name + REJECTS_SUFFIX)


# Rows written by one import above which the table is vacuumed, not only analyzed.
VACUUM_AFTER_ROWS = 10_000


def source_import(*, kind: str, path: Path, dry_run: bool = False, progress: bool = False) -> ImportResult:
    """Import one CSV file of `kind`, all or nothing. Bad rows go to FILE.rejects.csv; good rows load.

    Raises ImportFileError when the file or kind cannot be imported at all.
    """
    started = time.monotonic()
    path = Path(path)
    spec = KINDS.get(kind)
    if spec is None:
        raise ImportFileError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    encoding = detect_encoding(path)
    result = ImportResult(kind=kind, path=path, encoding=encoding, dry_run=dry_run)
    final_rejects = rejects_path_for(path)
    with CsvFile(path, encoding) as source, tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as rejects:
        layout = read_layout(spec, source.header, path)
        result.delimiter = source.delimiter
        result.ignored_columns, result.absent_columns = layout.ignored, layout.absent
        rejects_header = ["line", "column", "reason", *source.header]
        csv.writer(rejects).writerow(rejects_header)
        with transaction.atomic():
            connection.ensure_connection()
            with connection.connection.cursor() as cursor:
                _prepare(cursor, spec, layout)
                flagged = _stream(cursor, spec, layout, source, rejects, result, progress)
                if _load(cursor, spec, layout, result, flagged):
                    rejects = _merge_rejects(path, encoding, rejects, rejects_header)
                cursor.execute(f"DROP TABLE {STAGE_TABLE}, {REJECTS_TABLE}")
            if dry_run:
                transaction.set_rollback(True)
        _publish_rejects(rejects, final_rejects, bool(result.rejected))
        rejects.close()
    if not dry_run and (result.inserted or result.updated):
        # Fresh statistics, or the next jobs plan their joins for the table as it was. After a
        # bulk load, VACUUM too: it sets the visibility map, so the views' index-only scans (a
        # lead's trips in its window, a lead's claims) stop visiting the heap for every row, whether
        # or not autovacuum has come by yet (VACUUM cannot run inside a caller's transaction).
        bulk = result.inserted + result.updated >= VACUUM_AFTER_ROWS and not connection.in_atomic_block
        with connection.cursor() as cursor:
            cursor.execute(f"{'VACUUM (ANALYZE)' if bulk else 'ANALYZE'} {spec.table}")
    result.rejects_path = final_rejects if result.rejected else None
    result.seconds = time.monotonic() - started
    logger.info("import_source %s", result.summary())
    return result


def _staged(spec: SourceKind, layout: Layout) -> tuple[list[Column], list[Column]]:
    """The file's columns in staging order: plain text first (read in one sweep), then parsed."""
    present = [c for c in spec.columns if c.name in layout.positions]
    plain = [c for c in present if c.parse is None and c.empty is None]
    return plain, [c for c in present if c not in plain]


def _prepare(cursor, spec: SourceKind, layout: Layout) -> None:
    plain, parsed = _staged(spec, layout)
    cursor.execute(
        sql.SQL("CREATE TEMP TABLE {} (line integer NOT NULL, rejected boolean NOT NULL, {}) ON COMMIT DROP").format(
            sql.Identifier(STAGE_TABLE),
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in [*plain, *parsed]
            ),
        )
    )
    cursor.execute(
        f"CREATE TEMP TABLE {REJECTS_TABLE} (line integer PRIMARY KEY, col text, reason text) ON COMMIT DROP"
    )
    # Room for the dedupe's hash aggregate over a million keys, and no JIT: compiling these
    # one-off statements costs more than it saves (1.5 s of 1.8 s on 100,000 leads). Both
    # settings revert at the end of the transaction.
    cursor.execute("SET LOCAL work_mem = '256MB'")
    cursor.execute("SET LOCAL jit = off")


MISSING = "required value is missing"


def _stream(
    cursor, spec: SourceKind, layout: Layout, source: CsvFile, rejects, result: ImportResult, progress: bool
) -> int:
    """Validate each record in Python; COPY good ones into the staging table, bad ones to `rejects`.

    A bad record whose key is readable is staged too, flagged, so that it still supersedes
    earlier records with the same key: the last occurrence in the file wins, even when bad.
    Returns how many such flagged records were staged.
    """
    plain, parsed = _staged(spec, layout)
    plain_positions = [layout.positions[c.name] for c in plain]
    plain_required = [(2 + k, c.name) for k, c in enumerate(plain) if c.required]
    plan = [(layout.positions[c.name], c.name, c.parse, c.required, c.empty) for c in parsed]
    order = {c.name: k for k, c in enumerate(spec.columns)}
    key_names = set(spec.key)
    width = layout.width
    write_reject = csv.writer(rejects).writerow
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in [*plain, *parsed])
    copy_sql = sql.SQL("COPY {} (line, rejected, {}) FROM STDIN").format(sql.Identifier(STAGE_TABLE), names)
    total = os.fstat(source.binary.fileno()).st_size
    read = rejected = flagged = 0
    with (
        tqdm(total=total, unit="B", unit_scale=True, desc=spec.name, disable=not progress, file=sys.stderr) as bar,
        cursor.copy(copy_sql) as copy,
    ):
        write_row = copy.write_row
        for line, row in source.records():
            if len(row) != width:
                if any(f.strip() for f in row):
                    read += 1
                    rejected += 1
                    write_reject([line, "", f"the row has {len(row)} fields, the header has {width}", *row])
                continue
            values: list = [line, False]
            values += [row[i].strip() or None for i in plain_positions]
            errors = [(name, MISSING) for k, name in plain_required if values[k] is None] or None
            for index, name, parse, required, empty in plan:
                raw = row[index].strip()
                if raw:
                    try:
                        values.append(parse(raw))
                        continue
                    except Invalid as error:
                        reason = str(error)
                elif not required:
                    values.append(empty)
                    continue
                else:
                    reason = MISSING
                values.append(None)
                if errors is None:
                    errors = []
                errors.append((name, reason))
            read += 1
            if errors is None:
                write_row(values)
            elif not any(f.strip() for f in row):
                read -= 1  # a row of empty cells (spreadsheet padding) carries nothing
            else:
                rejected += 1
                errors.sort(key=lambda error: order[error[0]])
                (name, reason), others = errors[0], errors[1:]
                if others:
                    reason += "; also " + "; ".join(f"{n}: {r}" for n, r in others)
                write_reject([line, name, reason, *row])
                if not key_names.intersection(n for n, _ in errors):
                    values[1] = True
                    write_row(values)
                    flagged += 1
            if progress and read % 16384 == 0:
                bar.update(source.binary.tell() - bar.n)
        bar.update(total - bar.n)
        bar.set_postfix_str("read; loading into the database")
    result.rows_read, result.rejected = read, rejected
    return flagged


def _load(cursor, spec: SourceKind, layout: Layout, result: ImportResult, flagged: int) -> int:
    """Dedupe, check and upsert the staged rows in set-based SQL. Returns how many rows it rejected."""
    # One import of a kind at a time: concurrent upserts of the same keys would deadlock.
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"ct4.import_source.{spec.name}"])
    cursor.execute(f"ANALYZE {STAGE_TABLE}")
    key = sql.SQL(", ").join(map(sql.Identifier, spec.key))
    cursor.execute(
        sql.SQL(
            """
            INSERT INTO {rejects} (line, col, reason)
            SELECT s.line, %(key_label)s, 'duplicate key, superseded by line ' || d.last_line
                   || CASE WHEN d.last_line = d.last_rejected THEN ' (itself rejected)' ELSE '' END
            FROM {stage} s
            JOIN (
                -- keys given more than once: the last line wins
                SELECT {key}, max(line) AS last_line, max(line) FILTER (WHERE rejected) AS last_rejected
                FROM {stage} GROUP BY {key} HAVING count(*) > 1
            ) d USING ({key})
            WHERE NOT s.rejected AND s.line < d.last_line
            """
        ).format(rejects=sql.Identifier(REJECTS_TABLE), stage=sql.Identifier(STAGE_TABLE), key=key),
        {"key_label": "+".join(spec.key)},
    )
    rejected = cursor.rowcount
    if flagged:
        cursor.execute(f"DELETE FROM {STAGE_TABLE} WHERE rejected")
    _drop_rejected(cursor, rejected)
    if spec.check is not None:
        checked = spec.check(cursor, layout)
        _drop_rejected(cursor, checked)
        rejected += checked
    result.rejected += rejected
    result.inserted, result.updated = _upsert(cursor, spec, layout)
    result.unchanged = result.rows_read - result.rejected - result.inserted - result.updated
    return rejected


def _drop_rejected(cursor, rejected: int) -> None:
    if rejected:
        cursor.execute(f"DELETE FROM {STAGE_TABLE} s USING {REJECTS_TABLE} r WHERE s.line = r.line")


def _upsert(cursor, spec: SourceKind, layout: Layout) -> tuple[int, int]:
    """One INSERT ... ON CONFLICT for the whole file; a row is updated only when a value differs."""
    present = [c.name for c in spec.columns if c.name in layout.positions]
    values = [name for name in present if name not in spec.key]
    absent = [c for c in spec.columns if c.name not in layout.positions]
    defaults = [(c.name, sql.Literal(c.empty)) for c in absent if c.empty is not None]
    defaults += [(name, sql.SQL(literal)) for name, literal in spec.insert_only]
    target = sql.SQL(", ").join(sql.Identifier(n) for n in [*present, *(n for n, _ in defaults)])
    source = sql.SQL(", ").join(
        [*(sql.SQL("s.{}").format(sql.Identifier(n)) for n in present), *(value for _, value in defaults)]
    )
    key = sql.SQL(", ").join(map(sql.Identifier, spec.key))
    # Rows equal to the stored ones are left out before the upsert: ON CONFLICT would lock (and
    # so rewrite) every one of them even when its WHERE skips the update.
    same = sql.SQL(" AND ").join(
        [sql.SQL("cur.{0} = s.{0}").format(sql.Identifier(n)) for n in spec.key]
        + [sql.SQL("cur.{0} IS NOT DISTINCT FROM s.{0}").format(sql.Identifier(n)) for n in values]
    )
    if values:
        assignments = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in values]
        if spec.touch:
            assignments.append(sql.SQL("{} = statement_timestamp()").format(sql.Identifier(spec.touch)))
        conflict = sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(assignments),
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(n)) for n in values),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(n)) for n in values),
        )
    else:
        conflict = sql.SQL("DO NOTHING")
    cursor.execute(
        sql.SQL(
            """
            WITH upserted AS (
                INSERT INTO {table} AS t ({target})
                SELECT {source} FROM {stage} s
                WHERE NOT EXISTS (SELECT FROM {table} cur WHERE {same})
                -- in key order, the key index is filled page by page instead of at random
                ORDER BY {key}
                ON CONFLICT ({key}) {conflict}
                RETURNING xmax = 0 AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
            """
        ).format(
            table=sql.Identifier(spec.table),
            target=target,
            source=source,
            stage=sql.Identifier(STAGE_TABLE),
            key=key,
            same=same,
            conflict=conflict,
        )
    )
    inserted, updated = cursor.fetchone()
    return inserted, updated


def _check_lead_source_pks(cursor, layout: Layout) -> int:
    """Reject leads whose source_pk (COALESCE(external_id, id)) would collide with another lead's,
    or would change under an identity link or a claim that names the old one."""
    if "external_id" in layout.positions:
        effective = "COALESCE(s.external_id, s.id::text)"
    else:  # absent column: existing leads keep their external_id
        effective = "COALESCE(cur.source_pk, s.id::text)"
    cursor.execute(
        f"""
        WITH eff AS (
            -- the source_pk each staged lead will have after the import
            SELECT s.line, s.id, {effective} AS spk, cur.source_pk AS old_spk
            FROM {STAGE_TABLE} s LEFT JOIN {LEADS_TABLE} cur ON cur.id = s.id
        ), taken AS (
            -- held by another lead already in the table
            SELECT e.line, 'source_pk ' || e.spk || ' already belongs to lead id ' || t.id AS reason
            FROM eff e JOIN {LEADS_TABLE} t ON t.source_pk = e.spk AND t.id <> e.id
        ), moved AS (
            -- would change under a link or a claim that names the old source_pk
            SELECT e.line, 'would change source_pk ' || e.old_spk || ' to ' || e.spk
                   || ', which identity links or claims refer to' AS reason
            FROM eff e
            WHERE e.old_spk <> e.spk AND e.line NOT IN (SELECT line FROM taken) AND (
                EXISTS (SELECT 1 FROM {_quoted(IdentityLink)} l
                        WHERE l.source_table = %(leads)s AND l.source_pk = e.old_spk)
                OR EXISTS (SELECT 1 FROM {_quoted(Claim)} c WHERE c.lead_source_pk = e.old_spk))
        ), rest AS (
            SELECT * FROM eff WHERE line NOT IN (SELECT line FROM taken UNION ALL SELECT line FROM moved)
        ), shared AS (
            -- given to two or more different leads in this file
            SELECT spk FROM rest GROUP BY spk HAVING count(*) > 1
        )
        INSERT INTO {REJECTS_TABLE} (line, col, reason)
        SELECT line, 'external_id', reason FROM taken
        UNION ALL SELECT line, 'external_id', reason FROM moved
        UNION ALL
        SELECT r.line, 'external_id', 'source_pk ' || r.spk || ' is given to the different leads on lines '
               || (SELECT string_agg(o.line::text, ', ' ORDER BY o.line) FROM rest o WHERE o.spk = r.spk)
        FROM rest r JOIN shared sh USING (spk)
        """,
        {"leads": LEADS_TABLE},
    )
    return cursor.rowcount


def _quoted(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _merge_rejects(path: Path, encoding: str, rejects, header: list[str]):
    """Rejects found in SQL carry only their line: read the file again to attach each one's
    original fields, and merge them with the rejects found while streaming, in line order."""
    merged = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115 - returned; the caller closes it
    rejects.seek(0)
    streamed = csv.reader(rejects)
    next(streamed)
    streamed_rows = ([int(row[0]), *row[1:]] for row in streamed)
    with CsvFile(path, encoding) as source, connection.connection.cursor(name="import_rejects_by_line") as found:
        found.itersize = 10000
        found.execute(f"SELECT line, col, reason FROM {REJECTS_TABLE} ORDER BY line")

        def found_rows() -> Iterator[list]:
            pending = iter(found)
            wanted = next(pending, None)
            for line, fields in source.records():
                if wanted is None:
                    return
                if line == wanted[0]:
                    yield [*wanted, *fields]
                    wanted = next(pending, None)

        writer = csv.writer(merged)
        writer.writerow(header)
        writer.writerows(heapq.merge(streamed_rows, found_rows(), key=lambda row: row[0]))
    rejects.close()
    return merged


def _publish_rejects(rejects, final: Path, any_rejects: bool) -> None:
    """Put the rejects file next to the input atomically, or remove a stale one from an earlier run."""
    try:
        if not any_rejects:
            final.unlink(missing_ok=True)
            return
        rejects.seek(0)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", newline="", dir=final.parent, prefix=f".{final.name}.", delete=False
        ) as out:
            shutil.copyfileobj(rejects, out)
        os.replace(out.name, final)
    except OSError as error:
        raise ImportFileError(f"{final}: cannot write the rejects file ({error.strerror})") from None


# --- The four kinds (SPEC §8) ------------------------------------------------------------------

KINDS: dict[str, SourceKind] = {
    kind.name: kind
    for kind in (
        SourceKind(
            name="cabinet_leads",
            table=CabinetLead._meta.db_table,
            key=("id",),
            columns=(
                Column("id", parse_lead_id, required=True, sql_type="bigint"),
                Column("external_id"),
                Column("created_at", parse_timestamp, required=True, sql_type="timestamptz"),
                *_text("first_name", "middle_name", "last_name", "phone", "document", "email", "plate", "park_id"),
                Column("birth_date", parse_date, sql_type="date"),
            ),
            check=_check_lead_source_pks,
        ),
        SourceKind(
            name="drivers",
            table=Driver._meta.db_table,
            key=("driver_id",),
            columns=(
                Column("driver_id", required=True),
                *_text("park_id", "first_name", "middle_name", "last_name", "phone", "license_number"),
                *_text("document", "email", "plate"),
                Column("birth_date", parse_date, sql_type="date"),
                Column("hire_date", parse_date, sql_type="date"),
                Column("status"),
            ),
        ),
        SourceKind(
            name="trips",
            table=DriverTrips._meta.db_table,
            key=("driver_id", "date"),
            columns=(
                Column("driver_id", required=True),
                Column("date", parse_date, required=True, sql_type="date"),
                Column("trips", parse_trips, required=True, sql_type="integer"),
            ),
            touch=None,
        ),
        SourceKind(
            name="claims",
            table=Claim._meta.db_table,
            key=("lead_source_pk", "milestone"),
            columns=(
                Column("lead_source_pk", required=True),
                Column("driver_id"),
                Column("milestone", parse_milestone, required=True, sql_type="smallint"),
                Column("amount", parse_amount, required=True, sql_type="numeric(12, 2)"),
                Column("status", parse_claim_status, empty=ClaimStatus.EXPECTED.value),
                Column("claimed_at", parse_timestamp, sql_type="timestamptz"),
            ),
            insert_only=(("created_by", "'import'"),),
        ),
    )
}
