"""Operational tables of the recovery jobs (schema ops): the red-KPI queue, per-lead job tracking, cluster
heartbeats."""

from django.conf import settings
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


class AuditVerdict(models.TextChoices):
    SAME = "same", "Same person"
    NOT_SAME = "not_same", "Not the same person"
    CANNOT_TELL = "cannot_tell", "Cannot tell"


class AuditKind(models.TextChoices):
    LINK = "link"  # an automatic link, to confirm or reject
    BELOW_THRESHOLD = "below_threshold"  # a lead scored just below the link threshold and its best candidate


class AuditItem(models.Model):
    """A lead and a person drawn by the audit sample (recovery.review.audit) for a blind verdict."""

    source_pk = models.TextField()
    person = models.ForeignKey(Person, on_delete=models.PROTECT, db_column="person_key", related_name="+")
    kind = models.TextField(choices=AuditKind.choices)
    # The stratum it was drawn from ("<rule>|<band>" for a link, "below_threshold"); never shown to the reviewer.
    stratum = models.TextField()
    sampled_at = models.DateTimeField(db_default=Now())
    # The audit_sample run that drew it.
    run = models.ForeignKey("identity.JobRun", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    verdict = models.TextField(choices=AuditVerdict.choices, null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_by_name = models.TextField(blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="")

    class Meta:
        db_table = 'ops"."audit_items'
        constraints = [
            models.UniqueConstraint(fields=["source_pk", "person"], condition=Q(verdict__isnull=True),
                                    name="audit_item_one_open_per_pair"),
            choices_check("kind", AuditKind, "audit_item_kind_valid"),
            choices_check("verdict", AuditVerdict, "audit_item_verdict_valid", nullable=True),
            models.CheckConstraint(condition=Q(verdict__isnull=True) | Q(decided_at__isnull=False),
                                   name="audit_item_verdict_has_time"),
        ]
        indexes = [models.Index(fields=["kind", "verdict"], name="audit_item_kind_idx"),
                   models.Index(fields=["source_pk"], name="audit_item_source_idx")]

    def __str__(self) -> str:
        return f"audit {self.kind} {self.source_pk} -> {self.person_id}"


# The SQL views are unmanaged models; importing them here is what makes Django (and
# django-pgviews' post-migrate sync) see them.
from recovery.sql_views import *  # noqa: E402, F403
