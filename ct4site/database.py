"""Where the database is: DATABASE_URL when set, otherwise the project's own embedded PostgreSQL.

The embedded server comes from the `pgserver` package, keeps its data under `.data/pg`, and
outlives the process that started it, so manage.py, pytest and qcluster all share one server.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import dj_database_url

ENGINE = "ct4site.pgbackend"
EMBEDDED_DB_NAME = "ct4"

# Settings the embedded server gets once, at creation: enough memory for a million-row park
# on a laptop, and no fsync-per-commit wait (the embedded server is for demos and tests; a
# production deployment sets DATABASE_URL to a managed server).
EMBEDDED_SERVER_SETTINGS = {
    "shared_buffers": "512MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "synchronous_commit": "off",
    "max_connections": "200",
}


def database_config(base_dir: Path) -> dict:
    """Django's DATABASES['default'] for this process."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    else:
        config = embedded_database_config(base_dir / ".data", os.environ.get("CT4_DB_NAME") or EMBEDDED_DB_NAME)
    if os.environ.get("CT4_DB_NAME"):
        # Benchmarks and experiments use a database of their own on the same server.
        config["NAME"] = os.environ["CT4_DB_NAME"]
    config["ENGINE"] = ENGINE
    # JIT compilation costs 300-800 ms on the heavy views and saves nothing at our sizes.
    config.setdefault("OPTIONS", {})["options"] = "-c jit=off"
    return config


def embedded_database_config(data_dir: Path, dbname: str = EMBEDDED_DB_NAME) -> dict:
    """Start (or reuse) the embedded server and make sure the project database exists."""
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    # pgserver keeps its cross-process lock under XDG_RUNTIME_DIR; every process must agree on
    # it, and it must be set before pgserver is imported (it reads it at import time).
    os.environ["XDG_RUNTIME_DIR"] = str(run_dir)

    import pgserver  # noqa: PLC0415 - imported only when the embedded server is wanted

    pgdata = data_dir / "pg"
    created = not (pgdata / "PG_VERSION").exists()
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if created:
        for name, value in EMBEDDED_SERVER_SETTINGS.items():
            server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
        # shared_buffers and max_connections need a restart; the next process starts it again.
        _restart(server, pgdata)
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{dbname}";')
    uri = urlparse(server.get_uri(dbname))
    host = parse_qs(uri.query).get("host", [""])[0]
    return {
        "NAME": dbname,
        "USER": uri.username or "postgres",
        "PASSWORD": "",
        "HOST": host,
        "PORT": "",
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def _restart(server, pgdata: Path) -> None:
    from pgserver._commands import pg_ctl  # noqa: PLC0415 - pgserver only when the embedded server is wanted

    pg_ctl(["-w", "stop"], pgdata=pgdata, user=server.system_user)
    type(server)._instances.pop(pgdata.resolve(), None)
