"""Shared plumbing of the benchmarks: a database of their own, manage.py runs, timing and memory.

Benchmarks run against their own database (CT4_BENCH_DB, default ct4_bench_<script>) on the same server the project uses
(DATABASE_URL, or the embedded one), so they never touch the demo's data.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Each benchmark script sets its own default (ct4_bench_<name>) before importing this module.
BENCH_DB = os.environ.get("CT4_BENCH_DB", "ct4_bench")

# Every table a benchmark run starts from empty (sources, canon, ops).
TABLES = (
    "public.module_ct_cabinet_leads", "public.drivers", "public.driver_trips", "public.cabinet_milestone_claims",
    "canon.identity_judgements", "canon.identity_links", "canon.identity_origin", "canon.identity_unmatched",
    "canon.drivers_index", "canon.name_token_stats", "canon.match_models", "ops.cabinet_kpi_red_recovery_queue",
    "ops.identity_matching_jobs", "ops.job_runs", "canon.identity_registry",
)


def bench_env(database: str | None = None) -> dict:
    """The environment of the manage.py runs: this benchmark's database (created on DATABASE_URL's server)."""
    database = database or BENCH_DB
    env = dict(os.environ, CT4_DB_NAME=database, PYTHONUNBUFFERED="1")
    if env.get("DATABASE_URL"):
        _create_database_on_server(env["DATABASE_URL"], database)
    return env


def _create_database_on_server(url: str, name: str) -> None:
    import psycopg  # noqa: PLC0415 - from the project's venv, which the caller may not run in
    from psycopg import sql  # noqa: PLC0415 - same

    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def manage(*args: str, env: dict, check: bool = True, quiet: bool = True,
           prefix: list[str] | None = None) -> tuple[float, int, str]:
    """Run manage.py (behind `prefix`, e.g. taskset); return (seconds, peak RSS in MB of that process, stdout)."""
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([*(prefix or []), PY, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if check and proc.returncode not in (0,):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"manage.py {' '.join(args)} exited {proc.returncode}")
    if not quiet:
        sys.stdout.write(proc.stdout)
    # ru_maxrss of children is the max over all children so far; report it only when it grew.
    return seconds, (max(peak, before) // 1024), proc.stdout


def reset_database(env: dict) -> None:
    manage("migrate", "--noinput", "-v", "0", env=env)
    statement = "TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE"
    manage("shell", "-c", f"from django.db import connection; connection.cursor().execute({statement!r})", env=env)


def sql_rows(query: str, env: dict) -> list[tuple]:
    """Run a read query through Django's connection in a subprocess; rows as tuples of str."""
    code = (
        "import json; from django.db import connection\n"
        "c = connection.cursor(); c.execute(" + repr(query) + ")\n"
        "print(json.dumps([[None if v is None else str(v) for v in r] for r in c.fetchall()]))"
    )
    _, _, out = manage("shell", "-c", code, env=env)
    return [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]
