"""A real `manage.py qcluster` on the test database, for the tests that need the cluster's own processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection


@contextmanager
def qcluster_running(*, workers: int = 1) -> Iterator[subprocess.Popen]:
    """Start a cluster on the test database; stop it by its PID with SIGTERM (SIGKILL after 30 s).

    Its output is in `process.output` once the block ends.
    """
    env = {**os.environ, "CT4_DB_NAME": connection.settings_dict["NAME"], "CT4_Q_WORKERS": str(workers)}
    process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.output, _ = process.communicate()
