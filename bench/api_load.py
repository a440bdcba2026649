"""The API and the dashboard under load: p50/p95/p99 of every GET endpoint, 20 concurrent clients, gunicorn at 1M.

    .venv/bin/python bench/api_load.py --data /tmp/bench1m            # load the park, then the load test
    .venv/bin/python bench/api_load.py --reuse-db                      # the park a previous run loaded

Setup (not timed): a database of its own (CT4_BENCH_DB, default ct4_bench_api) gets the generated park
in --data (drivers, cabinet leads, trips, claims: `generate_demo_data --drivers 1000000 --leads 100000`
makes one), then the jobs run as in production so the views have realistic data: refresh_drivers_index,
seed_kpi_red_queue + recover_kpi_red_leads (2 workers), reconcile_cabinet_leads_pipeline, VACUUM ANALYZE.
--reuse-db skips all of that and only migrates.

Then gunicorn starts with the production settings (`make serve`'s: DEBUG off, WhiteNoise, collected
static files) on 127.0.0.1 and a free port, an API user with every view permission and a token is
created (and a logged-in session for the dashboard page), and locust, headless in a second process,
runs --users clients (default 20) for --duration seconds (default 40) on loopback, each client calling
the endpoints one after the other without pause. The endpoints are every GET operation of the OpenAPI
schema under /api/v1/ (a path parameter takes the latest job run's id), so a new endpoint is measured
without editing this file, plus the dashboard page (/ops/). Before the load each endpoint is called
once (its "first" time: a cold cache). Printed per endpoint: requests, errors, p50, p95, p99,
requests/s and PASS/FAIL against p95 < 500 ms (dashboard: < 1 s), and the machine's load average.
Exit status 0 when every endpoint passes without errors, 1 otherwise. Gunicorn is stopped at the end.
--cache-seconds 0 serves with the read cache off (CT4_API_CACHE_SECONDS, recovery/read_cache.py): the
figures before it existed. --shared-cache serves with CT4_CACHE=database (one cache for all workers).
--job-runs-every N records a finished job run every N seconds of the load: each makes every cached
answer stale, as the scheduled jobs do in production. Install locust first: `make bench-setup` (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_api")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import BENCH_DB, PY, ROOT, bench_env, manage, reset_database

TARGET_API_MS = 500.0
TARGET_DASHBOARD_MS = 1000.0
DASHBOARD = "/ops/"
BENCH_USER = "bench-api"
LOCUSTFILE = Path(__file__).resolve().parent / "_api_locustfile.py"

# The API user: every view permission (what a read needs), a token, and a session for the dashboard.
# Prints one JSON line: the token, the session key, and the GET paths of the OpenAPI schema.
CLIENT_SETUP = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Permission
from django.contrib.sessions.backends.db import SessionStore
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from identity.models import JobRun

user, _ = get_user_model().objects.get_or_create(username={user!r}, defaults={{"is_staff": True}})
user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
token, _ = Token.objects.get_or_create(user=user)
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
run = JobRun.objects.order_by("-pk").first()
schema = SchemaGenerator().get_schema(request=None, public=True)
paths = []
for path, operations in sorted(schema["paths"].items()):
    if "get" in operations and path.startswith("/api/v1/"):
        paths.append(path.replace("{{run_id}}", str(run.pk if run else 1)))
print(json.dumps({{"token": token.key, "session": session.session_key, "paths": paths}}))
"""


# With --job-runs-every N: a finished job run every N seconds during the load (each one makes every
# cached answer stale, as a real job run does), removed at the end. Bounded: COUNT runs, then exits.
JOB_RUNS_SCRIPT = """
import time
from django.utils import timezone
from identity.models import JobRun
for _ in range({count}):
    time.sleep({every})
    JobRun.objects.create(name="bench_api_load", status="succeeded", finished_at=timezone.now())
"""


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def sql_run(statements: str, env: dict) -> None:
    manage("shell", "-c", f"from django.db import connection; connection.cursor().execute({statements!r})", env=env)


def step(label: str, *args: str, env: dict, check: bool = True) -> str:
    secs, _, out = manage(*args, env=env, check=check)
    print(f"  {label:<34}{secs:7.1f}s")
    return out


def load_park(data: Path, env: dict) -> None:
    """The park in `data`, then the jobs, as production would have run them (not timed)."""
    print(f"setup: loading {data} into {BENCH_DB} (not timed)")
    reset_database(env)
    for kind in ("drivers", "cabinet_leads", "trips", "claims"):
        step(f"import_source {kind}", "import_source", kind, str(data / f"{kind}.csv"), env=env, check=False)
    step("refresh_drivers_index", "refresh_drivers_index", env=env)
    sql_run("ANALYZE", env)
    step("seed_kpi_red_queue", "seed_kpi_red_queue", env=env)
    step("recover_kpi_red_leads --workers 2", "recover_kpi_red_leads", "--workers", "2", env=env)
    step("reconcile_cabinet_leads_pipeline", "reconcile_cabinet_leads_pipeline", env=env)
    sql_run("VACUUM ANALYZE", env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited {proc.returncode} before answering")
        try:
            # url is the http://127.0.0.1:PORT this script built: no other scheme reaches here
            with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("gunicorn did not answer /healthz in time")


def first_call(port: int, path: str, headers: dict) -> tuple[int, float]:
    """One request, timed, redirects not followed (a redirect to the login page is a failure): (status, ms)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.monotonic()
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        answer.read()
    finally:
        connection.close()
    return answer.status, (time.monotonic() - started) * 1000


def run_locust(url: str, paths: list[str], auth: dict, args, prefix: Path) -> None:
    env = dict(os.environ, CT4_LOAD_PATHS=json.dumps(paths), CT4_LOAD_TOKEN=auth["token"],
               CT4_LOAD_SESSION=auth["session"], CT4_LOAD_DASHBOARD=DASHBOARD)
    command = [PY, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
               "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.duration}s",
               "--stop-timeout", "10", "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
               "--exit-code-on-error", "0"]
    # Bounded twice: locust stops after --run-time (+ stop timeout); this kills it if it does not.
    proc = subprocess.run(command, cwd=ROOT, env=env, timeout=args.duration + 60, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"locust exited {proc.returncode}")


def report(prefix: Path, first: dict[str, tuple[int, float]], duration: float) -> bool:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    ok = True
    print(f"{'endpoint':<70}{'first':>7}{'reqs':>7}{'errs':>6}{'p50':>7}{'p95':>7}{'p99':>7}{'req/s':>7}")
    for path, (code, first_ms) in first.items():
        row = rows.get(path)
        target = TARGET_DASHBOARD_MS if path == DASHBOARD else TARGET_API_MS
        if row is None:
            ok = False
            print(f"{path:<70}{first_ms:7.0f}  no request in the run  FAIL")
            continue
        requests, errors = int(row["Request Count"]), int(row["Failure Count"])
        p50, p95, p99 = (float(row[k]) for k in ("50%", "95%", "99%"))
        passed = errors == 0 and code == 200 and p95 < target
        if code != 200:
            print(f"{path}: the first request answered {code}")
        ok &= passed
        print(f"{path:<70}{first_ms:7.0f}{requests:7d}{errors:6d}{p50:7.0f}{p95:7.0f}{p99:7.0f}"
              f"{requests / duration:7.1f}  [{'PASS' if passed else 'FAIL'} p95 < {target:.0f} ms]")
    total = rows.get("Aggregated")
    if total:
        print(f"{'all':<70}{'':>7}{int(total['Request Count']):7d}{int(total['Failure Count']):6d}"
              f"{float(total['50%']):7.0f}{float(total['95%']):7.0f}{float(total['99%']):7.0f}"
              f"{int(total['Request Count']) / duration:7.1f}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        help="a generated park (drivers.csv, cabinet_leads.csv, trips.csv, claims.csv)")
    parser.add_argument("--reuse-db", action="store_true", help="keep the park a previous run loaded (only migrate)")
    parser.add_argument("--setup-only", action="store_true", help="load the park and stop")
    parser.add_argument("--users", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--duration", type=int, default=40, help="seconds of load (default 40)")
    parser.add_argument("--cache-seconds", type=int, default=None,
                        help="CT4_API_CACHE_SECONDS of the server (default: the settings'; 0 turns the read cache off)")
    parser.add_argument("--shared-cache", action="store_true",
                        help="CT4_CACHE=database: one cache table for every worker (createcachetable first)")
    parser.add_argument("--job-runs-every", type=int, default=0, metavar="N",
                        help="record a finished job run every N seconds during the load (stales every cached answer)")
    parser.add_argument("--web-workers", type=int, default=None,
                        help="gunicorn workers (default: the configuration's, 2 x cores + 1)")
    args = parser.parse_args()
    if not args.reuse_db and not args.data:
        parser.error("give --data DIR (a generated park) or --reuse-db")
    env = {**bench_env(), "CT4_LOG_LEVEL": "WARNING"}
    if args.reuse_db:
        manage("migrate", "--noinput", "-v", "0", env=env)
    else:
        load_park(args.data, env)
    if args.setup_only:
        return 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    static_root = tempfile.mkdtemp(prefix="ct4-bench-static-")
    web_env = {**env, "DJANGO_SETTINGS_MODULE": "ct4site.settings_production", "SECURE_SSL_REDIRECT": "false",
               "SECURE_COOKIES": "false", "SECRET_KEY": secrets.token_urlsafe(64), "STATIC_ROOT": static_root,
               "CT4_BIND": f"127.0.0.1:{port}"}
    if args.cache_seconds is not None:
        web_env["CT4_API_CACHE_SECONDS"] = str(args.cache_seconds)
    if args.web_workers:
        web_env["WEB_CONCURRENCY"] = str(args.web_workers)
    if args.shared_cache:
        web_env["CT4_CACHE"] = "database"
        manage("createcachetable", env=web_env)
        sql_run("TRUNCATE ct4_cache", web_env)  # answers of a previous run
    manage("collectstatic", "--noinput", "-v", "0", env=web_env)
    # With the server's settings: the session carries a hash keyed by its SECRET_KEY.
    auth = last_json(manage("shell", "-c", CLIENT_SETUP.format(user=BENCH_USER), env=web_env)[2])
    paths = [*auth["paths"], DASHBOARD]

    gunicorn_log = Path(static_root) / "gunicorn.log"
    with gunicorn_log.open("w") as log:
        gunicorn = subprocess.Popen([str(Path(PY).parent / "gunicorn"), "-c", "ct4site/deploy/gunicorn.conf.py",
                                     "ct4site.wsgi"], cwd=ROOT, env=web_env, stdout=subprocess.DEVNULL, stderr=log)
    workers = web_env.get("WEB_CONCURRENCY") or str(2 * (os.cpu_count() or 1) + 1)
    try:
        try:
            wait_ready(url, gunicorn)
        except SystemExit:
            sys.stderr.write(gunicorn_log.read_text()[-3000:])
            raise
        load_before = os.getloadavg()
        headers = {"Authorization": f"Token {auth['token']}"}
        first = {}
        for path in paths:
            path_headers = {"Cookie": f"sessionid={auth['session']}"} if path == DASHBOARD else headers
            first[path] = first_call(port, path, path_headers)
        print(f"API under load: {BENCH_DB}, gunicorn {url} ({workers} workers), "
              f"{args.users} clients for {args.duration} s, read cache "
              f"{web_env.get('CT4_API_CACHE_SECONDS', 'default')} s ({web_env.get('CT4_CACHE', 'local')}), "
              f"a job run every {args.job_runs_every or '-'} s; "
              f"load average before {load_before[0]:.2f} "
              f"{load_before[1]:.2f} {load_before[2]:.2f}")
        with tempfile.TemporaryDirectory(prefix="ct4-locust-") as tmp:
            started = time.monotonic()
            runs = None
            if args.job_runs_every > 0:
                script = JOB_RUNS_SCRIPT.format(count=args.duration // args.job_runs_every, every=args.job_runs_every)
                runs = subprocess.Popen([PY, "manage.py", "shell", "-c", script], cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL)
            run_locust(url, paths, auth, args, Path(tmp) / "load")
            elapsed = time.monotonic() - started
            if runs is not None:
                runs.wait(timeout=60)
                sql_run("DELETE FROM ops.job_runs WHERE name = 'bench_api_load'", env)
            load_after = os.getloadavg()
            print("times in ms; 'first' is one request before the load (cold caches)")
            ok = report(Path(tmp) / "load", first, min(elapsed, float(args.duration)))
        print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
              f"({os.cpu_count()} cores; the load generator runs on the same machine)")
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(timeout=40)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
        shutil.rmtree(static_root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
