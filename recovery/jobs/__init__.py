"""The recovery jobs (seed, recover, retry, reconcile, backfill): orchestration, batching, locks.

This package module imports nothing from Django at load time: a recovery worker process
(multiprocessing 'spawn') imports `recover_worker_main` from here before Django is set up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerSpec:
    """What a recovery worker process needs from its parent (picklable, no personal data)."""

    run_id: int
    batch_size: int
    settings_module: str
    # The parent's live connection settings (NAME, HOST, ...): under pytest the parent talks to
    # the test database, which the settings module alone would not name.
    database: dict = field(default_factory=dict)
    workers: int = 1  # how many workers the run started: worker k claims the k-th part of the queue first


def recover_worker_main(spec: WorkerSpec, worker_no: int, remaining, pending, messages) -> None:
    """Entry point of one recovery worker process: set Django up on the parent's database,
    then drain the queue until the shared budget or the pending rows run out."""
    os.environ["DJANGO_SETTINGS_MODULE"] = spec.settings_module
    from django.conf import settings  # noqa: PLC0415 - Django is set up only here, in the child

    settings.DATABASES["default"].update(spec.database)
    import django  # noqa: PLC0415 - the same: set up only in the child

    django.setup()
    from recovery.jobs.recover import worker_drain  # noqa: PLC0415 - needs Django set up

    worker_drain(spec=spec, worker_no=worker_no, remaining=remaining, pending=pending, messages=messages)
