"""The data the product stands on: source records, canonical identity, judgements, job runs.

Table names are contracts with the operators' runbooks (SPEC §2): they query these tables
verbatim, so `db_table` spells them exactly, schema-qualified (`canon"."identity_links`).
The canonical rules the database can hold are constraints here, not only code.
"""

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.functions import RandomUUID, TransactionNow
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.db.models.functions import Cast, Coalesce, Now

from identity.domain import DRIVERS_TABLE, LEADS_TABLE, MILESTONES, PARK_TIME_ZONE


class ReasonCode(models.TextChoices):
    """Why a lead is not linked: one set for the queue, the jobs table and identity_unmatched."""

    MISSING_IDENTIFIERS = "MISSING_IDENTIFIERS", "No usable phone, document, e-mail, plate or full name"
    NO_CANDIDATES = "NO_CANDIDATES", "No driver shares a key or a name block"
    WEAK_MATCH_ONLY = "WEAK_MATCH_ONLY", "Best candidate is plausible but below the link threshold"
    CONFLICT_MULTIPLE_CANDIDATES = "CONFLICT_MULTIPLE_CANDIDATES", "Two or more strong candidates are close"
    ERROR = "ERROR", "The matcher failed on this lead"


# The reasons a human decides: the matcher found someone, but would not link alone.
REVIEW_REASONS = (ReasonCode.CONFLICT_MULTIPLE_CANDIDATES.value, ReasonCode.WEAK_MATCH_ONLY.value)

# Normalized keys and tokens compare byte by byte: equality is the same in any collation, and
# PostgreSQL sorts and indexes them without the locale's rules (abbreviated keys work in "C" only).
KEY_COLLATION = "C"


class SourceTable(models.TextChoices):
    CABINET_LEADS = LEADS_TABLE, "Cabinet lead"
    DRIVERS = DRIVERS_TABLE, "Driver"


def choices_check(field: str, choices: type[models.TextChoices], name: str,
                  nullable: bool = False) -> models.CheckConstraint:
    condition = Q(**{f"{field}__in": choices.values})
    if nullable:
        condition |= Q(**{f"{field}__isnull": True})
    return models.CheckConstraint(condition=condition, name=name)


class LocalDate(models.Func):
    """The calendar date of a timestamptz in the park's time zone (immutable, so indexable)."""

    template = f"((%(expressions)s AT TIME ZONE '{PARK_TIME_ZONE}')::date)"
    output_field = models.DateField()


# --- Sources ---------------------------------------------------------------------------


class CabinetLead(models.Model):
    """A recruit the park's cabinet registered: `public.module_ct_cabinet_leads`."""

    id = models.BigIntegerField(primary_key=True)
    external_id = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField()
    lead_date = models.GeneratedField(
        expression=LocalDate("created_at"), output_field=models.DateField(), db_persist=True
    )
    # source_pk = COALESCE(external_id::text, id::text), everywhere (SPEC §2).
    source_pk = models.GeneratedField(
        expression=Coalesce("external_id", Cast("id", models.TextField())),
        output_field=models.TextField(),
        db_persist=True,
    )
    first_name = models.TextField(null=True, blank=True)
    middle_name = models.TextField(null=True, blank=True)
    last_name = models.TextField(null=True, blank=True)
    phone = models.TextField(null=True, blank=True)
    document = models.TextField(null=True, blank=True)
    email = models.TextField(null=True, blank=True)
    plate = models.TextField(null=True, blank=True)
    park_id = models.TextField(null=True, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    imported_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = LEADS_TABLE
        constraints = [models.UniqueConstraint(fields=["source_pk"], name="cabinet_lead_source_pk_uniq")]
        indexes = [
            models.Index(fields=["lead_date"], name="cabinet_lead_date_idx"),
            models.Index(fields=["park_id"], name="cabinet_lead_park_idx"),
        ]

    def __str__(self) -> str:
        return f"lead {self.source_pk}"


class Driver(models.Model):
    """The fleet's driver list. One human may be a driver in two parks (two records)."""

    driver_id = models.TextField(primary_key=True)
    park_id = models.TextField(null=True, blank=True)
    first_name = models.TextField(null=True, blank=True)
    middle_name = models.TextField(null=True, blank=True)
    last_name = models.TextField(null=True, blank=True)
    phone = models.TextField(null=True, blank=True)
    license_number = models.TextField(null=True, blank=True)
    document = models.TextField(null=True, blank=True)
    email = models.TextField(null=True, blank=True)
    plate = models.TextField(null=True, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    hire_date = models.DateField(null=True, blank=True)
    status = models.TextField(null=True, blank=True)
    imported_at = models.DateTimeField(db_default=Now())
    # Moves only when a value really changes: the drivers index refreshes from it.
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = DRIVERS_TABLE
        indexes = [models.Index(fields=["updated_at"], name="driver_updated_at_idx")]

    def __str__(self) -> str:
        return f"driver {self.driver_id}"


class DriverTrips(models.Model):
    """Completed trips of a driver on one day."""

    driver_id = models.TextField()
    date = models.DateField()
    trips = models.IntegerField()
    imported_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "driver_trips"
        verbose_name_plural = "driver trips"
        constraints = [
            # INCLUDE trips: a driver's trips in a date window are summed from the index alone.
            models.UniqueConstraint(fields=["driver_id", "date"], include=["trips"],
                                    name="driver_trips_driver_date_uniq"),
            models.CheckConstraint(condition=Q(trips__gte=0), name="driver_trips_nonnegative"),
        ]
        indexes = [models.Index(fields=["date"], name="driver_trips_date_idx")]


class ClaimStatus(models.TextChoices):
    EXPECTED = "expected"
    CLAIMED = "claimed"
    PAID = "paid"
    REJECTED = "rejected"


class Claim(models.Model):
    """Money claimed from the platform for a lead's milestone (1, 5 or 25 trips in 14 days)."""

    MILESTONES = MILESTONES

    lead_source_pk = models.TextField()
    driver_id = models.TextField(null=True, blank=True)
    milestone = models.SmallIntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.TextField(choices=ClaimStatus.choices, default=ClaimStatus.EXPECTED)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Who created the row: an import, or the reconcile job filling a missing expected claim.
    created_by = models.TextField(default="import")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "cabinet_milestone_claims"
        constraints = [
            models.UniqueConstraint(fields=["lead_source_pk", "milestone"], name="claim_lead_milestone_uniq"),
            models.CheckConstraint(condition=Q(milestone__in=(1, 5, 25)), name="claim_milestone_valid"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="claim_amount_nonnegative"),
            choices_check("status", ClaimStatus, "claim_status_valid"),
        ]
        indexes = [models.Index(fields=["driver_id"], name="claim_driver_idx")]


# --- Canonical identity (schema canon) ------------------------------------------------


class Person(models.Model):
    """One human: `canon.identity_registry`. A person_key is never changed or re-issued."""

    person_key = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The transaction's time: what a bulk first build leaves to the default (migration 0019).
    created_at = models.DateTimeField(db_default=TransactionNow())

    class Meta:
        db_table = 'canon"."identity_registry'
        verbose_name = "person"

    def __str__(self) -> str:
        return str(self.person_key)


class ConfidenceLevel(models.TextChoices):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    MANUAL = "manual"


class IdentityLink(models.Model):
    """A source record tied to a person. One source record links to at most one person."""

    source_table = models.TextField(choices=SourceTable.choices)
    source_pk = models.TextField()
    # No index of its own: identity_link_person_cover_idx leads with person_key (a second one cost a
    # million-row build on every first build of the drivers index, and a write on every link).
    person = models.ForeignKey(Person, on_delete=models.PROTECT, db_column="person_key", related_name="links",
                               db_index=False)
    match_rule = models.TextField()
    match_score = models.FloatField(null=True, blank=True)
    confidence_level = models.TextField(choices=ConfidenceLevel.choices)
    evidence = models.JSONField(default=dict, blank=True)
    rule_version = models.TextField(default="")
    # The transaction's time: what a bulk first build leaves to the default (migration 0019).
    linked_at = models.DateTimeField(db_default=TransactionNow())
    # 'system' for automatic jobs, the reviewer's username for a human decision.
    decided_by = models.TextField(default="system")

    class Meta:
        db_table = 'canon"."identity_links'
        constraints = [
            models.UniqueConstraint(fields=["source_table", "source_pk"], name="identity_link_one_per_source"),
            choices_check("source_table", SourceTable, "identity_link_source_table_valid"),
            choices_check("confidence_level", ConfidenceLevel, "identity_link_confidence_valid"),
        ]
        indexes = [
            models.Index(fields=["linked_at"], name="identity_link_linked_at_idx"),
            # "A person's driver records" (the 14-day money, limbo and funnel views, per lead):
            # answered from the index alone, without visiting a million-row heap.
            models.Index(fields=["person", "source_table"], include=["source_pk"],
                         name="identity_link_person_cover_idx"),
        ]

    @property
    def is_manual(self) -> bool:
        return self.decided_by != "system"

    def __str__(self) -> str:
        return f"{self.source_table}:{self.source_pk} -> {self.person_id}"


class OriginTag(models.TextChoices):
    CABINET_LEAD = "cabinet_lead"


class IdentityOrigin(models.Model):
    """How a person was acquired: the earliest lead linked to them."""

    person = models.OneToOneField(
        Person, on_delete=models.PROTECT, primary_key=True, db_column="person_key", related_name="origin"
    )
    origin_tag = models.TextField(choices=OriginTag.choices, default=OriginTag.CABINET_LEAD)
    origin_source_id = models.TextField()
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = 'canon"."identity_origin'
        constraints = [choices_check("origin_tag", OriginTag, "identity_origin_tag_valid")]
        indexes = [models.Index(fields=["origin_source_id"], name="identity_origin_source_idx")]


class UnmatchedStatus(models.TextChoices):
    OPEN = "open"
    RESOLVED = "resolved"
    IGNORED = "ignored"


class IdentityUnmatched(models.Model):
    """A source record the matcher could not link, with its candidates and their evidence."""

    source_table = models.TextField(choices=SourceTable.choices)
    source_pk = models.TextField()
    reason_code = models.TextField(choices=ReasonCode.choices)
    details = models.JSONField(default=dict, blank=True)
    snapshot_date = models.DateField()
    status = models.TextField(choices=UnmatchedStatus.choices, default=UnmatchedStatus.OPEN)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = 'canon"."identity_unmatched'
        verbose_name_plural = "identity unmatched"
        constraints = [
            models.UniqueConstraint(fields=["source_table", "source_pk"], name="identity_unmatched_one_per_source"),
            choices_check("reason_code", ReasonCode, "identity_unmatched_reason_valid"),
            choices_check("status", UnmatchedStatus, "identity_unmatched_status_valid"),
        ]
        indexes = [
            models.Index(fields=["reason_code", "status"], name="identity_unmatched_reason_idx"),
            models.Index(fields=["snapshot_date"], name="identity_unmatched_snap_idx"),
        ]


class Verdict(models.TextChoices):
    LINK = "link", "This is the person"
    NOT_THIS_PERSON = "not_this_person", "Not this person"
    DEFER = "defer", "Deferred"


class IdentityJudgement(models.Model):
    """A human decision on a lead and a candidate person; later automatic runs respect it."""

    source_table = models.TextField(choices=SourceTable.choices, default=SourceTable.CABINET_LEADS)
    source_pk = models.TextField()
    # Null only for a deferral that names no candidate.
    person = models.ForeignKey(
        Person, on_delete=models.PROTECT, db_column="person_key", null=True, blank=True, related_name="judgements"
    )
    verdict = models.TextField(choices=Verdict.choices)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept apart from the user row so the record survives the user's deletion.
    decided_by_name = models.TextField()
    decided_at = models.DateTimeField(db_default=Now())
    note = models.TextField(blank=True, default="")

    class Meta:
        db_table = 'canon"."identity_judgements'
        constraints = [
            choices_check("verdict", Verdict, "identity_judgement_verdict_valid"),
            models.CheckConstraint(
                condition=Q(verdict="defer") | Q(person__isnull=False), name="identity_judgement_names_person"
            ),
        ]
        indexes = [models.Index(fields=["source_table", "source_pk"], name="identity_judgement_source_idx")]


class UndoneVia(models.TextChoices):
    """Where a person undid a link from."""

    AUDIT = "audit", "An audit verdict (not the same person)"
    COMMAND = "command", "The link_undo command"
    API = "api", "The REST API"


class IdentityLinkHistory(models.Model):
    """A lead link a person undid: the removed link's columns, and who undid it, when, why and from where.

    Written only by identity.linking.lead_unlink, in the transaction that removes the link; never
    changed afterwards. The daily metrics read it (the lead re-entered the backlog at undone_at) and so
    does the audit report (an undone automatic link still counts among the links the matcher made)."""

    source_table = models.TextField(choices=SourceTable.choices, default=SourceTable.CABINET_LEADS)
    source_pk = models.TextField()
    person = models.ForeignKey(Person, on_delete=models.PROTECT, db_column="person_key", related_name="+")
    match_rule = models.TextField()
    match_score = models.FloatField(null=True, blank=True)
    confidence_level = models.TextField(choices=ConfidenceLevel.choices)
    evidence = models.JSONField(default=dict, blank=True)
    rule_version = models.TextField(default="")
    linked_at = models.DateTimeField()
    decided_by = models.TextField()
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept apart from the user row so the record survives the user's deletion.
    undone_by_name = models.TextField()
    undone_at = models.DateTimeField(db_default=Now())
    reason = models.TextField()
    undone_via = models.TextField(choices=UndoneVia.choices)
    # The ops.audit_items row whose verdict undid the link (no foreign key: identity does not know
    # recovery's tables).
    audit_item_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = 'canon"."identity_link_history'
        verbose_name = "undone link"
        verbose_name_plural = "identity link history"
        constraints = [
            choices_check("source_table", SourceTable, "identity_link_history_source_table_valid"),
            choices_check("confidence_level", ConfidenceLevel, "identity_link_history_confidence_valid"),
            choices_check("undone_via", UndoneVia, "identity_link_history_via_valid"),
            models.CheckConstraint(condition=~Q(undone_by_name__in=["", "system"]),
                                   name="identity_link_history_undone_by_person"),
        ]
        indexes = [
            models.Index(fields=["source_table", "source_pk"], name="identity_link_history_src_idx"),
            models.Index(fields=["undone_at"], name="identity_link_history_at_idx"),
            models.Index(fields=["audit_item_id"], name="identity_link_history_item_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.source_table}:{self.source_pk} -/-> {self.person_id}"


# --- Job runs (schema ops) -----------------------------------------------------------


class JobRunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class JobRun(models.Model):
    """One run of any job. Freshness and status badges are computed from these rows."""

    name = models.TextField()
    status = models.TextField(choices=JobRunStatus.choices, default=JobRunStatus.RUNNING)
    # Where the run came from: command, schedule, api.
    trigger = models.TextField(default="command")
    started_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    # Parameters the run was started with (limit, filters); never personal data.
    params = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    host = models.TextField(blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)

    class Meta:
        db_table = 'ops"."job_runs'
        constraints = [choices_check("status", JobRunStatus, "job_run_status_valid")]
        indexes = [models.Index(fields=["name", "-started_at"], name="job_run_name_started_idx")]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} {self.status}"


# --- Drivers index (schema canon) -----------------------------------------------------


class DriverIndexEntry(models.Model):
    """One driver record's normalized keys, and the person it belongs to.

    Built set-based in SQL by `refresh_drivers_index` from the drivers table, with the
    canon.norm_* functions that mirror identity.normalize.

    Its text columns compare bytewise (KEY_COLLATION): they are normalized keys and tokens, only ever
    compared for equality, and a btree or GIN index over them builds in about half the time without
    the server's locale (the first build of a million records: 7.0 s -> 4.1 s for the seven indexes).
    """

    driver_id = models.TextField(primary_key=True, db_collation=KEY_COLLATION)
    person = models.ForeignKey(
        Person, on_delete=models.PROTECT, db_column="person_key", null=True, blank=True, related_name="index_entries"
    )
    park_id = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    phone = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    document = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    license_document = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    # Two driver records with the same doc_key are the same person.
    doc_key = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    email = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    plate = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    given_tokens = ArrayField(models.TextField(db_collation=KEY_COLLATION), default=list)
    surname_tokens = ArrayField(models.TextField(db_collation=KEY_COLLATION), default=list)
    name_tokens = ArrayField(models.TextField(db_collation=KEY_COLLATION), default=list)
    name_key = models.TextField(null=True, blank=True, db_collation=KEY_COLLATION)
    birth_date = models.DateField(null=True, blank=True)
    # When the driver was hired, and where (park_id): a lead hired in its own park days after
    # applying is the recruitment evidence of identity.matching.
    hire_date = models.DateField(null=True, blank=True)
    # drivers.updated_at when this entry was computed: a differing value means "refresh me".
    source_updated_at = models.DateTimeField(null=True)
    # The transaction's time: what a bulk first build leaves to the default (migration 0019).
    indexed_at = models.DateTimeField(db_default=TransactionNow())

    class Meta:
        db_table = 'canon"."drivers_index'
        verbose_name = "drivers index entry"
        verbose_name_plural = "drivers index"
        indexes = [
            models.Index(fields=["phone"], name="drivers_index_phone_idx"),
            models.Index(fields=["document"], name="drivers_index_document_idx"),
            models.Index(fields=["license_document"], name="drivers_index_license_idx"),
            models.Index(fields=["doc_key"], name="drivers_index_doc_key_idx"),
            models.Index(fields=["email"], name="drivers_index_email_idx"),
            models.Index(fields=["plate"], name="drivers_index_plate_idx"),
            models.Index(fields=["indexed_at"], name="drivers_index_indexed_at_idx"),
            # The birth_date_initials blocking rule's lookups (identity.fields.BLOCKING_RULES).
            models.Index(fields=["birth_date"], name="drivers_index_birth_date_idx"),
            GinIndex(fields=["name_tokens"], name="drivers_index_name_gin"),
        ]


class NameTokenStat(models.Model):
    """How many driver records carry a name token: the term frequency behind name weights."""

    token = models.TextField(primary_key=True)
    drivers = models.IntegerField()

    class Meta:
        db_table = 'canon"."name_token_stats'


class DriverChange(models.Model):
    """A driver row inserted or updated since the index last took it in: written by the statement
    triggers on public.drivers (migration 0013), taken (deleted) by the incremental index refresh, so
    finding what changed reads these rows instead of comparing a million drivers with their entries."""

    # A row per change, not per driver (no unique key to check: a million notes after a first import
    # cost 8 s with one, 1.6 s without); the refresh takes each driver once.
    id = models.BigAutoField(primary_key=True)
    driver_id = models.TextField()
    noted_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = 'canon"."drivers_changed'


class DriversIndexCount(models.Model):
    """The index's driver records and distinct persons, one row kept by the index refresh (after any
    change): the matcher's population without counting a million rows per run."""

    id = models.SmallIntegerField(primary_key=True, default=1)
    drivers = models.IntegerField()
    persons = models.IntegerField()
    # A new random value each time the refresh writes the row, in the transaction of the change: the
    # version of the index an image on disk was built from (identity.index_image).
    version = models.UUIDField(db_default=RandomUUID())

    class Meta:
        db_table = 'canon"."drivers_index_counts'
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="drivers_index_counts_one_row")]


class HiresPerDay(models.Model):
    """Driver records hired per park and day, kept by the index refresh (after any change): the
    recruitment comparison's term frequency (identity.fields)."""

    park_id = models.TextField()
    hire_date = models.DateField()
    hired = models.IntegerField()

    class Meta:
        db_table = 'canon"."hires_per_day'
        constraints = [models.UniqueConstraint(fields=["park_id", "hire_date"], name="hires_per_day_one_per_day")]


class MatchModel(models.Model):
    """The m probabilities a match run estimated from its own pairs (identity.estimate): every
    matching path (batch, a lead arriving now, explain, review) scores with the latest row's, and
    with the registry's declared m for a level it does not hold."""

    estimated_at = models.DateTimeField(db_default=Now())
    run = models.ForeignKey(JobRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    leads = models.IntegerField()  # leads whose candidate pairs were counted
    pairs = models.IntegerField()
    # {field: {level: m}}: the estimates that passed (within their range, on enough pairs)
    m = models.JSONField(default=dict)
    # one line per level the data could not support: it keeps its declared m
    failures = models.JSONField(default=list)
    # The estimated share of leads whose human is among the persons, which makes the prior
    # (identity.estimate.match_share_estimate); null: not estimated, the declared prior.
    match_share = models.FloatField(null=True, blank=True)
    # How it was estimated: leads, leads with candidates, raw share, status (ShareEstimate.as_dict)
    share_estimate = models.JSONField(default=dict)

    class Meta:
        db_table = 'canon"."match_models'

    def __str__(self) -> str:
        return f"match model #{self.pk} ({self.pairs} pairs)"


class RuleState(models.TextChoices):
    LINKING = "linking", "Links on its own"
    REVIEW = "review", "Review instead of link"


class MatchRuleState(models.Model):
    """A change of an automatic link rule's state (identity.matching.LINK_RULES): demoted to "review
    instead of link" when its audited precision fell below the target, or switched back by a person.

    One row per change, never updated (the history stays); a rule's state is its latest row's, and a
    rule without rows links. Written only by identity.rules."""

    rule = models.TextField()
    state = models.TextField(choices=RuleState.choices)
    changed_at = models.DateTimeField(db_default=Now())
    # "system" for the automatic precision check; a person's username otherwise.
    changed_by = models.TextField()
    reason = models.TextField()
    # The audited figures at the change (links, audited, confirmed, rejected, precision and its interval,
    # the target), from recovery's audit report; empty for a change by hand without them.
    figures = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = 'canon"."match_rule_states'
        verbose_name = "match rule state"
        constraints = [
            choices_check("state", RuleState, "match_rule_state_valid"),
            # Only a person switches a rule back to linking.
            models.CheckConstraint(condition=Q(state="review") | ~Q(changed_by__in=["", "system"]),
                                   name="match_rule_state_restored_by_person"),
        ]
        indexes = [models.Index(fields=["rule", "-changed_at"], name="match_rule_state_rule_idx")]

    def __str__(self) -> str:
        return f"{self.rule}: {self.state}"
