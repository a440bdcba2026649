"""Guardrails (SPEC §4.7): set-based checks that what the product reports about leads, links and origins is true.

Each check returns a CheckResult naming its offenders by source_pk or person_key only (never personal data).
The checks keep their own SQL for the rules they verify (the earliest lead, a person's trips in the claim
window): independent copies on purpose, so a bug in the one home (identity.domain, recovery.lead_window)
cannot hide itself from the check.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.exceptions import InconsistentMigrationHistory
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import NonInteractiveMigrationQuestioner
from django.db.migrations.state import ProjectState

from identity.models import DRIVERS_TABLE, LEADS_TABLE
from identity.runs import job_run
from recovery import lead_window

JOB_NAME = "guardrails"
# Offenders listed per check; the total is always counted in full.
OFFENDERS_SHOWN = 50
DEFAULT_DRAIN_N = 100
# The project's own apps, whose leaf migrations the migrations check names.
PROJECT_APPS = ("identity", "recovery")


@dataclass
class CheckResult:
    name: str
    ok: bool
    summary: str
    offenders: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    # Readable figure lines printed under the verdict (the machine-readable ones are in details).
    lines: list[str] = field(default_factory=list)

    @property
    def offenders_total(self) -> int:
        return int(self.details.get("offenders_total", len(self.offenders)))

    def as_dict(self) -> dict:
        return {
            "name": self.name, "ok": self.ok, "summary": self.summary, "offenders": self.offenders,
            "offenders_total": self.offenders_total, "details": self.details,
        }

    def render(self) -> str:
        out = [f"[{'OK' if self.ok else 'FAIL'}] {self.name}: {self.summary}"]
        out += [f"  {line}" for line in self.lines]
        samples = self.details.get("samples", {})
        for category, shown in samples.items():
            if not shown:
                continue
            total = self.details["counts"][category]
            out.append(f"  {LABELS.get(category, category)} ({len(shown)} of {total} shown):")
            out += [f"    {item}" for item in shown]
        return "\n".join(out)


def results_output(results: list[CheckResult], *, as_json: bool) -> str:
    """What the guardrail commands print: each verdict, or one JSON document."""
    if as_json:
        payload = results[0].as_dict() if len(results) == 1 else {
            "ok": all(r.ok for r in results), "checks": [r.as_dict() for r in results]}
        return json.dumps(payload, default=str, sort_keys=True)
    text = "\n".join(r.render() for r in results)
    if len(results) > 1:
        failed = [r.name for r in results if not r.ok]
        text += f"\n\n{len(results) - len(failed)} of {len(results)} guardrails passed"
        text += f"; FAILED: {', '.join(failed)}" if failed else ""
    return text


# --- shared plumbing ------------------------------------------------------------------

# What each offender category means, in the words the verdict prints.
LABELS = {
    "origin_orphan": "origins orphan (the origin's lead is not linked to that person)",
    "matched_without_origin": "matched leads whose person has no origin",
    "person_without_origin": "persons with a lead link and no origin",
    "origin_not_earliest": "persons whose origin is not their earliest linked lead",
    "link_person_missing": "links whose person is missing from canon.identity_registry",
    "lead_link_without_origin": "lead links whose person has no origin",
    "matched_job_without_link": "matched ops.identity_matching_jobs rows without a link",
    "matched_queue_without_link": "matched queue rows without a link",
    "unlinked_driver_not_listed": "drivers with no link missing from canon.drivers_unlinked",
    "listed_driver_not_unlinked": "canon.drivers_unlinked rows whose driver is linked or gone",
    "lead_window_missing": "linked leads missing from ops.lead_window_14d",
    "lead_window_stray": "ops.lead_window_14d rows whose lead is gone or has no link",
    "lead_window_wrong": "ops.lead_window_14d rows whose person, drivers, trips or claimed milestones differ "
                         "from the direct computation",
    "queue_matched_in_backlog": "matched queue rows still in ops.v_cabinet_kpi_red_backlog",
    "multiple_leaf_nodes": "apps with more than one leaf migration",
    "unapplied": "unapplied migrations",
    "inconsistent_history": "migrations applied before their dependencies",
    "model_changes": "model changes without a migration",
}


def _fetch(sql: str, params: dict | None = None, *, nested_loops: bool = False) -> list[tuple]:
    """Run a check's query with hash joins only (unless `nested_loops`).

    Every check compares whole sets, so hash joins keep it linear. Left to itself the planner
    picks nested loops when the statistics are stale (one big recovery run adds fewer links than
    autovacuum's 10 % threshold on a table of a million driver links), and a check then takes
    minutes instead of a second. SET LOCAL inside a savepoint, set back before it is released, so
    the rest of a caller's transaction plans as usual.

    `nested_loops=True` is for a query whose lookups are per row by nature (a LATERAL call per lead):
    forbidding nested loops there turns each row's index lookup into a scan of the whole table.
    """
    with transaction.atomic(using=DEFAULT_DB_ALIAS), connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        if not nested_loops:
            cursor.execute("SET LOCAL enable_nestloop = off")
        cursor.execute(sql, params or {})
        rows = cursor.fetchall()
        if not nested_loops:
            cursor.execute("SET LOCAL enable_nestloop TO DEFAULT")
        return rows


def _problems(sql: str, categories: list[str], params: dict | None = None, *,
              nested_loops: bool = False) -> tuple[dict, dict, list[str]]:
    """Counts, display samples and offender ids per category of a query yielding (category, offender, display).

    Aggregated in SQL, so a check costs one query however many offenders there are (see _fetch for
    `nested_loops`).
    """
    rows = _fetch(
        f"""
        SELECT p.category, count(*),
               (array_agg(p.offender ORDER BY p.offender))[1:{OFFENDERS_SHOWN}],
               (array_agg(p.display ORDER BY p.offender))[1:{OFFENDERS_SHOWN}]
        FROM ({sql}) AS p(category, offender, display)
        GROUP BY p.category
        """,
        {"leads": LEADS_TABLE, **(params or {})},
        nested_loops=nested_loops,
    )
    found = {category: (count, offenders, shown) for category, count, offenders, shown in rows}
    counts = {c: found.get(c, (0,))[0] for c in categories}
    samples = {c: found[c][2] for c in categories if c in found}
    offenders: list[str] = []
    for c in categories:
        for pk in found.get(c, (0, [], []))[1]:
            if pk not in offenders and len(offenders) < OFFENDERS_SHOWN:
                offenders.append(pk)
    return counts, samples, offenders


def _result(name: str, counts: dict, samples: dict, offenders: list[str], *, ok_summary: str,
            fail_summary: str, lines: list[str] | None = None, **extra) -> CheckResult:
    total = sum(counts.values())
    return CheckResult(
        name=name, ok=total == 0, summary=ok_summary if total == 0 else fail_summary.format(total=total),
        offenders=offenders,
        details={"counts": counts, "offenders_total": total, "samples": samples, **extra},
        lines=lines if lines is not None else [f"{LABELS.get(c, c)}: {n}" for c, n in counts.items()],
    )


# --- 1. source_pk consistency ------------------------------------------------------------

# Every place a lead is referred to, with the column that must hold its source_pk.
LEAD_REFERENCES = (
    ("queue", "ops.cabinet_kpi_red_recovery_queue.lead_source_pk",
     "SELECT q.lead_source_pk FROM ops.cabinet_kpi_red_recovery_queue q"),
    ("identity_links", "canon.identity_links.source_pk",
     "SELECT il.source_pk FROM canon.identity_links il WHERE il.source_table = %(leads)s"),
    ("identity_matching_jobs", "ops.identity_matching_jobs.source_id",
     "SELECT j.source_id FROM ops.identity_matching_jobs j WHERE j.source_table = %(leads)s"),
    ("identity_unmatched", "canon.identity_unmatched.source_pk",
     "SELECT u.source_pk FROM canon.identity_unmatched u WHERE u.source_table = %(leads)s"),
    ("identity_origin", "canon.identity_origin.origin_source_id",
     "SELECT o.origin_source_id FROM canon.identity_origin o"),
    ("claims", "public.cabinet_milestone_claims.lead_source_pk",
     "SELECT c.lead_source_pk FROM public.cabinet_milestone_claims c"),
)
LABELS.update({f"{ref}:wrong_cast": f"{column} holding a lead's id although it has an external_id (wrong cast)"
               for ref, column, _ in LEAD_REFERENCES})
LABELS.update({f"{ref}:unknown": f"{column} matching no lead" for ref, column, _ in LEAD_REFERENCES})


def source_pk_consistency_verify() -> CheckResult:
    """Every lead reference is COALESCE(external_id::text, id::text) of an existing lead."""
    references = "\n        UNION ALL ".join(f"SELECT '{ref}', v FROM ({sql}) r{i}(v)"
                                               for i, (ref, _, sql) in enumerate(LEAD_REFERENCES))
    sql = f"""
        WITH ref(ref, v) AS (
            {references}
        ), stray AS (
            -- references that name no lead's source_pk
            SELECT DISTINCT r.ref, r.v FROM ref r
            WHERE NOT EXISTS (SELECT 1 FROM public.module_ct_cabinet_leads l WHERE l.source_pk = r.v)
        )
        -- the classic wrong cast: id::text used for a lead whose source_pk is its external_id
        SELECT s.ref || CASE WHEN w.id IS NULL THEN ':unknown' ELSE ':wrong_cast' END,
               s.v,
               CASE WHEN w.id IS NULL THEN s.v
                    ELSE s.v || ' (id of the lead whose source_pk is ' || w.source_pk || ')' END
        FROM stray s
        LEFT JOIN public.module_ct_cabinet_leads w
               ON w.external_id IS NOT NULL
              AND w.id = CASE WHEN s.v ~ '^[0-9]{{1,18}}$' THEN s.v::bigint END
              AND w.id::text = s.v
    """
    categories = [f"{ref}:{kind}" for ref, _, _ in LEAD_REFERENCES for kind in ("wrong_cast", "unknown")]
    counts, samples, offenders = _problems(sql, categories)
    lines = [
        f"{column}: {counts[f'{ref}:wrong_cast']} wrong cast, {counts[f'{ref}:unknown']} matching no lead"
        for ref, column, _ in LEAD_REFERENCES
    ]
    return _result(
        "verify_source_pk_consistency", counts, samples, offenders, lines=lines,
        ok_summary="every source_pk uses COALESCE(external_id::text, id::text)",
        fail_summary="{total} lead references do not use COALESCE(external_id::text, id::text) of an existing lead",
    )


# --- 2. matched leads have left the red backlog ------------------------------------------


def kpi_red_drain_verify(*, n: int = DEFAULT_DRAIN_N) -> CheckResult:
    """0 % of matched queue rows may still be in ops.v_cabinet_kpi_red_backlog (the N newest, and all)."""
    ((recent, recent_leaked, total, leaked, offenders),) = _fetch(
        f"""
        WITH matched AS (
            SELECT q.lead_source_pk,
                   row_number() OVER (ORDER BY q.matched_at DESC NULLS LAST, q.id DESC) AS recency
            FROM ops.cabinet_kpi_red_recovery_queue q
            WHERE q.status = 'matched'
        )
        SELECT count(*) FILTER (WHERE m.recency <= %(n)s),
               count(b.lead_source_pk) FILTER (WHERE m.recency <= %(n)s),
               count(*),
               count(b.lead_source_pk),
               coalesce((array_agg(m.lead_source_pk ORDER BY m.recency)
                         FILTER (WHERE b.lead_source_pk IS NOT NULL))[1:{OFFENDERS_SHOWN}], '{{}}')
        FROM matched m
        LEFT JOIN ops.v_cabinet_kpi_red_backlog b ON b.lead_source_pk = m.lead_source_pk
        """,
        {"n": n},
    )
    rate = 100.0 * recent_leaked / recent if recent else 0.0
    ok = leaked == 0
    summary = ("0% of matched leads are in the backlog" if ok else
               f"{leaked} matched lead(s) still in the backlog ({rate:.2f}% of the last {recent} matched)")
    return CheckResult(
        name="verify_kpi_red_drain", ok=ok, summary=summary, offenders=list(offenders),
        details={
            "n": n, "matched_checked": recent, "leaked": recent_leaked, "error_rate_pct": round(rate, 2),
            "matched_total": total, "leaked_total": leaked, "offenders_total": leaked,
            "counts": {"queue_matched_in_backlog": leaked},
            "samples": {"queue_matched_in_backlog": list(offenders)} if offenders else {},
        },
        lines=[
            f"matched leads checked (last {n}): {recent}",
            f"leads in backlog: {recent_leaked}",
            f"error rate: {rate:.2f}%",
            f"all matched queue rows: {total}, in backlog: {leaked}",
        ],
    )


# --- 3. origins name each person's earliest lead --------------------------------------


def identity_origin_creation_verify() -> CheckResult:
    """Every person with a lead link has an origin, naming the earliest linked lead (created_at, then source_pk)."""
    sql = """
        WITH first_lead AS (
            -- each person's earliest linked lead, as identity.linking.origins_refresh picks it: an independent
            -- copy of identity.domain.EARLIEST_LEAD_SQL on purpose, so the check does not share a bug it checks
            SELECT DISTINCT ON (il.person_key) il.person_key, il.source_pk
            FROM canon.identity_links il
            JOIN public.module_ct_cabinet_leads l ON l.source_pk = il.source_pk
            WHERE il.source_table = %(leads)s
            ORDER BY il.person_key, l.created_at, il.source_pk
        )
        SELECT CASE WHEN o.person_key IS NULL THEN 'person_without_origin' ELSE 'origin_not_earliest' END,
               f.person_key::text,
               CASE WHEN o.person_key IS NULL THEN f.person_key::text
                    ELSE f.person_key::text || ' (origin ' || o.origin_source_id
                         || ', earliest linked lead ' || f.source_pk || ')' END
        FROM first_lead f
        LEFT JOIN canon.identity_origin o ON o.person_key = f.person_key
        WHERE o.origin_source_id IS DISTINCT FROM f.source_pk
    """
    counts, samples, offenders = _problems(sql, ["person_without_origin", "origin_not_earliest"])
    return _result(
        "verify_identity_origin_creation", counts, samples, offenders,
        ok_summary="every person with a lead link has an origin naming its earliest lead",
        fail_summary="{total} persons with a lead link have no origin or the wrong one",
    )


# --- 4. ORIGIN_MISSING = 0 ----------------------------------------------------------------


def origin_missing_check() -> CheckResult:
    """No orphan origin, and every matched lead (queue or jobs table) has a person with an origin."""
    sql = """
        SELECT 'origin_orphan', o.person_key::text,
               o.person_key::text || ' (origin ' || o.origin_source_id || ')'
        FROM canon.identity_origin o
        WHERE NOT EXISTS (
            SELECT 1 FROM canon.identity_links il
            WHERE il.source_table = %(leads)s AND il.source_pk = o.origin_source_id
              AND il.person_key = o.person_key)
        UNION ALL
        SELECT DISTINCT 'matched_without_origin', m.source_pk, m.source_pk
        FROM (
            SELECT q.lead_source_pk, q.matched_person_key FROM ops.cabinet_kpi_red_recovery_queue q
            WHERE q.status = 'matched'
            UNION
            SELECT j.source_id, j.matched_person_key FROM ops.identity_matching_jobs j
            WHERE j.source_table = %(leads)s AND j.status = 'matched'
        ) m(source_pk, person_key)
        -- the lead's person is its link's; the matched row's person only when the link is missing
        LEFT JOIN canon.identity_links il ON il.source_table = %(leads)s AND il.source_pk = m.source_pk
        WHERE NOT EXISTS (
            SELECT 1 FROM canon.identity_origin o WHERE o.person_key = coalesce(il.person_key, m.person_key))
    """
    counts, samples, offenders = _problems(sql, ["origin_orphan", "matched_without_origin"])
    return _result(
        "check_origin_missing", counts, samples, offenders,
        ok_summary="ORIGIN_MISSING = 0", fail_summary="ORIGIN_MISSING = {total}",
    )


# --- 5. links vs origins ------------------------------------------------------------------

# The runbook's own integrity query (../shared/seeds, identity gap runbook), verbatim.
RUNBOOK_MATCHED_NO_LINK = """SELECT COUNT(*) as matched_no_link
FROM ops.identity_matching_jobs j
WHERE j.status = 'matched'
  AND NOT EXISTS (
      SELECT 1
      FROM canon.identity_links il
      WHERE il.source_table = 'module_ct_cabinet_leads'
        AND il.source_pk = j.source_id
  );"""


def identity_links_origins_check() -> CheckResult:
    """Links name registered persons, lead links have origins, matched jobs and queue rows have links,
    canon.drivers_unlinked lists exactly the drivers no link names, and ops.lead_window_14d holds exactly
    the direct computation of each linked lead's person, drivers, trips in its window and claimed milestones."""
    sql = """
        -- the foreign key makes this impossible; counted anyway, as the runbook asks
        SELECT 'link_person_missing', il.source_pk, il.source_table || ':' || il.source_pk
        FROM canon.identity_links il
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_registry r WHERE r.person_key = il.person_key)
        UNION ALL
        SELECT 'lead_link_without_origin', il.source_pk, il.source_pk || ' (person ' || il.person_key || ')'
        FROM canon.identity_links il
        WHERE il.source_table = %(leads)s
          AND NOT EXISTS (SELECT 1 FROM canon.identity_origin o WHERE o.person_key = il.person_key)
        UNION ALL
        -- same predicate as the runbook query (no source_table filter on the jobs row)
        SELECT 'matched_job_without_link', j.source_id, j.source_id
        FROM ops.identity_matching_jobs j
        WHERE j.status = 'matched'
          AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                          WHERE il.source_table = %(leads)s AND il.source_pk = j.source_id)
        UNION ALL
        SELECT 'matched_queue_without_link', q.lead_source_pk, q.lead_source_pk
        FROM ops.cabinet_kpi_red_recovery_queue q
        WHERE q.status = 'matched'
          AND NOT EXISTS (SELECT 1 FROM canon.identity_links il
                          WHERE il.source_table = %(leads)s AND il.source_pk = q.lead_source_pk)
        UNION ALL
        -- canon.drivers_unlinked (trigger-kept; the unlinked-activity view reads it) in step
        SELECT 'unlinked_driver_not_listed', d.driver_id, d.driver_id
        FROM public.drivers d
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links il
                          WHERE il.source_table = %(drivers)s AND il.source_pk = d.driver_id)
          AND NOT EXISTS (SELECT 1 FROM canon.drivers_unlinked du WHERE du.driver_id = d.driver_id)
        UNION ALL
        SELECT 'listed_driver_not_unlinked', du.driver_id, du.driver_id
        FROM canon.drivers_unlinked du
        WHERE EXISTS (SELECT 1 FROM canon.identity_links il
                      WHERE il.source_table = %(drivers)s AND il.source_pk = du.driver_id)
           OR NOT EXISTS (SELECT 1 FROM public.drivers d WHERE d.driver_id = du.driver_id)
    """
    categories = ["link_person_missing", "lead_link_without_origin", "matched_job_without_link",
                  "matched_queue_without_link", "unlinked_driver_not_listed", "listed_driver_not_unlinked"]
    counts, samples, offenders = _problems(sql, categories, {"drivers": DRIVERS_TABLE})
    # ops.lead_window_14d (trigger-kept; the money, limbo and funnel views read it) in step. A query of
    # its own: its direct side calls ops.person_window_trips per linked lead, index lookups that a plan
    # without nested loops turned into a scan of every driver link per lead (hours at a million drivers).
    window_categories = ["lead_window_missing", "lead_window_stray", "lead_window_wrong"]
    window_counts, window_samples, window_offenders = _problems(
        f"SELECT category, lead_source_pk, display FROM ({lead_window.DIFFERENCES_SQL}) lead_window",
        window_categories, nested_loops=True)
    counts.update(window_counts)
    samples.update(window_samples)
    offenders += [pk for pk in window_offenders if pk not in offenders][:max(OFFENDERS_SHOWN - len(offenders), 0)]
    ((matched_no_link,),) = _fetch(RUNBOOK_MATCHED_NO_LINK)
    return _result(
        "check_identity_links_origins", counts, samples, offenders, runbook_matched_no_link=matched_no_link,
        ok_summary="links, origins, matched rows and the tables kept from links agree",
        fail_summary="{total} links, matched rows or kept rows break link/origin integrity",
    )


# --- 6. one consistent migration graph ---------------------------------------------------


def migrations_check() -> CheckResult:
    """One leaf per app, everything applied, and no model change waiting for a migration."""
    connection = connections[DEFAULT_DB_ALIAS]
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    leaves: dict[str, list[str]] = defaultdict(list)
    for app_label, name in loader.graph.leaf_nodes():
        leaves[app_label].append(name)
    problems: dict[str, list[str]] = {
        "multiple_leaf_nodes": [f"{app}: {', '.join(sorted(names))}"
                                for app, names in sorted(leaves.items()) if len(names) > 1],
        "unapplied": [f"{app}.{name}"
                      for app, name in sorted(set(loader.graph.nodes) - set(loader.applied_migrations))],
        "inconsistent_history": [],
        "model_changes": [],
    }
    try:
        loader.check_consistent_history(connection)
    except InconsistentMigrationHistory as exc:
        problems["inconsistent_history"].append(str(exc))
    # makemigrations refuses to run on a graph with conflicts; so does this part of the check.
    if not problems["multiple_leaf_nodes"]:
        # Like makemigrations --check --dry-run: the graph's state against the models' state.
        graph_loader = MigrationLoader(None, ignore_no_migrations=True)
        autodetector = MigrationAutodetector(
            graph_loader.project_state(), ProjectState.from_apps(apps),
            NonInteractiveMigrationQuestioner(specified_apps=set(), dry_run=True),
        )
        for app_label, migrations in sorted(autodetector.changes(graph=graph_loader.graph).items()):
            for migration in migrations:
                problems["model_changes"] += [f"{app_label}: {op.describe()}" for op in migration.operations]
    counts = {category: len(items) for category, items in problems.items()}
    samples = {category: items[:OFFENDERS_SHOWN] for category, items in problems.items() if items}
    offenders = [item for items in problems.values() for item in items][:OFFENDERS_SHOWN]
    own = sorted(f"{app}.{name}" for app, names in leaves.items() if app in PROJECT_APPS for name in names)
    lines = [f"leaf migrations: {', '.join(own)} (+{sum(app not in PROJECT_APPS for app in leaves)} other apps)"]
    lines += [f"{LABELS[c]}: {n}" for c, n in counts.items()]
    return _result(
        "check_migrations", counts, samples, offenders, lines=lines,
        ok_summary="one consistent migration graph, fully applied, no model change without a migration",
        fail_summary="{total} migration problems",
    )


# --- all of them --------------------------------------------------------------------------


class GuardrailsFailed(Exception):
    """Raised inside the job run so it is recorded as failed, with the failing checks' names."""

    def __init__(self, failed: list[str]):
        super().__init__(f"{len(failed)} guardrail(s) failed: {', '.join(failed)}")


def guardrails_run_all(*, n: int = DEFAULT_DRAIN_N, trigger: str = "command", run_id: int | None = None
                       ) -> list[CheckResult]:
    """Run every guardrail as one recorded job run (offender counts per check); failures mark the run failed."""
    results: list[CheckResult] = []
    try:
        with job_run(JOB_NAME, params={"n": n}, trigger=trigger, singleton=False, run_id=run_id) as run:
            results = [
                source_pk_consistency_verify(),
                kpi_red_drain_verify(n=n),
                identity_origin_creation_verify(),
                origin_missing_check(),
                identity_links_origins_check(),
                migrations_check(),
            ]
            failed = [r.name for r in results if not r.ok]
            run.counts = {**{r.name: r.offenders_total for r in results},
                          "checks": len(results), "checks_failed": len(failed)}
            if failed:
                raise GuardrailsFailed(failed)
    except GuardrailsFailed:
        pass
    return results
