"""gunicorn settings for ct4 (`gunicorn -c ct4site/deploy/gunicorn.conf.py ct4site.wsgi`).

Everything can be overridden from the environment (names below) or the command line.
Sizing: docs/deploy.md.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))
chdir = str(PROJECT)

bind = os.environ.get("CT4_BIND", "127.0.0.1:8000")
# Sync workers: each request holds one worker and one database connection for its duration.
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1) + 1)
threads = int(os.environ.get("CT4_WEB_THREADS", "1"))
# The heaviest API reads take seconds on a million drivers; beyond this a worker is restarted.
timeout = int(os.environ.get("CT4_WEB_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then: memory stays flat over weeks.
max_requests = int(os.environ.get("CT4_WEB_MAX_REQUESTS", "2000"))
max_requests_jitter = max_requests // 10
# Each worker on one CPU of the master's, in turn (CT4_WEB_PIN_CPUS=0: off). A worker runs the matcher's
# one-lead path for the review screens (identity.resolution.lead_explain): about 300 Polars operations
# on frames of a few rows, each handed to Polars' thread pool. With the pool spread over every CPU, each
# hand-over woke a thread on another CPU, which costs most on virtual machines: a lead's explanation
# took p50 133-138 ms, p95 172-180 ms at 1M, and 98-107 / 137-138 ms on one CPU (docs/deploy.md). The
# workers still share the CPUs between them, and PostgreSQL's processes are not pinned.
pin_cpus = os.environ.get("CT4_WEB_PIN_CPUS", "1").strip() != "0"
# The heartbeat file on tmpfs: a worker blocked on a slow disk is not killed by mistake.
if Path("/dev/shm").is_dir():
    worker_tmp_dir = "/dev/shm"
# Behind a proxy on the same machine (nginx, a load balancer agent): trust its X-Forwarded-*.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
accesslog = os.environ.get("CT4_ACCESS_LOG") or None
errorlog = "-"
proc_name = "ct4-web"
# systemd (or the shell) controls the process; no second control channel that two instances
# on one machine would fight over.
control_socket_disable = True

# Prometheus: every worker writes its request metrics to files in one directory, so a scrape
# answered by any worker reports all of them. Set before the workers import prometheus_client.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ct4-prometheus-")
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

if os.environ.get("CT4_LOG_FORMAT", "").strip().lower() == "json":
    from ct4site.logs import json_formatter

    # gunicorn's own lines (boot, worker start and exit) as JSON too, like the application's.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": json_formatter()},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"},
                     "none": {"class": "logging.NullHandler"}},
        "loggers": {
            "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
            # The access log records URLs with their query strings; off unless CT4_ACCESS_LOG is set.
            "gunicorn.access": {"handlers": ["console" if accesslog else "none"], "level": "INFO",
                                "propagate": False},
        },
    }


def on_starting(server):
    # Files of a previous master's workers would be summed into this one's counters.
    if _metrics_dir.is_dir():
        shutil.rmtree(_metrics_dir)
    _metrics_dir.mkdir(parents=True)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def post_fork(server, worker):
    # Before the application is loaded: Polars sizes its thread pool by the CPUs the process may use.
    if pin_cpus and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[worker.age % len(cpus)]})


def child_exit(server, worker):
    from prometheus_client import multiprocess  # noqa: PLC0415 - only the master runs this

    multiprocess.mark_process_dead(worker.pid)
