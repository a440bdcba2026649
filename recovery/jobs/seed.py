"""seed_kpi_red_queue: every red-KPI backlog lead into the queue as pending (the service lives in recovery.queue)."""

from recovery.queue import SEED_JOB, SeedResult, queue_seed

__all__ = ["SEED_JOB", "SeedResult", "queue_seed"]
