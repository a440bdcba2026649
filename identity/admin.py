"""The admin for the identity tables: browse, filter and search everything; edit only source data.

Links, undone links (their history), origins, unmatched rows, judgements, job runs, the drivers
index and persons are read-only for everyone: they change only through the services
(identity.linking, identity.index, identity.runs), so a hand edit can never break the canonical
rules. Reviewers decide doubtful leads on the review screens (/review/), which go through
identity.linking like the jobs do.
"""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.db.models import Count, F, Func, OuterRef, Q, Subquery, TextField
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from identity.models import (
    DRIVERS_TABLE,
    LEADS_TABLE,
    REVIEW_REASONS,
    CabinetLead,
    Claim,
    Driver,
    DriverChange,
    DriverIndexEntry,
    DriversIndexCount,
    DriverTrips,
    HiresPerDay,
    IdentityJudgement,
    IdentityLink,
    IdentityLinkHistory,
    IdentityOrigin,
    IdentityUnmatched,
    JobRun,
    MatchModel,
    MatchRuleState,
    NameTokenStat,
    Person,
)
from identity.normalize import normalize_document, normalize_email, normalize_phone, normalize_plate
from identity.rules import rule_restore, rules_demoted

admin.site.site_header = "ct4 identity recovery"
admin.site.site_title = "ct4 admin"
admin.site.index_title = "Identity and recovery"


# --- shared pieces -------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by whoever has the view permission; nobody adds, changes or deletes by hand."""

    list_per_page = 50
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class SourceAdmin(admin.ModelAdmin):
    """Source records: imports create them; a hand fix of a value is allowed, keys never change,
    and nothing is deleted (links name these records)."""

    list_per_page = 50
    show_full_result_count = False
    key_fields: tuple[str, ...] = ()

    def has_add_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return (*self.key_fields, *super().get_readonly_fields(request, obj))

    def save_model(self, request, obj, form, change):
        # A changed value moves updated_at, so the drivers index refresh picks the record up.
        if form.has_changed() and hasattr(obj, "updated_at"):
            obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)


class LeadParkFilter(admin.SimpleListFilter):
    """Parks of the leads (read from the leads table's park index, cheap even on the SQL views)."""

    title = "park"
    parameter_name = "park_id"

    def lookups(self, request, model_admin):
        parks = (CabinetLead.objects.exclude(park_id=None).order_by("park_id")
                 .values_list("park_id", flat=True).distinct())
        return [(p, p) for p in parks]

    def queryset(self, request, queryset):
        return queryset.filter(park_id=self.value()) if self.value() else queryset


class ManualDecisionFilter(admin.SimpleListFilter):
    title = "decided by"
    parameter_name = "decided"

    def lookups(self, request, model_admin):
        return [("system", "automatic (system)"), ("manual", "a reviewer")]

    def queryset(self, request, queryset):
        if self.value() == "system":
            return queryset.filter(decided_by="system")
        if self.value() == "manual":
            return queryset.exclude(decided_by="system")
        return queryset


def as_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except (ValueError, AttributeError):
        return None


def normalized_keys(term: str) -> dict[str, str]:
    """What a search term is as a normalized key: phone, document, e-mail, plate (those that parse)."""
    term = term.strip()
    keys = {}
    if any(ch.isdigit() for ch in term) and (phone := normalize_phone(term)):
        keys["phone"] = phone
    if any(ch.isdigit() for ch in term) and (document := normalize_document(term)):
        keys["document"] = document
    if "@" in term and (email := normalize_email(term)):
        keys["email"] = email
    if (plate := normalize_plate(term)) and any(ch.isdigit() for ch in plate) and any(ch.isalpha() for ch in plate):
        keys["plate"] = plate
    return keys


def index_hits(term: str) -> Q | None:
    """Drivers index entries whose normalized phone, document (or licence DNI), e-mail or plate is the term's."""
    keys = normalized_keys(term)
    q = Q()
    for name, value in keys.items():
        q |= Q(**{name: value})
        if name == "document":
            q |= Q(license_document=value)
    return q if keys else None


class NormalizedSearchMixin:
    """Search also by person_key (a full UUID) and by a normalized phone / document / e-mail / plate,
    whatever the spelling typed ("987 123 456", "+51987123456", "DNI 44.556.677")."""

    person_lookup: str | None = None  # ORM path of the model's person_key

    def extra_search(self, term: str) -> Q | None:
        return None

    def get_search_results(self, request, queryset, search_term):
        base = queryset
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if not term:
            return queryset, may_have_duplicates
        extra = Q()
        if self.person_lookup and (key := as_uuid(term)):
            extra |= Q(**{self.person_lookup: key})
        if (more := self.extra_search(term)) is not None:
            extra |= more
        if extra:
            queryset = queryset | base.filter(extra)
        return queryset, may_have_duplicates


def norm(function: str, field: str) -> Func:
    return Func(F(field), function=f"canon.{function}", output_field=TextField())


def lead_key_hits(term: str) -> Q | None:
    """Leads whose phone or document, normalized in SQL (canon.norm_*), is the term's."""
    keys = normalized_keys(term)
    q = Q()
    if "phone" in keys:
        phones = CabinetLead.objects.annotate(n=norm("norm_phone_fast", "phone")).filter(n=keys["phone"])
        q |= Q(pk__in=phones.values("pk"))
    if "document" in keys:
        q |= Q(pk__in=CabinetLead.objects.annotate(n=norm("norm_document", "document"))
               .filter(n=keys["document"]).values("pk"))
    if "email" in keys:
        q |= Q(pk__in=CabinetLead.objects.annotate(n=norm("norm_email", "email")).filter(n=keys["email"]).values("pk"))
    return q if q else None


def review_link(source_pk: str, reason: str | None) -> str:
    if reason in REVIEW_REASONS:
        return format_html('<a href="{}">review</a>', reverse("review:lead", args=[source_pk]))
    return "-"


# --- sources -------------------------------------------------------------------------------


@admin.register(CabinetLead)
class CabinetLeadAdmin(NormalizedSearchMixin, SourceAdmin):
    list_display = ("source_pk", "id", "external_id", "lead_date", "park_id", "full_name", "linked_person")
    list_filter = (LeadParkFilter, ("lead_date", admin.DateFieldListFilter))
    search_fields = ("=source_pk", "=external_id", "first_name", "last_name")
    ordering = ("-created_at",)
    key_fields = ("id", "external_id", "source_pk", "created_at", "lead_date", "imported_at", "updated_at")

    def get_queryset(self, request):
        links = IdentityLink.objects.filter(source_table=LEADS_TABLE, source_pk=OuterRef("source_pk"))
        return super().get_queryset(request).annotate(person_key=Subquery(links.values("person_id")[:1]))

    def extra_search(self, term):
        q = lead_key_hits(term) or Q()
        if key := as_uuid(term):
            linked = IdentityLink.objects.filter(source_table=LEADS_TABLE, person_id=key)
            q |= Q(source_pk__in=linked.values("source_pk"))
        return q or None

    @admin.display(description="name")
    def full_name(self, obj):
        return " ".join(p for p in (obj.first_name, obj.middle_name, obj.last_name) if p)

    @admin.display(description="person")
    def linked_person(self, obj):
        if obj.person_key is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:identity_person_change", args=[obj.person_key]),
                           obj.person_key)


@admin.register(Driver)
class DriverAdmin(NormalizedSearchMixin, SourceAdmin):
    list_display = ("driver_id", "park_id", "full_name", "status", "hire_date", "person")
    list_filter = ("status", "park_id", ("hire_date", admin.DateFieldListFilter))
    search_fields = ("=driver_id", "first_name", "last_name")
    ordering = ("driver_id",)
    key_fields = ("driver_id", "imported_at", "updated_at")

    def get_queryset(self, request):
        entries = DriverIndexEntry.objects.filter(driver_id=OuterRef("driver_id"))
        return super().get_queryset(request).annotate(person_key=Subquery(entries.values("person_id")[:1]))

    def extra_search(self, term):
        q = Q()
        if (hits := index_hits(term)) is not None:
            q |= Q(driver_id__in=DriverIndexEntry.objects.filter(hits).values("driver_id"))
        if key := as_uuid(term):
            q |= Q(driver_id__in=DriverIndexEntry.objects.filter(person_id=key).values("driver_id"))
        return q or None

    @admin.display(description="name")
    def full_name(self, obj):
        return " ".join(p for p in (obj.first_name, obj.middle_name, obj.last_name) if p)

    @admin.display(description="person")
    def person(self, obj):
        if obj.person_key is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:identity_person_change", args=[obj.person_key]),
                           obj.person_key)


@admin.register(DriverTrips)
class DriverTripsAdmin(SourceAdmin):
    list_display = ("driver_id", "date", "trips")
    list_filter = (("date", admin.DateFieldListFilter),)
    search_fields = ("=driver_id",)
    ordering = ("-date", "driver_id")
    key_fields = ("driver_id", "date", "imported_at")


@admin.register(Claim)
class ClaimAdmin(SourceAdmin):
    list_display = ("lead_source_pk", "milestone", "amount", "status", "driver_id", "claimed_at", "created_by",
                    "created_at")
    list_filter = ("status", "milestone", "created_by", ("claimed_at", admin.DateFieldListFilter),
                   ("created_at", admin.DateFieldListFilter))
    search_fields = ("=lead_source_pk", "=driver_id")
    ordering = ("-created_at",)
    key_fields = ("lead_source_pk", "milestone", "created_by", "created_at", "updated_at")


# --- canonical identity (read-only) --------------------------------------------------------


class LinkInline(admin.TabularInline):
    model = IdentityLink
    fields = ("source_table", "source_pk", "match_rule", "match_score", "confidence_level", "decided_by", "linked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Person)
class PersonAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    list_display = ("person_key", "created_at", "links", "origin_lead")
    list_filter = (("created_at", admin.DateFieldListFilter),)
    search_fields = ()
    person_lookup = "person_key"
    ordering = ("-created_at",)
    inlines = (LinkInline,)
    search_help_text = "A person_key, a driver's phone / document / e-mail / plate, or a lead's source_pk"

    def get_queryset(self, request):
        # A correlated count: evaluated for the page's rows only, not grouped over every link.
        links = (IdentityLink.objects.filter(person=OuterRef("pk")).order_by().values("person")
                 .annotate(n=Count("*")).values("n"))
        return super().get_queryset(request).select_related("origin").annotate(n_links=Subquery(links))

    def get_search_results(self, request, queryset, search_term):
        # No text columns to search: only the extras (exact person_key, normalized keys, a source_pk).
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(person_key__in=IdentityLink.objects.filter(source_pk=term).values("person_id"))
        if key := as_uuid(term):
            q |= Q(person_key=key)
        if (hits := index_hits(term)) is not None:
            q |= Q(person_key__in=DriverIndexEntry.objects.filter(hits).values("person_id"))
        return queryset.filter(q), False

    @admin.display(description="links", ordering="n_links")
    def links(self, obj):
        return obj.n_links or 0

    @admin.display(description="origin lead")
    def origin_lead(self, obj):
        origin = getattr(obj, "origin", None)
        return origin.origin_source_id if origin else "-"


@admin.register(IdentityLink)
class IdentityLinkAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    list_display = ("source_table", "source_pk", "person", "match_rule", "match_score", "confidence_level",
                    "decided_by", "rule_version", "linked_at")
    list_filter = ("source_table", "confidence_level", ManualDecisionFilter, "match_rule",
                   ("linked_at", admin.DateFieldListFilter))
    search_fields = ("=source_pk", "=decided_by")
    person_lookup = "person_id"
    ordering = ("-linked_at",)
    list_select_related = ()

    def extra_search(self, term):
        q = Q()
        if (hits := lead_key_hits(term)) is not None:
            q |= Q(source_table=LEADS_TABLE, source_pk__in=CabinetLead.objects.filter(hits).values("source_pk"))
        if (hits := index_hits(term)) is not None:
            q |= Q(source_table=DRIVERS_TABLE, source_pk__in=DriverIndexEntry.objects.filter(hits).values("driver_id"))
        return q or None


@admin.register(IdentityLinkHistory)
class IdentityLinkHistoryAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    """Links a person undid (identity.linking.lead_unlink): who, when, why, from where, and the link itself."""

    list_display = ("source_pk", "person", "match_rule", "match_score", "decided_by", "linked_at", "undone_by_name",
                    "undone_at", "undone_via", "audit_item_id", "reason")
    list_filter = ("undone_via", "match_rule", "undone_by_name", ("undone_at", admin.DateFieldListFilter))
    search_fields = ("=source_pk", "=undone_by_name")
    person_lookup = "person_id"
    ordering = ("-undone_at", "-id")
    list_select_related = ()


@admin.register(IdentityOrigin)
class IdentityOriginAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    list_display = ("person", "origin_tag", "origin_source_id", "created_at", "updated_at")
    list_filter = ("origin_tag", ("created_at", admin.DateFieldListFilter), ("updated_at", admin.DateFieldListFilter))
    search_fields = ("=origin_source_id",)
    person_lookup = "person_id"
    ordering = ("-updated_at",)


@admin.register(IdentityUnmatched)
class IdentityUnmatchedAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    list_display = ("source_pk", "reason_code", "status", "snapshot_date", "candidates", "review")
    list_filter = ("reason_code", "status", "source_table", ("snapshot_date", admin.DateFieldListFilter))
    search_fields = ("=source_pk",)
    ordering = ("-updated_at",)

    def extra_search(self, term):
        if (hits := lead_key_hits(term)) is not None:
            return Q(source_pk__in=CabinetLead.objects.filter(hits).values("source_pk"))
        return None

    @admin.display(description="candidates")
    def candidates(self, obj):
        return len((obj.details or {}).get("candidates", []))

    @admin.display(description="review")
    def review(self, obj):
        return review_link(obj.source_pk, obj.reason_code if obj.status == "open" else None)


@admin.register(IdentityJudgement)
class IdentityJudgementAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    list_display = ("source_pk", "verdict", "person", "decided_by_name", "decided_at", "note")
    list_filter = ("verdict", "decided_by_name", ("decided_at", admin.DateFieldListFilter))
    search_fields = ("=source_pk", "=decided_by_name")
    person_lookup = "person_id"
    ordering = ("-decided_at", "-id")


# --- job runs and the drivers index (read-only) --------------------------------------------


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "status", "trigger", "started_at", "finished_at", "duration", "error_short")
    list_filter = ("status", "name", "trigger", ("started_at", admin.DateFieldListFilter))
    search_fields = ("name", "=host")
    ordering = ("-started_at",)

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None:
            return "-"
        return f"{(obj.finished_at - obj.started_at).total_seconds():.1f} s"

    @admin.display(description="error")
    def error_short(self, obj):
        return (obj.error[:80] + "...") if len(obj.error) > 80 else obj.error


@admin.register(DriverIndexEntry)
class DriverIndexEntryAdmin(NormalizedSearchMixin, ReadOnlyAdmin):
    list_display = ("driver_id", "person", "park_id", "phone", "document", "license_document", "email", "plate",
                    "name_key", "indexed_at")
    list_filter = ("park_id", ("indexed_at", admin.DateFieldListFilter))
    search_fields = ("=driver_id", "=name_key")
    person_lookup = "person_id"
    ordering = ("driver_id",)

    def extra_search(self, term):
        return index_hits(term)


@admin.register(MatchModel)
class MatchModelAdmin(ReadOnlyAdmin):
    """The m and the share of leads with a driver (the prior) each match run estimated (docs/matching.md); the
    latest is the one every path scores with."""

    list_display = ("id", "estimated_at", "run", "leads", "pairs", "levels_estimated", "levels_failed", "match_share")
    ordering = ("-estimated_at",)

    @admin.display(description="levels estimated")
    def levels_estimated(self, obj):
        return sum(len(levels) for levels in obj.m.values())

    @admin.display(description="levels on their declared m")
    def levels_failed(self, obj):
        return len(obj.failures)


@admin.register(NameTokenStat)
class NameTokenStatAdmin(ReadOnlyAdmin):
    list_display = ("token", "drivers")
    search_fields = ("=token",)
    ordering = ("-drivers", "token")


@admin.register(DriverChange)
class DriverChangeAdmin(ReadOnlyAdmin):
    """Driver rows changed since the index last took them in (what the next refresh re-indexes)."""

    list_display = ("driver_id", "noted_at")
    search_fields = ("=driver_id",)
    ordering = ("noted_at",)


@admin.register(DriversIndexCount)
class DriversIndexCountAdmin(ReadOnlyAdmin):
    list_display = ("drivers", "persons")


@admin.register(HiresPerDay)
class HiresPerDayAdmin(ReadOnlyAdmin):
    list_display = ("park_id", "hire_date", "hired")
    list_filter = ("park_id",)
    ordering = ("-hire_date", "park_id")


__all__ = ["LeadParkFilter", "NormalizedSearchMixin", "ReadOnlyAdmin", "as_uuid", "lead_key_hits", "review_link"]


@admin.register(MatchRuleState)
class MatchRuleStateAdmin(ReadOnlyAdmin):
    """Every change of an automatic link rule's state (identity.rules): demoted by its audited precision,
    or switched back by a person. The one action switches the selected demoted rules back to linking,
    in the name of the admin user (the change permission on match rule states is needed)."""

    list_display = ("rule", "state", "changed_at", "changed_by", "reason")
    list_filter = ("state", "rule", "changed_by")
    ordering = ("-changed_at", "-id")
    actions = ("restore_rules",)

    @admin.action(description="Switch the selected demoted rules back to linking", permissions=["restore"])
    def restore_rules(self, request, queryset):
        demoted = rules_demoted()
        rules = sorted({rule for rule in queryset.values_list("rule", flat=True) if rule in demoted})
        for rule in rules:
            rule_restore(rule=rule, changed_by=request.user.get_username(),
                         reason=f"restored in the admin by {request.user.get_username()}")
        skipped = queryset.exclude(rule__in=rules).values_list("rule", flat=True).distinct().count()
        self.message_user(request, f"Switched back to linking: {', '.join(rules) or 'none'}"
                                   + (f"; {skipped} rule(s) were not demoted" if skipped else "") + ".")

    def has_restore_permission(self, request):
        # Changing a rule's state is what the change permission means here; rows are never edited by hand.
        return request.user.has_perm("identity.change_matchrulestate")
