"""django-filter sets of the API's listings (query parameters, validated: bad values answer 400)."""

import django_filters as filters

from recovery.sql_views import CabinetFinancial14d, CabinetLeadsLimbo, FunnelAuditWeekly, LimboStage


class _LeadFilter(filters.FilterSet):
    lead_date_from = filters.DateFilter(field_name="lead_date", lookup_expr="gte", help_text="leads on or after")
    lead_date_to = filters.DateFilter(field_name="lead_date", lookup_expr="lte", help_text="leads on or before")
    park_id = filters.CharFilter(field_name="park_id", help_text="one park")
    has_identity = filters.BooleanFilter(field_name="person_key", lookup_expr="isnull", exclude=True,
                                         help_text="true: linked to a person; false: no identity")


class Financial14dFilter(_LeadFilter):
    window_open = filters.BooleanFilter(help_text="true: the 14-day window has not closed yet")
    has_missing_claims = filters.BooleanFilter(method="filter_missing_claims",
                                               help_text="true: a reached milestone has no claim")
    min_expected_amount = filters.NumberFilter(field_name="expected_amount", lookup_expr="gte")

    class Meta:
        model = CabinetFinancial14d
        fields = []

    def filter_missing_claims(self, queryset, name, value):
        return queryset.exclude(missing_claim_milestones=[]) if value else queryset.filter(missing_claim_milestones=[])


class LimboFilter(_LeadFilter):
    limbo_stage = filters.MultipleChoiceFilter(choices=LimboStage.choices, help_text="one or more stages")

    class Meta:
        model = CabinetLeadsLimbo
        fields = []


class FunnelWeeklyFilter(filters.FilterSet):
    week_from = filters.DateFilter(field_name="week_start", lookup_expr="gte")
    week_to = filters.DateFilter(field_name="week_start", lookup_expr="lte")

    class Meta:
        model = FunnelAuditWeekly
        fields = []
