"""Input and output shapes of the API (the OpenAPI schema is generated from these)."""

from datetime import timedelta

from rest_framework import serializers

from identity.models import REVIEW_REASONS, JobRun, JobRunStatus
from recovery.review.items import ItemAction, ItemKind
from recovery.sql_views import (
    CabinetFinancial14d,
    CabinetLeadsLimbo,
    FunnelAuditWeekly,
    GapReason,
    KpiRedRecoveryMetricsDaily,
    RiskLevel,
)

MAX_METRICS_DAYS = 366
MAX_RECOVERY_LIMIT = 100_000


# --- inputs ------------------------------------------------------------------------------


class MetricsQuerySerializer(serializers.Serializer):
    date_from = serializers.DateField(required=False, help_text="first day (Lima), default: 29 days before date_to")
    date_to = serializers.DateField(required=False, help_text="last day (Lima), default: today")

    def validate(self, attrs):
        start, end = attrs.get("date_from"), attrs.get("date_to")
        if start and end:
            if start > end:
                raise serializers.ValidationError({"date_from": "must not be after date_to"})
            if end - start > timedelta(days=MAX_METRICS_DAYS - 1):
                raise serializers.ValidationError({"date_from": f"the range may span at most {MAX_METRICS_DAYS} days"})
        return attrs


class RunRecoveryQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(
        min_value=1, max_value=MAX_RECOVERY_LIMIT, required=False, default=1000,
        help_text=f"leads to take from the queue (1..{MAX_RECOVERY_LIMIT}, default 1000)",
    )


class IndexRefreshQuerySerializer(serializers.Serializer):
    full = serializers.BooleanField(required=False, default=False,
                                    help_text="rebuild every entry instead of only changed drivers")


class ReviewItemsQuerySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ItemKind.ALL, required=False,
                                   help_text="conflict, weak (doubtful leads) or audit (open audit items); "
                                             "none: all of them, the leads first")


class ReviewDecisionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=ItemAction.ALL,
        help_text="a doubtful lead: link, reject (this candidate), reject_all (every candidate), defer; "
                  "an audit item: confirm (same person), not_same (undoes the link), cannot_tell")
    person_key = serializers.UUIDField(required=False, allow_null=True,
                                       help_text="link and reject: the candidate (a person_key of the item)")
    seen = serializers.IntegerField(required=False, allow_null=True, min_value=0,
                                    help_text="a lead's last_judgement_id as you read it: when someone decided "
                                              "the lead since, nothing is applied (409 stale)")
    note = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")

    def validate(self, attrs):
        if attrs["action"] in ItemAction.NEEDS_PERSON and not attrs.get("person_key"):
            raise serializers.ValidationError({"person_key": f"required for {attrs['action']}"})
        return attrs


# --- outputs -----------------------------------------------------------------------------


class MetricsDaySerializer(serializers.ModelSerializer):
    class Meta:
        model = KpiRedRecoveryMetricsDaily
        fields = ["metric_date", "backlog_start", "new_backlog_in", "matched_out", "backlog_end", "net_change",
                  "top_fail_reason"]


class BacklogSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    by_risk = serializers.DictField(child=serializers.IntegerField(), help_text="risk level -> leads")


class FailReasonSerializer(serializers.Serializer):
    reason = serializers.CharField()
    leads = serializers.IntegerField()


class MetricsSerializer(serializers.Serializer):
    date_from = serializers.DateField()
    date_to = serializers.DateField()
    days = MetricsDaySerializer(many=True)
    backlog = BacklogSerializer(help_text="the red KPI now (ops.v_cabinet_kpi_red_backlog)")
    top_fail_reasons = FailReasonSerializer(many=True)


class JobRunSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=JobRunStatus.choices)
    trigger = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class GapCellSerializer(serializers.Serializer):
    gap_reason = serializers.ChoiceField(choices=GapReason.choices)
    risk_level = serializers.ChoiceField(choices=RiskLevel.choices)
    leads = serializers.IntegerField()


class MatchedLast24hSerializer(serializers.Serializer):
    matched_last_24h = serializers.IntegerField()
    unique_persons_matched = serializers.IntegerField()


class RecoveryStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ACTIVE", "NO_SIGNAL", "NOT_CONFIGURED"])
    scheduled = serializers.BooleanField()
    schedule_cron = serializers.CharField(allow_null=True)
    next_run_at = serializers.DateTimeField(allow_null=True)
    matched_last_48h = serializers.IntegerField()


class UnlinkedActivitySerializer(serializers.Serializer):
    today = serializers.IntegerField(help_text="drivers with trips today and no identity")
    last_7_days = serializers.IntegerField(help_text="drivers with trips in the last 7 days and no identity")


class IdentityGapsSerializer(serializers.Serializer):
    total_leads = serializers.IntegerField()
    unresolved = serializers.IntegerField()
    pct_unresolved = serializers.FloatField()
    by_reason = serializers.DictField(child=serializers.IntegerField())
    by_reason_risk = GapCellSerializer(many=True)
    freshness = serializers.ChoiceField(choices=["OK", "STALE", "NEVER"],
                                        help_text="OK: a matching job succeeded in the last 24 h")
    last_run = JobRunSummarySerializer(allow_null=True)
    last_success_at = serializers.DateTimeField(allow_null=True)
    matched_last_24h = MatchedLast24hSerializer()
    recovery = RecoveryStatusSerializer()
    drivers_unlinked_activity = UnlinkedActivitySerializer()


class JobRunSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.SerializerMethodField()

    class Meta:
        model = JobRun
        fields = ["id", "name", "status", "trigger", "params", "counts", "error", "started_at", "finished_at",
                  "duration_seconds", "host", "pid"]

    def get_duration_seconds(self, run) -> float | None:
        if run.finished_at is None or run.started_at is None:
            return None
        return round((run.finished_at - run.started_at).total_seconds(), 3)


class JobAcceptedSerializer(serializers.Serializer):
    job_run_id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=JobRunStatus.choices)
    url = serializers.CharField(help_text="GET it to follow the run")


class Financial14dSerializer(serializers.ModelSerializer):
    class Meta:
        model = CabinetFinancial14d
        fields = ["lead_source_pk", "lead_id", "lead_date", "park_id", "person_key", "driver_count",
                  "window_last_date", "window_open", "trips_14d", "reached_m1", "reached_m5", "reached_m25",
                  "expected_amount", "missing_claim_milestones", "claimed_amount", "paid_amount", "claims_count"]


class LimboSerializer(serializers.ModelSerializer):
    class Meta:
        model = CabinetLeadsLimbo
        fields = ["lead_source_pk", "lead_id", "lead_date", "park_id", "person_key", "limbo_stage", "trips_14d",
                  "missing_claim_milestones"]


class FunnelWeekSerializer(serializers.ModelSerializer):
    class Meta:
        model = FunnelAuditWeekly
        fields = ["week_start", "leads_total", "limbo_no_identity", "limbo_no_driver", "limbo_no_trips_14d",
                  "limbo_trips_no_claim", "limbo_ok"]


# --- audit estimates (recovery.review.quality) ----------------------------------------------


class PrecisionSerializer(serializers.Serializer):
    links = serializers.IntegerField(help_text="automatic lead links made")
    audited = serializers.IntegerField(help_text="of them, audit items answered")
    confirmed = serializers.IntegerField(help_text='answered "same person"')
    rejected = serializers.IntegerField(help_text='answered "not the same person"')
    cannot_tell = serializers.IntegerField()
    precision = serializers.FloatField(allow_null=True, help_text="stratified estimate; null before any verdict")
    precision_low = serializers.FloatField(allow_null=True, help_text="Wilson interval, lower bound")
    precision_high = serializers.FloatField(allow_null=True, help_text="Wilson interval, upper bound")


class RulePrecisionSerializer(PrecisionSerializer):
    rule = serializers.CharField()


class BelowThresholdSerializer(serializers.Serializer):
    sampled = serializers.IntegerField()
    audited = serializers.IntegerField()
    confirmed = serializers.IntegerField(help_text="true matches the threshold left unlinked")
    rejected = serializers.IntegerField()
    cannot_tell = serializers.IntegerField()
    true_match_share = serializers.FloatField(allow_null=True)
    share_low = serializers.FloatField(allow_null=True)
    share_high = serializers.FloatField(allow_null=True)


class QualityPeriodSerializer(serializers.Serializer):
    month = serializers.CharField(help_text='YYYY-MM (park time), or "all"')
    overall = PrecisionSerializer()
    rules = RulePrecisionSerializer(many=True)
    below_threshold = BelowThresholdSerializer()


class QualitySerializer(serializers.Serializer):
    confidence = serializers.FloatField()
    periods = QualityPeriodSerializer(many=True)


# --- review items (recovery.review.items) -----------------------------------------------------


class FieldValueSerializer(serializers.Serializer):
    value = serializers.CharField(allow_blank=True)
    status = serializers.CharField(help_text="the engine's verdict on it: agree, near, disagree, missing, info")


class EvidenceFieldSerializer(serializers.Serializer):
    field = serializers.CharField()
    label = serializers.CharField()
    lead_value = serializers.CharField(allow_blank=True)
    level = serializers.CharField(allow_null=True, help_text="the comparison level the engine scored")
    bits = serializers.FloatField(allow_null=True, help_text="what the level added to the score")
    shared_by = serializers.IntegerField(allow_null=True, help_text="persons carrying the agreeing value")
    values = FieldValueSerializer(many=True, help_text="each driver record's value, in the order of drivers")


class CandidateDriverSerializer(serializers.Serializer):
    driver_id = serializers.CharField()
    park_id = serializers.CharField(allow_null=True)
    status = serializers.CharField(allow_null=True)
    trips_in_window = serializers.IntegerField(help_text="trips in the lead's claim window")


class CandidateSerializer(serializers.Serializer):
    person_key = serializers.CharField()
    score = serializers.FloatField(help_text="posterior log-odds, in bits")
    corroborated = serializers.BooleanField()
    drivers = CandidateDriverSerializer(many=True)
    fields = EvidenceFieldSerializer(many=True)


class LeadItemSerializer(serializers.Serializer):
    """A doubtful lead, as the review screen shows it."""

    kind = serializers.ChoiceField(choices=[ItemKind.CONFLICT, ItemKind.WEAK])
    source_pk = serializers.CharField()
    reason = serializers.ChoiceField(choices=REVIEW_REASONS)
    lead_date = serializers.DateField()
    lead = serializers.DictField(child=serializers.CharField(allow_blank=True), help_text="field -> the lead's value")
    score = serializers.FloatField(allow_null=True, help_text="the best candidate's score")
    margin = serializers.FloatField(allow_null=True, help_text="best minus second score")
    rule_version = serializers.CharField()
    window_open = serializers.BooleanField()
    at_stake = serializers.DecimalField(max_digits=12, decimal_places=2)
    deferred_until = serializers.DateTimeField(allow_null=True)
    last_judgement_id = serializers.IntegerField(help_text="send it back as `seen` with a decision")
    candidates = CandidateSerializer(many=True)
    actions = serializers.ListField(child=serializers.ChoiceField(choices=list(ItemAction.LEAD)))


class AuditDriverSerializer(serializers.Serializer):
    driver_id = serializers.CharField()
    values = serializers.DictField(child=serializers.CharField(allow_blank=True), help_text="field -> value")


class AuditItemSerializer(serializers.Serializer):
    """An open audit item, blind: values only, nothing of the machine's judgement."""

    kind = serializers.ChoiceField(choices=[ItemKind.AUDIT])
    audit_item_id = serializers.IntegerField()
    source_pk = serializers.CharField()
    lead_date = serializers.DateField()
    lead = serializers.DictField(child=serializers.CharField(allow_blank=True), help_text="field -> the lead's value")
    drivers = AuditDriverSerializer(many=True, help_text="the linked (or proposed) person's driver records")
    actions = serializers.ListField(child=serializers.ChoiceField(choices=list(ItemAction.AUDIT)))


class ReviewItemSerializer(serializers.Serializer):
    """A review item of either kind, by its `kind` (documented as oneOf LeadItem | AuditItem)."""

    def to_representation(self, instance):
        shape = AuditItemSerializer if instance["kind"] == ItemKind.AUDIT else LeadItemSerializer
        return shape(instance).data


class ReviewDecisionResultSerializer(serializers.Serializer):
    source_pk = serializers.CharField()
    action = serializers.ChoiceField(choices=ItemAction.ALL)
    status = serializers.ChoiceField(choices=["linked", "rejected", "deferred", "recorded"],
                                     help_text="what was done")
    message = serializers.CharField()
    person_keys = serializers.ListField(child=serializers.CharField(),
                                        help_text="linked or rejected persons; an audit answer: the item's person")
    audit_item_id = serializers.IntegerField(allow_null=True, help_text="the audit item answered")
    link_undone = serializers.BooleanField(allow_null=True, help_text="not_same: whether the answer undid the link")
