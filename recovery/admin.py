"""The admin for the recovery tables and SQL views: read-only, filterable and searchable.

The queue, the matching-jobs table and the qcluster heartbeats have one writer each
(recovery.queue, recovery.tracking, recovery.heartbeat), and the views are computed: nothing here
is edited by hand.
"""

from django.contrib import admin
from django.db.models import Q

from identity.admin import LeadParkFilter, NormalizedSearchMixin, ReadOnlyAdmin, lead_key_hits, review_link
from identity.models import CabinetLead
from recovery.models import (
    AuditItem,
    CabinetFinancial14d,
    CabinetLeadsLimbo,
    ClusterHeartbeat,
    DriverUnlinkedActivity,
    FunnelAuditWeekly,
    IdentityGapAnalysis,
    IdentityMatchingJob,
    KpiRedBacklog,
    KpiRedRecoveryMetricsDaily,
    KpiRedRecoveryQueue,
)


class LeadSearchMixin(NormalizedSearchMixin):
    """Search a lead-keyed table by source_pk, person_key or the lead's normalized phone / document."""

    lead_field = "lead_source_pk"

    def extra_search(self, term):
        if (hits := lead_key_hits(term)) is not None:
            return Q(**{f"{self.lead_field}__in": CabinetLead.objects.filter(hits).values("source_pk")})
        return None


@admin.register(KpiRedRecoveryQueue)
class KpiRedRecoveryQueueAdmin(LeadSearchMixin, ReadOnlyAdmin):
    list_display = ("lead_source_pk", "status", "fail_reason", "attempts", "matched_person", "last_attempt_at",
                    "next_attempt_at", "matched_at", "lead_created_at", "review")
    list_filter = ("status", "fail_reason", ("last_attempt_at", admin.DateFieldListFilter),
                   ("matched_at", admin.DateFieldListFilter), ("lead_created_at", admin.DateFieldListFilter))
    search_fields = ("=lead_source_pk",)
    person_lookup = "matched_person_id"
    ordering = ("-lead_created_at", "lead_source_pk")

    @admin.display(description="review")
    def review(self, obj):
        return review_link(obj.lead_source_pk, obj.fail_reason if obj.status == "failed" else None)


@admin.register(IdentityMatchingJob)
class IdentityMatchingJobAdmin(LeadSearchMixin, ReadOnlyAdmin):
    list_display = ("source_id", "source_table", "status", "fail_reason", "attempt_count", "matched_person",
                    "last_attempt_at")
    list_filter = ("status", "fail_reason", "source_table", ("last_attempt_at", admin.DateFieldListFilter))
    search_fields = ("=source_id",)
    person_lookup = "matched_person_id"
    lead_field = "source_id"
    ordering = ("-last_attempt_at",)


@admin.register(ClusterHeartbeat)
class ClusterHeartbeatAdmin(ReadOnlyAdmin):
    """Which qcluster worker processes are alive, where: the rows /readyz and /metrics read."""

    list_display = ("host", "pid", "cluster", "started_at", "seen_at")
    list_filter = ("host", "cluster", ("seen_at", admin.DateFieldListFilter))
    search_fields = ("=host",)
    ordering = ("-seen_at",)


@admin.register(AuditItem)
class AuditItemAdmin(LeadSearchMixin, ReadOnlyAdmin):
    """The audit sample and its verdicts (recovery.review.audit writes them; reviewers answer on the review screen)."""

    list_display = ("source_pk", "person", "kind", "stratum", "sampled_at", "verdict", "decided_by_name",
                    "decided_at")
    list_filter = ("kind", "verdict", "stratum", ("sampled_at", admin.DateFieldListFilter))
    search_fields = ("=source_pk",)
    person_lookup = "person_id"
    lead_field = "source_pk"
    ordering = ("-sampled_at", "id")


# --- the SQL views -------------------------------------------------------------------------


@admin.register(KpiRedBacklog)
class KpiRedBacklogAdmin(LeadSearchMixin, ReadOnlyAdmin):
    list_display = ("lead_source_pk", "lead_date", "park_id", "risk_level", "days_since_lead")
    list_filter = ("risk_level", LeadParkFilter, ("lead_date", admin.DateFieldListFilter))
    search_fields = ("=lead_source_pk",)
    ordering = ("-created_at",)


@admin.register(IdentityGapAnalysis)
class IdentityGapAnalysisAdmin(LeadSearchMixin, ReadOnlyAdmin):
    list_display = ("lead_source_pk", "lead_date", "park_id", "gap_reason", "risk_level", "person_key",
                    "origin_source_id", "expected_origin_source_id")
    list_filter = ("gap_reason", "risk_level", LeadParkFilter, ("lead_date", admin.DateFieldListFilter))
    search_fields = ("=lead_source_pk",)
    person_lookup = "person_key"
    ordering = ("-lead_date", "lead_source_pk")


@admin.register(DriverUnlinkedActivity)
class DriverUnlinkedActivityAdmin(ReadOnlyAdmin):
    list_display = ("driver_id", "park_id", "first_trip_date", "last_trip_date", "trips_total", "trips_today",
                    "trips_last_7d")
    list_filter = ("active_today", "active_last_7d", ("last_trip_date", admin.DateFieldListFilter))
    search_fields = ("=driver_id",)
    ordering = ("-last_trip_date", "driver_id")


@admin.register(CabinetFinancial14d)
class CabinetFinancial14dAdmin(LeadSearchMixin, ReadOnlyAdmin):
    list_display = ("lead_source_pk", "lead_date", "park_id", "person_key", "driver_count", "trips_14d",
                    "expected_amount", "claimed_amount", "paid_amount", "window_open")
    list_filter = ("window_open", "reached_m1", "reached_m5", "reached_m25", LeadParkFilter,
                   ("lead_date", admin.DateFieldListFilter))
    search_fields = ("=lead_source_pk",)
    person_lookup = "person_key"
    ordering = ("-lead_date", "lead_source_pk")


@admin.register(CabinetLeadsLimbo)
class CabinetLeadsLimboAdmin(LeadSearchMixin, ReadOnlyAdmin):
    list_display = ("lead_source_pk", "lead_date", "park_id", "limbo_stage", "trips_14d", "missing_claim_milestones",
                    "person_key")
    list_filter = ("limbo_stage", LeadParkFilter, ("lead_date", admin.DateFieldListFilter))
    search_fields = ("=lead_source_pk",)
    person_lookup = "person_key"
    ordering = ("-lead_date", "lead_source_pk")


@admin.register(FunnelAuditWeekly)
class FunnelAuditWeeklyAdmin(ReadOnlyAdmin):
    list_display = ("week_start", "leads_total", "limbo_no_identity", "limbo_no_driver", "limbo_no_trips_14d",
                    "limbo_trips_no_claim", "limbo_ok")
    list_filter = (("week_start", admin.DateFieldListFilter),)
    ordering = ("-week_start",)


@admin.register(KpiRedRecoveryMetricsDaily)
class KpiRedRecoveryMetricsDailyAdmin(ReadOnlyAdmin):
    list_display = ("metric_date", "backlog_start", "new_backlog_in", "matched_out", "backlog_end", "net_change",
                    "top_fail_reason")
    list_filter = (("metric_date", admin.DateFieldListFilter), "top_fail_reason")
    ordering = ("-metric_date",)
