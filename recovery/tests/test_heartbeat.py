"""The qcluster heartbeat: one row per worker process, kept fresh by a thread, written by a real cluster."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.conf import Conf
from django_q.tasks import async_task

from recovery import heartbeat
from recovery.heartbeat import cluster_last_seen, cluster_workers_seen, heartbeat_beat, worker_heartbeat_start
from recovery.models import ClusterHeartbeat
from recovery.tests.qcluster import qcluster_running


@pytest.mark.django_db
def test_a_beat_upserts_the_process_row_and_forgets_long_silent_ones():
    earlier = timezone.now() - timedelta(minutes=3)
    heartbeat_beat(host="ops-1", pid=101, cluster="ct4", now=earlier)
    heartbeat_beat(host="ops-1", pid=101, cluster="ct4")
    heartbeat_beat(host="ops-2", pid=101, cluster="ct4", now=timezone.now() - timedelta(hours=30))
    assert ClusterHeartbeat.objects.count() == 2
    # The next beat of any process forgets rows silent for more than KEEP_HOURS.
    heartbeat_beat(host="ops-1", pid=101, cluster="ct4")
    rows = {(r.host, r.pid): r for r in ClusterHeartbeat.objects.all()}
    assert set(rows) == {("ops-1", 101)}
    assert rows[("ops-1", 101)].started_at == earlier
    assert timezone.now() - cluster_last_seen() < timedelta(seconds=5)
    assert cluster_workers_seen(since=timezone.now() - timedelta(minutes=1)) == 1


@pytest.mark.django_db(transaction=True)
def test_the_worker_thread_beats_at_once_and_stops_when_told():
    thread = worker_heartbeat_start(proc_name="Process-1:1")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ClusterHeartbeat.objects.filter(pid=os.getpid()).exists():
            time.sleep(0.1)
        assert ClusterHeartbeat.objects.filter(pid=os.getpid(), cluster=settings.Q_CLUSTER["name"]).exists()
    finally:
        thread.stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_a_task_run_in_sync_mode_starts_no_heartbeat(monkeypatch):
    # django-q2's sync mode runs the worker function (and its post_spawn) in this very process: a
    # heartbeat thread started there beat on forever and once made a real cluster show 3 workers of 2.
    monkeypatch.setattr(Conf, "SYNC", True)
    async_task("math.floor", 2.5)
    assert worker_heartbeat_start(proc_name="MainProcess") is None
    assert not [t for t in threading.enumerate() if t.name == "ct4-heartbeat"]
    assert not ClusterHeartbeat.objects.exists()


@pytest.mark.django_db
def test_an_orphaned_worker_does_not_beat():
    """A worker whose sentinel died (it was re-parented) must not keep the cluster looking alive."""
    stop = threading.Event()
    heartbeat._beat_until_orphaned(parent_pid=os.getppid() + 100_000, cluster="ct4", stop=stop)
    assert not ClusterHeartbeat.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_qcluster_beats_for_each_worker():
    with qcluster_running(workers=2) as process:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ClusterHeartbeat.objects.count() < 2:
            time.sleep(0.5)
            assert process.poll() is None, process.stdout.read()
    rows = list(ClusterHeartbeat.objects.all())
    assert len(rows) == 2, process.output[-3000:]
    assert {r.cluster for r in rows} == {settings.Q_CLUSTER["name"]}
    assert all(timezone.now() - r.seen_at < timedelta(minutes=1) for r in rows)
