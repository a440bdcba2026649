"""Resolving leads to persons: load and normalize, fetch candidates, decide, write through linking.

`leads_resolve` handles one batch in one transaction; `leads_match` walks every unlinked lead
in batches (the recovery jobs call `leads_resolve` for their own batches).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field

from django.db import connection, transaction

from identity import linking
from identity.candidates import candidates_fetch, frequencies_load, name_blocks_for
from identity.matching import (
    RULE_VERSION,
    Decision,
    Frequencies,
    LeadKeys,
    Thresholds,
    lead_decide,
)
from identity.models import LEADS_TABLE, ReasonCode
from identity.normalize import (
    name_tokens,
    normalize_document,
    normalize_email,
    normalize_phone,
    normalize_plate,
)
from identity.runs import LINK_TABLES, job_run, progress_bar, tables_analyze

DEFAULT_BATCH = 1000
SETTLED_BY_KEYS = ("link", ReasonCode.CONFLICT_MULTIPLE_CANDIDATES)


def leads_load_keys(source_pks: list[str]) -> list[LeadKeys]:
    """The leads' normalized keys, in the order asked (unknown source_pks are left out)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT source_pk, phone, document, email, plate, birth_date, first_name, middle_name, last_name,
                   park_id, lead_date
            FROM public.module_ct_cabinet_leads WHERE source_pk = ANY(%s)
            """,
            [source_pks],
        )
        rows = {row[0]: row for row in cursor.fetchall()}
    return [lead_keys(*rows[pk]) for pk in source_pks if pk in rows]


def lead_keys(source_pk, phone, document, email, plate, birth_date, first_name, middle_name, last_name,
              park_id=None, lead_date=None) -> LeadKeys:
    return LeadKeys(
        source_pk=source_pk,
        phone=normalize_phone(phone),
        document=normalize_document(document),
        email=normalize_email(email),
        plate=normalize_plate(plate),
        birth_date=birth_date,
        name_tokens=tuple(name_tokens(first_name, middle_name, last_name)),
        park_id=park_id or None,
        lead_date=lead_date,
    )


@dataclass
class MatchContext:
    """What every batch of a run shares: the data's frequencies and the thresholds."""

    freq: Frequencies
    thresholds: Thresholds

    @classmethod
    def load(cls) -> MatchContext:
        return cls(freq=frequencies_load(), thresholds=Thresholds.from_settings())


def leads_decide(leads: list[LeadKeys], context: MatchContext) -> dict[str, Decision]:
    """Decisions for a batch: keys first; the leads keys did not settle get name blocks too."""
    rejected = linking.rejected_persons(source_pks=[lead.source_pk for lead in leads])
    decisions = _decide_batch(leads, context, rejected, name_blocks=None)
    unsettled = [lead for lead in leads if decisions[lead.source_pk].outcome not in SETTLED_BY_KEYS]
    blocks = {lead.source_pk: name_blocks_for(lead, context.freq) for lead in unsettled}
    retry = [lead for lead in unsettled if blocks[lead.source_pk]]
    if retry:
        decisions.update(_decide_batch(retry, context, rejected, name_blocks=blocks))
    return decisions


def _decide_batch(leads, context: MatchContext, rejected, *, name_blocks) -> dict[str, Decision]:
    fetched = candidates_fetch(leads, name_blocks=name_blocks)
    freq = dataclasses.replace(context.freq, keys=fetched.key_counts)
    return {
        lead.source_pk: lead_decide(
            lead, fetched.by_lead[lead.source_pk], freq, context.thresholds, rejected.get(lead.source_pk, frozenset())
        )
        for lead in leads
    }


@dataclass
class BatchOutcome:
    decisions: dict[str, Decision] = field(default_factory=dict)
    linked: list[str] = field(default_factory=list)
    already_linked: list[str] = field(default_factory=list)

    def counts(self) -> Counter:
        counts = Counter(d.outcome if not d.is_link else "link" for d in self.decisions.values())
        return Counter({"processed": len(self.decisions), "linked": len(self.linked),
                        "already_linked": len(self.already_linked),
                        **{str(k).lower(): v for k, v in counts.items() if k != "link"}})


def leads_resolve(*, source_pks: list[str], context: MatchContext | None = None, write: bool = True) -> BatchOutcome:
    """Decide a batch of leads and write the outcomes (links + origins, or unmatched rows) atomically."""
    context = context or MatchContext.load()
    # A lead linked meanwhile (by a reviewer, another job) is not decided again.
    leads = leads_load_keys(unlinked_leads(source_pks=source_pks))
    outcome = BatchOutcome(decisions=leads_decide(leads, context))
    if not write:
        return outcome
    with transaction.atomic():
        links = [
            linking.LeadLink(
                source_pk=d.source_pk, person_key=d.person_key, match_rule=d.rule, match_score=d.score,
                confidence_level=d.confidence_level, evidence=d.evidence(context.thresholds), rule_version=RULE_VERSION,
            )
            for d in outcome.decisions.values()
            if d.is_link
        ]
        written = linking.leads_link(links=links)
        outcome.linked, outcome.already_linked = written.linked, written.already_linked
        linking.leads_record_unmatched(
            outcomes=[
                linking.LeadUnmatched(d.source_pk, d.outcome, d.evidence(context.thresholds))
                for d in outcome.decisions.values()
                if not d.is_link
            ]
        )
    return outcome


def unlinked_leads(
    *, limit: int | None = None, source_pks: list[str] | None = None, shard: tuple[int, int] | None = None
) -> list[str]:
    """Leads without a link, newest first; `shard=(i, n)` keeps the i-th of n disjoint slices."""
    params: list = [LEADS_TABLE]
    where = ""
    if source_pks:
        where = "AND c.source_pk = ANY(%s)"
        params.append(source_pks)
    if shard:
        where += " AND mod(abs(hashtext(c.source_pk)::bigint), %s) = %s"
        params += [shard[1], shard[0]]
    sql = f"""
        SELECT c.source_pk FROM public.module_ct_cabinet_leads c
        WHERE NOT EXISTS (SELECT 1 FROM canon.identity_links l WHERE l.source_table = %s AND l.source_pk = c.source_pk)
        {where}
        ORDER BY c.created_at DESC, c.source_pk
    """
    if limit:
        sql += " LIMIT %s"
        params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def leads_match(
    *, limit: int | None = None, source_pks: list[str] | None = None, batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False, progress: bool | None = None, shard: tuple[int, int] | None = None,
) -> Counter:
    """Match every unlinked lead (or the ones named), batch by batch, as a recorded job run.

    With `shard=(i, n)` only the i-th of n disjoint slices of the leads: n processes, each with its
    own shard, match in parallel without ever deciding the same lead."""
    started = time.monotonic()
    totals: Counter = Counter()
    name = "match_leads" if shard is None else f"match_leads[{shard[0]}/{shard[1]}]"
    params = {"limit": limit, "dry_run": dry_run, "named": bool(source_pks), "shard": shard}
    with job_run(name, params=params) as run:
        todo = unlinked_leads(limit=limit, source_pks=source_pks, shard=shard)
        context = MatchContext.load()
        with progress_bar(len(todo), "matching", progress) as bar:
            for batch_no, start in enumerate(range(0, len(todo), batch_size), start=1):
                batch = todo[start:start + batch_size]
                counts = leads_resolve(source_pks=batch, context=context, write=not dry_run).counts()
                totals.update(counts)
                run.counts = dict(totals)
                run.log_batch(batch_no, **counts)
                bar.update(len(batch))
        if totals["linked"] and not dry_run:
            tables_analyze(*LINK_TABLES)
        totals["seconds"] = round(time.monotonic() - started, 2)
        run.counts = dict(totals)
    return totals


@dataclass
class Explanation:
    lead: LeadKeys
    decision: Decision
    records: dict[str, list]  # person_key -> its DriverRecords
    thresholds: Thresholds


def lead_explain(source_pk: str) -> Explanation | None:
    """Everything behind one lead's decision, written nowhere (for explain_lead and review)."""
    leads = leads_load_keys([source_pk])
    if not leads:
        return None
    context = MatchContext.load()
    lead = leads[0]
    decision = leads_decide([lead], context)[source_pk]
    blocks = {source_pk: name_blocks_for(lead, context.freq)}
    fetched = candidates_fetch([lead], name_blocks=blocks)
    records = {c.person_key: list(c.records) for c in fetched.by_lead[source_pk]}
    return Explanation(lead=lead, decision=decision, records=records, thresholds=context.thresholds)


def leads_match_parallel(*, workers: int, limit: int | None = None, batch_size: int = DEFAULT_BATCH,
                         dry_run: bool = False) -> Counter:
    """Run `workers` match_leads processes, one shard each, and add up what they did."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from django.conf import settings  # noqa: PLC0415

    share = None if limit is None else -(-limit // workers)
    commands = []
    for i in range(workers):
        command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "match_leads", "--json",
                   "--shard", f"{i}/{workers}", "--batch-size", str(batch_size)]
        command += ["--limit", str(share)] if share else []
        command += ["--dry-run"] if dry_run else []
        commands.append(command)
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
    totals: Counter = Counter()
    failed = []
    for i, proc in enumerate(procs):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"shard {i}/{workers} exited {proc.returncode}")
            continue
        counts = json.loads(out.strip().splitlines()[-1])
        counts.pop("seconds", None)
        totals.update(counts)
    if failed:
        raise RuntimeError("; ".join(failed))
    return totals
