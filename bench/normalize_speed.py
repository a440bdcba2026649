"""Speed of identity normalization: the Python functions, their SQL and Polars twins over a million values.

Run: .venv/bin/python bench/normalize_speed.py [--rows N] [--skip-python] [--skip-sql] [--skip-polars]
(the database is DATABASE_URL's, or the embedded default; migrations must have been applied).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ct4site.settings")

FIRST_NAMES = ["JUAN", "José", "MARIA", "Rosa", "LUIS", "Ángel", "JESUS", "Pilar", "CARLOS", "Yésica", "WILBER"]
SURNAMES = ["QUISPE", "Mamani", "ÑAHUI", "Huamán", "FLORES", "de la Cruz", "CHAVEZ", "Rodríguez", "CCORI", "Peña"]

# The same mixes as the Python lists below, made by generate_series in SQL.
SQL_PHONE = """CASE WHEN mod(g, 20) < 14 THEN '9' || lpad(mod(g * 7919, 100000000)::text, 8, '0')
  WHEN mod(g, 20) < 17 THEN '9' || substr(lpad(mod(g * 7919, 100000000)::text, 8, '0'), 1, 2) || ' '
       || substr(lpad(mod(g * 7919, 100000000)::text, 8, '0'), 3, 3) || ' '
       || substr(lpad(mod(g * 7919, 100000000)::text, 8, '0'), 6, 3)
  WHEN mod(g, 20) = 17 THEN '+51 9' || lpad(mod(g * 7919, 100000000)::text, 8, '0')
  WHEN mod(g, 20) = 18 THEN '(01) 555-' || lpad(mod(g, 10000)::text, 4, '0')
  ELSE '' END"""
SQL_DOCUMENT = """CASE WHEN mod(g, 10) < 8 THEN lpad(mod(g * 7919, 100000000)::text, 8, '0')
  WHEN mod(g, 10) = 8 THEN 'DNI ' || lpad(mod(g * 7919, 100000000)::text, 8, '0')
  ELSE mod(g * 7919, 10000000)::text END"""
SQL_EMAIL = """(ARRAY['juan.quispe', 'ROSA_MAMANI', 'sincorreo', 'maria+uber'])[1 + mod(g, 4)] || mod(g, 1000)
  || '@' || (ARRAY['gmail.com', 'Hotmail.com', 'correo.com', 'outlook.com.pe'])[1 + mod(g / 4, 4)]"""
SQL_PLATE = """(ARRAY['ABC-', 'a1b ', 'BHT', 'C5X-'])[1 + mod(g, 4)] || lpad(mod(g, 1000)::text, 3, '0')"""
SQL_NAME = f"""(ARRAY[{", ".join(repr(name) for name in FIRST_NAMES)}])[1 + mod(g, {len(FIRST_NAMES)})] || ' '
  || (ARRAY[{", ".join(repr(name) for name in SURNAMES)}])[1 + mod(g / 7, {len(SURNAMES)})] || ' '
  || (ARRAY[{", ".join(repr(name) for name in SURNAMES)}])[1 + mod(g / 3, {len(SURNAMES)})]"""


def python_values(rows: int) -> dict[str, list[str]]:
    rng = random.Random(20260101)
    phones, documents, names, licences = [], [], [], []
    for _ in range(rows):
        national = f"9{rng.randrange(100_000_000):08d}"
        kind = rng.randrange(20)
        if kind < 14:
            phones.append(national)
        elif kind < 17:
            phones.append(f"{national[:3]} {national[3:6]} {national[6:]}")
        elif kind == 17:
            phones.append("+51 " + national)
        elif kind == 18:
            phones.append(f"(01) 555-{rng.randrange(10_000):04d}")
        else:
            phones.append("")
        dni = f"{rng.randrange(100_000_000):08d}"
        kind = rng.randrange(10)
        documents.append(dni if kind < 8 else "DNI " + dni if kind == 8 else dni[1:])
        names.append(f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)} {rng.choice(SURNAMES)}")
        licences.append(("Q", "Q", "Q", "Q", "Q", "Q", "Q", "q-", "A ", "B")[kind] + dni)
    # E-mails and plates as SQL_EMAIL and SQL_PLATE make them (g counts from 1).
    email_locals = ["juan.quispe", "ROSA_MAMANI", "sincorreo", "maria+uber"]
    email_domains = ["gmail.com", "Hotmail.com", "correo.com", "outlook.com.pe"]
    emails = [f"{email_locals[g % 4]}{g % 1000}@{email_domains[g // 4 % 4]}" for g in range(1, rows + 1)]
    plates = [f"{['ABC-', 'a1b ', 'BHT', 'C5X-'][g % 4]}{g % 1000:03d}" for g in range(1, rows + 1)]
    return {
        "phones": phones,
        "documents": documents,
        "names": names,
        "licences": licences,
        "emails": emails,
        "plates": plates,
    }


def time_python(rows: int) -> None:
    from identity.normalize import name_key, normalize_document, normalize_phone, phone_fast  # noqa: PLC0415 - after django.setup()

    values = python_values(rows)
    for label, function, inputs in (
        ("phone_fast", phone_fast, values["phones"]),
        ("normalize_phone", normalize_phone, values["phones"]),
        ("normalize_document", normalize_document, values["documents"]),
        ("name_key", name_key, values["names"]),
    ):
        started = time.perf_counter()
        for value in inputs:
            function(value)
        elapsed = time.perf_counter() - started
        print(f"python {label:<28} {elapsed:7.2f} s  {elapsed / rows * 1e9:8.0f} ns/call")


def time_polars(rows: int) -> None:
    import polars as pl  # noqa: PLC0415 - after django.setup(), like identity.normalize

    from identity import normalize  # noqa: PLC0415 - after django.setup()

    values = {label: pl.Series(label, inputs) for label, inputs in python_values(rows).items()}
    # Drivers keep a name in boxes: the first name, and the surnames in the last box.
    boxes = values["names"].str.splitn(" ", 2).struct.unnest()
    first, last = boxes["field_0"], boxes["field_1"]
    middle = pl.repeat(None, rows, dtype=pl.String, eager=True)
    tokens = normalize.name_tokens_column(first, middle, last)
    load = ", ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"polars {pl.__version__}, {pl.thread_pool_size()} threads, load average {load}, {rows:,} rows")
    total = 0.0
    for label, twin, inputs in (
        ("phones_column", normalize.phones_column, (values["phones"],)),
        ("documents_column", normalize.documents_column, (values["documents"],)),
        ("license_documents_column", normalize.license_documents_column, (values["licences"],)),
        ("emails_column", normalize.emails_column, (values["emails"],)),
        ("plates_column", normalize.plates_column, (values["plates"],)),
        ("name_tokens_column", normalize.name_tokens_column, (first, middle, last)),
        ("name_keys_column", normalize.name_keys_column, (tokens,)),
    ):
        best = float("inf")
        for _ in range(2):  # the best of two, as for SQL
            started = time.perf_counter()
            twin(*inputs)
            best = min(best, time.perf_counter() - started)
        total += best
        print(f"polars {label:<28} {best:7.2f} s  {best / rows * 1e9:8.0f} ns/row")
    print(f"polars all twins, one driver batch    {total:7.2f} s")


def time_sql(rows: int) -> None:
    import django  # noqa: PLC0415 - after the settings module and the bench database are chosen

    django.setup()
    from django.db import connection  # noqa: PLC0415 - after django.setup()

    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regprocedure('canon.norm_name_key(text)') IS NOT NULL")
        if not cursor.fetchone()[0]:
            sys.exit("canon.norm_* functions are missing: run manage.py migrate first")
        cursor.execute("SELECT current_setting('server_version'), current_setting('jit')")
        version, jit = cursor.fetchone()
        print(f"postgres {version}, jit={jit}, {rows:,} rows from generate_series")

        def timed(select: str, value_sql: str) -> float:
            # OFFSET 0 keeps the subquery from being flattened: flattened, the value expression would
            # be pasted into every place an inlined twin reads its argument and be computed again.
            sql = (
                f"SELECT {select} FROM "
                f"(SELECT {value_sql} AS x FROM generate_series(1::bigint, %s) AS g OFFSET 0) AS s"
            )
            best = float("inf")
            for _ in range(2):  # the best of two: the first run may pay for JIT or cold caches
                started = time.perf_counter()
                cursor.execute(sql, [rows])
                cursor.fetchall()
                best = min(best, time.perf_counter() - started)
            return best

        for label, value_sql in (
            ("canon.norm_phone_fast", SQL_PHONE),
            ("canon.norm_document", SQL_DOCUMENT),
            ("canon.norm_name_key", SQL_NAME),
            ("canon.norm_name_tokens", SQL_NAME),
            ("canon.norm_email", SQL_EMAIL),
            ("canon.norm_plate", SQL_PLATE),
        ):
            baseline = timed("count(x)", value_sql)
            total = timed(f"count({label}(x))", value_sql)
            print(
                f"sql    {label:<28} {total:7.2f} s  ({total - baseline:5.2f} s over making the values,"
                f" {(total - baseline) / rows * 1e9:5.0f} ns/row)"
            )
        started = time.perf_counter()
        cursor.execute(
            f"SELECT count(canon.norm_phone_fast(p)), count(canon.norm_name_key(n)) "
            f"FROM (SELECT {SQL_PHONE} AS p, {SQL_NAME} AS n FROM generate_series(1::bigint, %s) AS g OFFSET 0) AS s",
            [rows],
        )
        cursor.fetchall()
        print(f"sql    phone_fast + name_key in one query {time.perf_counter() - started:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-python", action="store_true")
    parser.add_argument("--skip-sql", action="store_true")
    parser.add_argument("--skip-polars", action="store_true")
    args = parser.parse_args()
    if not args.skip_python:
        time_python(args.rows)
    if not args.skip_polars:
        time_polars(args.rows)
    if not args.skip_sql:
        time_sql(args.rows)


if __name__ == "__main__":
    main()
