"""The qcluster heartbeat: every django-q2 worker process keeps its row in ops.qcluster_heartbeats fresh.

django-q2's own cluster stats (`django_q.status.Stat`) live in Django's cache, which is private
to each process unless a shared cache is configured; the database is what every web process
and machine already shares. A thread in each worker writes the row every BEAT_SECONDS, also
while the worker is busy with an hour-long job, and stops when the worker's sentinel (its
parent process) is gone, so a row that stops moving means no cluster is running there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils import timezone
from django_q.conf import Conf

from recovery.models import ClusterHeartbeat

logger = logging.getLogger("ct4.heartbeat")

BEAT_SECONDS = 30
# Rows of processes that ended (recycled workers, stopped clusters) are dropped after this.
KEEP_HOURS = 24


def heartbeat_beat(*, host: str, pid: int, cluster: str, now: datetime | None = None) -> None:
    """Record that worker `pid` on `host` is alive now; forget processes silent for KEEP_HOURS."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO ops.qcluster_heartbeats (host, pid, cluster, started_at, seen_at)
            VALUES (%(host)s, %(pid)s, %(cluster)s, %(now)s, %(now)s)
            ON CONFLICT (host, pid) DO UPDATE SET seen_at = EXCLUDED.seen_at, cluster = EXCLUDED.cluster
            """,
            {"host": host, "pid": pid, "cluster": cluster, "now": now},
        )
        cursor.execute("DELETE FROM ops.qcluster_heartbeats WHERE seen_at < %s", [now - timedelta(hours=KEEP_HOURS)])


def cluster_last_seen() -> datetime | None:
    """When any qcluster worker last beat (None: never, or not in the last KEEP_HOURS)."""
    return ClusterHeartbeat.objects.aggregate(last=Max("seen_at"))["last"]


def cluster_workers_seen(*, since: datetime) -> int:
    """Worker processes that beat since `since`, on every machine."""
    return ClusterHeartbeat.objects.filter(seen_at__gte=since).count()


def _beat_until_orphaned(*, parent_pid: int, cluster: str, stop: threading.Event) -> None:
    host, pid = socket.gethostname(), os.getpid()
    failing = False
    while not stop.is_set() and os.getppid() == parent_pid:
        try:
            heartbeat_beat(host=host, pid=pid, cluster=cluster)
            failing = False
        except Exception as exc:  # noqa: BLE001 - the database may be away; the next beat tries again
            if not failing:
                logger.warning("qcluster heartbeat not written: %s", type(exc).__name__,
                               extra={"event": "heartbeat_failed", "error_type": type(exc).__name__})
            failing = True
        finally:
            # One short connection per beat: nothing held open across a database restart.
            connection.close()
        stop.wait(BEAT_SECONDS)


def worker_heartbeat_start(sender=None, proc_name: str | None = None, **kwargs) -> threading.Thread | None:
    """django-q2's post_spawn receiver (sent by each new worker process): start its heartbeat thread.

    Not in sync mode: there django-q2 runs its worker function inside the caller's own process (a web
    request, a test), which is no cluster, and a thread left beating there would show one alive."""
    if Conf.SYNC:
        return None
    stop = threading.Event()
    thread = threading.Thread(
        target=_beat_until_orphaned, name="ct4-heartbeat", daemon=True,
        kwargs={"parent_pid": os.getppid(), "cluster": settings.Q_CLUSTER.get("name", "default"), "stop": stop},
    )
    thread.stop = stop  # type: ignore[attr-defined] - lets a test end the thread
    thread.start()
    return thread
