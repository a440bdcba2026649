"""A small batch's frame operations kept on the caller's core (the single-lead path's latency).

Polars runs every operation on its thread pool: the calling thread hands it to a pool thread and sleeps
until it is done. On a one-lead frame an operation's work is a few microseconds, and the two hand-offs
are most of its cost when the pool thread sits on another core: each wakes that core up (an
inter-processor interrupt, tens of microseconds on a virtual machine). A lead decided alone makes about
three hundred such operations. While it is decided, the pool threads and the caller are pinned to the
core the caller runs on, and set free again after (docs/engine.md, "A lead arriving now").
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

_POOL_THREAD = re.compile(r"polars-\d+")
_lock = threading.Lock()
_holders = 0  # callers inside one_core() now; the first pins, the last sets free
_saved: dict[int, set[int]] = {}  # pinned thread -> its CPUs before
_pool: dict[int, list[int]] = {}  # process id -> its pool's thread ids (a forked child reads its own)
_usable = hasattr(os, "sched_setaffinity") and Path("/proc/thread-self/stat").exists()


def pool_threads() -> list[int]:
    """The thread ids of Polars' pool in this process (Linux names them polars-0, polars-1, ...). Read
    once per process: the pool's threads live as long as it (reading them cost ~0.7 ms a lead)."""
    pid = os.getpid()
    if not _pool.get(pid):  # none yet: the pool starts with Polars' first operation
        _pool.clear()
        _pool[pid] = _pool_threads_read()
    return _pool[pid]


def _pool_threads_read() -> list[int]:
    tids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # a thread that ended meanwhile
            continue
        if _POOL_THREAD.fullmatch(name):
            tids.append(int(tid))
    return tids


def current_cpu() -> int:
    """The CPU the calling thread runs on (field 39 of its stat line; the name before it may hold spaces)."""
    stat = Path("/proc/thread-self/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[36])


def _pin() -> None:
    global _usable
    try:
        cpu = {current_cpu()}
        for tid in [threading.get_native_id(), *pool_threads()]:
            try:
                _saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpu)
            except ProcessLookupError:  # a pool made anew (it never is in a running process): read it again
                _saved.pop(tid, None)
                _pool.clear()
    except OSError as error:  # no right to pin here (a container's policy): decide as before
        _free()
        _usable = False
        log.info("small batches not kept on one core: %s", error)


def _free() -> None:
    for tid, cpus in _saved.items():
        with suppress(OSError):  # ended meanwhile
            os.sched_setaffinity(tid, cpus)
    _saved.clear()


@contextmanager
def one_core(*, enabled: bool = True) -> Iterator[None]:
    """Keep the calling thread and Polars' pool threads on the caller's core for the block, when
    `enabled` and settings.CT4_SMALL_BATCH_ONE_CORE. Re-entrant and shared between threads: the first
    caller in pins, the last one out restores each thread's CPUs as they were. Where pinning is not
    allowed, the block runs unpinned."""
    global _holders
    if not (enabled and _usable and getattr(settings, "CT4_SMALL_BATCH_ONE_CORE", True)):
        yield
        return
    with _lock:
        _holders += 1
        if _holders == 1:
            _pin()
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _free()
