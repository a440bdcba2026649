"""The one writer of persons, links, origins, unmatched rows, judgements and the history of undone links
(SPEC §3 canonical rules).

Automatic matching and a reviewer's decision both come through here, so the rules live in one
place: one link per source record (the database refuses a second), an automatic run never
touches a link a person decided, only a person undoes a link (lead_unlink), origin = the earliest
lead linked to the person, and every write happens for a whole batch in the caller's transaction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from django.db import connection, transaction
from django.utils import timezone

from identity.bulk import COPY_ROWS, frame_copy, frame_fetch, frames_copy, rows_source
from identity.models import LEADS_TABLE, PARK_TIME_ZONE, ReasonCode, UndoneVia, UnmatchedStatus, Verdict


@dataclass
class Registration:
    new_persons: int = 0
    joined_existing: int = 0
    driver_links: int = 0


def drivers_register_persons(*, cursor, staged: str = "_index_norm") -> Registration:
    """Decide every staged driver row's person (staged: a temp table with driver_id and doc_key):
    the one it already has, else an existing person with the same document, else a new person
    (one per document among the newcomers). person_keys are never re-issued.

    Writes the mapping to the temp table _driver_person(driver_id, person_key), set-based (no
    row updates), before the staged rows are written to the index."""
    result = Registration()
    cursor.execute("DROP TABLE IF EXISTS _driver_person_known")
    # Already indexed: keeps its person. Otherwise an existing person with the same document.
    cursor.execute(
        f"""
        CREATE TEMP TABLE _driver_person_known ON COMMIT DROP AS
        SELECT n.driver_id, n.doc_key, di.person_key AS own, known.person_key AS by_document
        FROM {staged} n
        LEFT JOIN canon.drivers_index di ON di.driver_id = n.driver_id
        LEFT JOIN (
            SELECT DISTINCT ON (e.doc_key) e.doc_key, e.person_key
            FROM canon.drivers_index e
            WHERE e.person_key IS NOT NULL AND e.doc_key IN (SELECT doc_key FROM {staged})
            ORDER BY e.doc_key, e.indexed_at, e.driver_id
        ) known ON known.doc_key = n.doc_key
        """
    )
    cursor.execute("SELECT count(*) FILTER (WHERE own IS NULL AND by_document IS NOT NULL) FROM _driver_person_known")
    result.joined_existing = cursor.fetchone()[0]
    # The rest: one new person per document, or per driver when it has no document.
    cursor.execute("DROP TABLE IF EXISTS _new_persons")
    cursor.execute(
        """
        CREATE TEMP TABLE _new_persons ON COMMIT DROP AS
        SELECT grp, gen_random_uuid() AS person_key
        FROM (SELECT DISTINCT COALESCE(doc_key, 'driver:' || driver_id) AS grp
              FROM _driver_person_known WHERE own IS NULL AND by_document IS NULL) g
        """
    )
    result.new_persons = cursor.rowcount
    if result.new_persons:
        cursor.execute(
            "INSERT INTO canon.identity_registry (person_key, created_at) "
            "SELECT person_key, now() FROM _new_persons ORDER BY person_key"
        )
    cursor.execute("DROP TABLE IF EXISTS _driver_person")
    cursor.execute(
        """
        CREATE TEMP TABLE _driver_person ON COMMIT DROP AS
        SELECT k.driver_id, COALESCE(k.own, k.by_document, p.person_key) AS person_key
        FROM _driver_person_known k
        LEFT JOIN _new_persons p
               ON k.own IS NULL AND k.by_document IS NULL AND p.grp = COALESCE(k.doc_key, 'driver:' || k.driver_id)
        """
    )
    cursor.execute("ALTER TABLE _driver_person ADD PRIMARY KEY (driver_id)")
    return result


def drivers_link(*, cursor, staged: str = "_index_norm") -> int:
    """Every staged driver gets its link ('drivers', driver_id) -> its person in _driver_person;
    existing links stay."""
    cursor.execute(
        f"""
        INSERT INTO canon.identity_links
            (source_table, source_pk, person_key, match_rule, match_score, confidence_level,
             evidence, rule_version, linked_at, decided_by)
        SELECT 'drivers', n.driver_id, dp.person_key,
               CASE WHEN n.doc_key IS NULL THEN 'driver_registration' ELSE 'driver_same_document' END,
               NULL, 'high', '{{}}'::jsonb, 'index-1', now(), 'system'
        FROM {staged} n JOIN _driver_person dp ON dp.driver_id = n.driver_id
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links l
                          WHERE l.source_table = 'drivers' AND l.source_pk = n.driver_id)
        ORDER BY n.driver_id
        ON CONFLICT (source_table, source_pk) DO NOTHING
        """
    )
    return cursor.rowcount


def person_keys_new(count: int) -> pl.Series:
    """`count` random (version 4) person_keys, made column-wise."""
    if not count:
        return pl.Series("person_key", [], dtype=pl.String)
    hex_digits = os.urandom(16 * count).hex()
    raw = pl.Series("h", [hex_digits]).str.extract_all(".{32}").explode()
    variant = raw.str.slice(16, 1).str.replace_many(list("0123456789abcdef"), list("89ab89ab89ab89ab"))
    return pl.select(pl.concat_str(
        raw.str.slice(0, 8), pl.lit("-"), raw.str.slice(8, 4), pl.lit("-4"), raw.str.slice(13, 3), pl.lit("-"),
        variant, raw.str.slice(17, 3), pl.lit("-"), raw.str.slice(20, 12)).alias("person_key")).to_series()


@dataclass(frozen=True)
class FirstBuild:
    """A first build's persons, made in memory before anything is written: one new person per document,
    or per driver without one."""

    persons: pl.DataFrame  # (person_key): each new person
    drivers: pl.DataFrame  # (driver_id, person_key, doc_key): each driver's person, in driver_id order


def drivers_first_persons(drivers: pl.DataFrame) -> FirstBuild:
    """The persons of a first build of the drivers index (no entry, no driver link yet): their keys
    drawn here, so that the matcher's index can be built before they are written (drivers_first_write)."""
    groups = drivers.select(pl.coalesce("doc_key", pl.lit("driver:") + pl.col("driver_id")).alias("grp"),
                            "driver_id", "doc_key")
    persons = groups.select("grp").unique()
    persons = persons.with_columns(person_keys_new(persons.height)).sort("person_key")
    mapping = groups.join(persons, on="grp").select("driver_id", "person_key", "doc_key").sort("driver_id")
    # Without the documents they were drawn for: the build holds these frames while the matcher works.
    return FirstBuild(persons=persons.select("person_key"), drivers=mapping)


def drivers_first_write(*, cursor, build: FirstBuild) -> Registration:
    """Write a first build's persons and driver links by COPY. Their created_at and linked_at are the
    columns' default, the transaction's time (as the index entries' indexed_at): not sent as text, which
    PostgreSQL would parse a million times.

    The drivers they link leave canon.drivers_unlinked (migration 0006) once, by emptying it and putting
    back the drivers still without a link: its insert trigger would delete them a COPY slice at a time,
    a million deletions (about 4 s of a 1M build, against 0.7 s). Disabling the trigger, the TRUNCATE
    and the refill are all this transaction's: a failure rolls them back, and a driver imported meanwhile
    is either refilled (committed before) or added by its own trigger (waiting for the TRUNCATE's lock).

    The lead window's insert trigger (recovery.lead_window) is disabled too: a driver link changes only the
    windows of its person's linked leads, and every person here is new, drawn by this transaction, so no
    lead link can name one. Its transition table alone (every copied row kept until the statement's end)
    cost about 1.5 s of a 1M build."""
    frame_copy(cursor, "canon.identity_registry", build.persons.select("person_key"))
    triggers = ("drivers_unlinked_link_insert", "lead_window_14d_links_insert")
    for trigger in triggers:
        cursor.execute(f"ALTER TABLE canon.identity_links DISABLE TRIGGER {trigger}")
    # Made a slice at a time, in one COPY: a million rows of constant columns are never whole in memory.
    frames_copy(cursor, "canon.identity_links", (
        build.drivers.slice(start, COPY_ROWS).select(
            pl.lit("drivers").alias("source_table"), pl.col("driver_id").alias("source_pk"), "person_key",
            pl.when(pl.col("doc_key").is_null()).then(pl.lit("driver_registration"))
            .otherwise(pl.lit("driver_same_document")).alias("match_rule"),
            pl.lit("high").alias("confidence_level"), pl.lit("{}").alias("evidence"),
            pl.lit("index-1").alias("rule_version"), pl.lit("system").alias("decided_by"))
        for start in range(0, build.drivers.height, COPY_ROWS)))
    for trigger in triggers:
        cursor.execute(f"ALTER TABLE canon.identity_links ENABLE TRIGGER {trigger}")
    cursor.execute("TRUNCATE canon.drivers_unlinked")
    cursor.execute(
        """
        INSERT INTO canon.drivers_unlinked (driver_id)
        SELECT d.driver_id FROM public.drivers d
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links il
                          WHERE il.source_table = 'drivers' AND il.source_pk = d.driver_id)
        """
    )
    return Registration(new_persons=build.persons.height, driver_links=build.drivers.height)


@dataclass(frozen=True)
class LeadLink:
    """A decision to tie a lead to a person, with everything an auditor needs to see why."""

    source_pk: str
    person_key: str
    match_rule: str
    match_score: float | None
    confidence_level: str
    evidence: dict
    rule_version: str


@dataclass
class LinkOutcome:
    linked: list[str] = field(default_factory=list)
    already_linked: list[str] = field(default_factory=list)
    origins_written: int = 0


LINK_COLUMNS = {"source_pk": "text", "person_key": "uuid", "match_rule": "text", "match_score": "float8",
                "confidence_level": "text", "evidence": "jsonb", "rule_version": "text"}
UNMATCHED_COLUMNS = {"source_pk": "text", "reason_code": "text", "details": "jsonb"}


def leads_link(*, links: list[LeadLink], decided_by: str = "system") -> LinkOutcome:
    """Create the links of a batch, their origins, and close their unmatched rows, atomically.

    A lead that already has a link keeps it (whoever decided it): the second writer loses and
    is told so in `already_linked`.
    """
    frame = pl.DataFrame(
        {"source_pk": [x.source_pk for x in links], "person_key": [x.person_key for x in links],
         "match_rule": [x.match_rule for x in links], "match_score": [x.match_score for x in links],
         "confidence_level": [x.confidence_level for x in links], "evidence": [_json(x.evidence) for x in links],
         "rule_version": [x.rule_version for x in links]},
        schema={name: pl.Float64 if name == "match_score" else pl.String for name in LINK_COLUMNS},
    )
    return leads_link_frame(links=frame, decided_by=decided_by)


def leads_link_frame(*, links: pl.DataFrame, decided_by: str = "system") -> LinkOutcome:
    """leads_link for a frame of LINK_COLUMNS (evidence as JSON text): one COPY into a staging
    table, then one INSERT for the whole batch."""
    outcome = LinkOutcome()
    if not links.height:
        return outcome
    with transaction.atomic(), connection.cursor() as cursor:
        person_keys = sorted(set(links["person_key"].to_list()))
        _lock_persons(cursor, person_keys)
        source, params = rows_source(cursor, "_lead_links", links, LINK_COLUMNS, "l")
        cursor.execute(
            f"""
            INSERT INTO canon.identity_links
                (source_table, source_pk, person_key, match_rule, match_score, confidence_level,
                 evidence, rule_version, linked_at, decided_by)
            SELECT %s, l.source_pk, l.person_key, l.match_rule, l.match_score, l.confidence_level,
                   l.evidence, l.rule_version, now(), %s
            FROM {source} ORDER BY l.source_pk
            ON CONFLICT (source_table, source_pk) DO NOTHING
            RETURNING source_pk
            """,
            [LEADS_TABLE, decided_by, *params],
        )
        outcome.linked = [row[0] for row in cursor.fetchall()]
        linked = set(outcome.linked)
        outcome.already_linked = [pk for pk in links["source_pk"].to_list() if pk not in linked]
        if outcome.linked:
            outcome.origins_written = origins_refresh(cursor=cursor, person_keys=person_keys)
            cursor.execute(
                """
                UPDATE canon.identity_unmatched SET status = %s, updated_at = now()
                WHERE source_table = %s AND source_pk = ANY(%s) AND status = %s
                """,
                [UnmatchedStatus.RESOLVED, LEADS_TABLE, outcome.linked, UnmatchedStatus.OPEN],
            )
    return outcome


def _lock_persons(cursor, person_keys: list[str]) -> None:
    """Serialize origin updates per person (in key order, so two batches cannot deadlock)."""
    cursor.execute(
        "SELECT 1 FROM canon.identity_registry WHERE person_key = ANY(%s::uuid[]) ORDER BY person_key FOR UPDATE",
        [person_keys],
    )


def origins_refresh(*, cursor, person_keys: list[str] | None = None) -> int:
    """Make each person's origin the earliest lead linked to them (all persons when None).

    Earliest = the lead's created_at, ties broken by source_pk. Returns rows written.
    """
    # For given persons, their links are found through the person index only: `source_table || ''` keeps
    # the planner off the (source_table, source_pk) index, which the statistics of a run's start (no lead
    # link yet) made look cheap, and which scans every lead link written so far (a match run's origins
    # grew from 16 to 500 ms a batch).
    where = ("l.source_table || '' = %s AND l.person_key = ANY(%s::uuid[])" if person_keys is not None
             else "l.source_table = %s")
    cursor.execute(
        f"""
        INSERT INTO canon.identity_origin AS o (person_key, origin_tag, origin_source_id, created_at, updated_at)
        SELECT DISTINCT ON (l.person_key) l.person_key, 'cabinet_lead', l.source_pk, now(), now()
        FROM canon.identity_links l
        JOIN public.module_ct_cabinet_leads c ON c.source_pk = l.source_pk
        WHERE {where}
        ORDER BY l.person_key, c.created_at, l.source_pk
        ON CONFLICT (person_key) DO UPDATE
            SET origin_source_id = EXCLUDED.origin_source_id, updated_at = now()
            WHERE o.origin_source_id IS DISTINCT FROM EXCLUDED.origin_source_id
        """,
        [LEADS_TABLE, person_keys] if person_keys is not None else [LEADS_TABLE],
    )
    return cursor.rowcount


@dataclass
class UnlinkOutcome:
    status: str  # unlinked, not_linked
    message: str
    source_pk: str
    person_key: str
    history_id: int | None = None
    # The person's origin after the undo: the earliest lead still linked to them, None when none is left.
    origin_source_id: str | None = None

    @property
    def unlinked(self) -> bool:
        return self.status == "unlinked"


def lead_unlink(
    *, source_pk: str, person_key: str, user, reason: str, undone_via: str, audit_item_id: int | None = None,
) -> UnlinkOutcome:
    """Undo one lead's link to a person, all or nothing: a person's decision, never a job's.

    The lead is locked first (as a review decision does), then the person (as every link writer does);
    then, if the lead is still linked to that person: the link is copied into canon.identity_link_history
    with who undid it, when, why and from where (`undone_via`, `audit_item_id`) and removed; a
    NOT_THIS_PERSON judgement keeps every later automatic run from linking the two again; the lead's
    unmatched row, if it has one, is open again; the person's origin moves to the earliest lead still
    linked to them, or is deleted when none is left. When the lead is no longer linked to that person
    (undone already, or linked to someone else) nothing is written and the outcome says so (not_linked).
    """
    if user is None or not user.get_username() or user.get_username() == "system":
        raise ValueError("only a person can undo a link: give the user who decided it")
    if undone_via not in UndoneVia.values:
        raise ValueError(f"unknown undone_via {undone_via!r}")
    if not reason.strip():
        raise ValueError("say why the link is undone (reason)")
    username = user.get_username()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM public.module_ct_cabinet_leads WHERE source_pk = %s FOR UPDATE", [source_pk])
        _lock_persons(cursor, [person_key])
        cursor.execute(
            """
            WITH removed AS (
                DELETE FROM canon.identity_links
                WHERE source_table = %(leads)s AND source_pk = %(pk)s AND person_key = %(person)s::uuid
                RETURNING *
            )
            INSERT INTO canon.identity_link_history
                (source_table, source_pk, person_key, match_rule, match_score, confidence_level, evidence,
                 rule_version, linked_at, decided_by, undone_by_id, undone_by_name, undone_at, reason,
                 undone_via, audit_item_id)
            SELECT r.source_table, r.source_pk, r.person_key, r.match_rule, r.match_score, r.confidence_level,
                   r.evidence, r.rule_version, r.linked_at, r.decided_by, %(user_id)s, %(username)s, now(),
                   %(reason)s, %(via)s, %(item)s
            FROM removed r
            RETURNING id
            """,
            {"leads": LEADS_TABLE, "pk": source_pk, "person": person_key, "user_id": user.pk, "username": username,
             "reason": reason, "via": undone_via, "item": audit_item_id},
        )
        row = cursor.fetchone()
        if row is None:
            cursor.execute(
                "SELECT person_key::text FROM canon.identity_links WHERE source_table = %s AND source_pk = %s",
                [LEADS_TABLE, source_pk])
            now_linked = cursor.fetchone()
            where = f"is linked to person {now_linked[0]} now" if now_linked else "has no link now"
            return UnlinkOutcome(
                "not_linked", f"Lead {source_pk} is not linked to person {person_key} (it {where}). Nothing was undone.",
                source_pk, person_key)
        outcome = UnlinkOutcome("unlinked", "", source_pk, person_key, history_id=row[0])
        judgement_record(source_pk=source_pk, person_key=person_key, verdict=Verdict.NOT_THIS_PERSON, user=user,
                         note=reason)
        cursor.execute(
            """
            UPDATE canon.identity_unmatched SET status = %s, updated_at = now()
            WHERE source_table = %s AND source_pk = %s AND status = %s
            """,
            [UnmatchedStatus.OPEN, LEADS_TABLE, source_pk, UnmatchedStatus.RESOLVED],
        )
        # origins_refresh only writes persons who still have a lead link: one left with none loses its origin.
        origins_refresh(cursor=cursor, person_keys=[person_key])
        cursor.execute(
            """
            DELETE FROM canon.identity_origin o
            WHERE o.person_key = %s::uuid
              AND NOT EXISTS (SELECT 1 FROM canon.identity_links l
                              WHERE l.source_table = %s AND l.person_key = o.person_key)
            """,
            [person_key, LEADS_TABLE],
        )
        cursor.execute("SELECT origin_source_id FROM canon.identity_origin WHERE person_key = %s::uuid", [person_key])
        origin = cursor.fetchone()
        outcome.origin_source_id = origin[0] if origin else None
        outcome.message = (
            f"Link of lead {source_pk} to person {person_key} undone by {username}; "
            + (f"the person's origin is now lead {outcome.origin_source_id}."
               if origin else "the person has no lead left, so no origin.")
        )
    return outcome


def leads_record_unmatched_frame(*, outcomes: pl.DataFrame, snapshot_date=None) -> int:
    """Upsert each unlinked lead's reason and candidates (a frame of UNMATCHED_COLUMNS, details as JSON
    text) into canon.identity_unmatched."""
    if not outcomes.height:
        return 0
    snapshot_date = snapshot_date or lima_today()
    with connection.cursor() as cursor:
        source, params = rows_source(cursor, "_lead_unmatched", outcomes, UNMATCHED_COLUMNS, "o")
        cursor.execute(
            f"""
            INSERT INTO canon.identity_unmatched AS u
                (source_table, source_pk, reason_code, details, snapshot_date, status, created_at, updated_at)
            SELECT %s, o.source_pk, o.reason_code, o.details, %s, 'open', now(), now()
            FROM {source} ORDER BY o.source_pk
            ON CONFLICT (source_table, source_pk) DO UPDATE SET
                reason_code = EXCLUDED.reason_code, details = EXCLUDED.details,
                snapshot_date = EXCLUDED.snapshot_date, updated_at = now(),
                status = CASE WHEN u.status = 'ignored' THEN u.status ELSE 'open' END
            """,
            [LEADS_TABLE, snapshot_date, *params],
        )
        return cursor.rowcount


def judgement_record(
    *, source_pk: str, person_key: str | None, verdict: str, user=None, decided_by_name: str | None = None,
    note: str = "",
) -> None:
    """Store a human's verdict on a lead and a candidate (who and when). Later runs respect it."""
    from identity.models import IdentityJudgement  # noqa: PLC0415

    if verdict not in Verdict.values:
        raise ValueError(f"unknown verdict {verdict!r}")
    IdentityJudgement.objects.create(
        source_table=LEADS_TABLE,
        source_pk=source_pk,
        person_id=person_key,
        verdict=verdict,
        decided_by=user,
        decided_by_name=decided_by_name or (user.get_username() if user else "system"),
        note=note,
    )


def rejected_frame(*, source_pks: list[str]) -> pl.DataFrame:
    """(source_pk, person_key): the persons a reviewer said each lead is not (negative judgements)."""
    schema = {"source_pk": pl.String, "person_key": pl.String}
    if not source_pks:
        return pl.DataFrame(schema=schema)
    # Judgements are few (a reviewer's), whatever the batch: fetched, not copied.
    return frame_fetch(
        "SELECT source_pk, person_key::text FROM canon.identity_judgements "
        "WHERE source_table = %s AND source_pk = ANY(%s) AND verdict = %s AND person_key IS NOT NULL",
        [LEADS_TABLE, source_pks, Verdict.NOT_THIS_PERSON.value], schema=schema)


def lead_links(*, source_pks: list[str]) -> dict[str, str]:
    """The person each of these leads is linked to (leads without a link are left out)."""
    if not source_pks:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT source_pk, person_key::text FROM canon.identity_links WHERE source_table = %s AND source_pk = ANY(%s)",
            [LEADS_TABLE, source_pks],
        )
        return dict(cursor.fetchall())


def lima_today():
    return timezone.now().astimezone(_lima()).date()


def _lima():
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    return ZoneInfo(PARK_TIME_ZONE)


def _json(value) -> str:
    import json  # noqa: PLC0415

    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


__all__ = [
    "LeadLink",
    "ReasonCode",
    "UnlinkOutcome",
    "drivers_first_persons",
    "drivers_first_write",
    "drivers_link",
    "drivers_register_persons",
    "judgement_record",
    "lead_links",
    "lead_unlink",
    "leads_link",
    "leads_link_frame",
    "leads_record_unmatched_frame",
    "origins_refresh",
    "rejected_frame",
]
