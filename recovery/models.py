"""Operational tables of the recovery jobs (schema ops): the red-KPI queue, per-lead job tracking, cluster
heartbeats."""

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from identity.models import Person, ReasonCode, SourceTable, choices_check

# What the recovery jobs write besides identity.runs.LINK_TABLES; they re-analyze both after a run.
RECOVERY_TABLES = ("ops.identity_matching_jobs", "ops.cabinet_kpi_red_recovery_queue")


class WorkStatus(models.TextChoices):
    PENDING = "pending"
    MATCHED = "matched"
    FAILED = "failed"


class KpiRedRecoveryQueue(models.Model):
    """The red-KPI work queue: one row per lead that was in the backlog when seeded."""

    lead_source_pk = models.TextField(unique=True)
    status = models.TextField(choices=WorkStatus.choices, default=WorkStatus.PENDING)
    attempts = models.IntegerField(default=0)
    fail_reason = models.TextField(choices=ReasonCode.choices, null=True, blank=True)
    matched_person = models.ForeignKey(
        Person, on_delete=models.PROTECT, db_column="matched_person_key", null=True, blank=True, related_name="+"
    )
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # A failed row is not retried before this time (backoff), unless the drivers index changed.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    matched_at = models.DateTimeField(null=True, blank=True)
    # The lead's created_at, copied by the seed: recovery claims newest first straight from an
    # index on the queue (newest first is high risk first: high risk is the last 14 days).
    lead_created_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = 'ops"."cabinet_kpi_red_recovery_queue'
        verbose_name = "red-KPI queue row"
        constraints = [
            choices_check("status", WorkStatus, "kpi_red_queue_status_valid"),
            choices_check("fail_reason", ReasonCode, "kpi_red_queue_reason_valid", nullable=True),
            models.CheckConstraint(
                condition=~Q(status="matched") | Q(matched_person__isnull=False),
                name="kpi_red_queue_matched_has_person",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="kpi_red_queue_status_idx"),
            # The claim order of recover_kpi_red_leads (FOR UPDATE SKIP LOCKED ... LIMIT n).
            models.Index(
                F("lead_created_at").desc(), "lead_source_pk", name="kpi_red_queue_claim_idx",
                condition=Q(status="pending"),
            ),
            # "Matched in the last 24 h" (the metrics and the recovery status) without visiting
            # every matched row.
            models.Index(fields=["matched_at"], name="kpi_red_queue_matched_at_idx", condition=Q(status="matched")),
        ]
        permissions = [("run_recovery", "Can start recovery jobs and index refreshes")]


class IdentityMatchingJob(models.Model):
    """One row per lead the matching jobs have tried (the runbooks' freshness source)."""

    source_table = models.TextField(choices=SourceTable.choices, default=SourceTable.CABINET_LEADS)
    source_id = models.TextField()
    status = models.TextField(choices=WorkStatus.choices, default=WorkStatus.PENDING)
    attempt_count = models.IntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    fail_reason = models.TextField(choices=ReasonCode.choices, null=True, blank=True)
    matched_person = models.ForeignKey(
        Person, on_delete=models.PROTECT, db_column="matched_person_key", null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = 'ops"."identity_matching_jobs'
        constraints = [
            models.UniqueConstraint(fields=["source_table", "source_id"], name="identity_matching_job_one_per_source"),
            choices_check("status", WorkStatus, "identity_matching_job_status_valid"),
            choices_check("fail_reason", ReasonCode, "identity_matching_job_reason_valid", nullable=True),
        ]
        indexes = [models.Index(fields=["status", "last_attempt_at"], name="identity_matching_job_idx")]


class ClusterHeartbeat(models.Model):
    """A django-q2 worker process that is alive: it rewrites seen_at every half minute (recovery.heartbeat)."""

    host = models.TextField()
    pid = models.IntegerField()
    cluster = models.TextField()
    started_at = models.DateTimeField(db_default=Now())
    seen_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = 'ops"."qcluster_heartbeats'
        constraints = [models.UniqueConstraint(fields=["host", "pid"], name="qcluster_heartbeat_one_per_process")]
        indexes = [models.Index(fields=["seen_at"], name="qcluster_heartbeat_seen_idx")]


# The SQL views are unmanaged models; importing them here is what makes Django (and
# django-pgviews' post-migrate sync) see them.
from recovery.sql_views import *  # noqa: E402, F403
