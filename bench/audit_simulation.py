"""Audit simulation (issue 13): do the audit's estimates hold the truth? On a generated park with its ground truth.

    CT4_BENCH_DB=ct4_bench_api .venv/bin/python bench/audit_simulation.py --seed 1 --relatives
    .venv/bin/python bench/audit_simulation.py --seed 1 --wrong-links 0.03
    .venv/bin/python bench/audit_simulation.py --seed 2 --drivers 20000 --leads 5000 --half-width 0.05

Generates a park (the demo generator, with ground_truth.csv and drivers_truth.csv), optionally adds
relatives (--relatives: for about 2 % of the drivers some lead truly belongs to, a sibling's driver record
with the same surnames and the same mobile but another given name and document, so that some automatic
links go to the wrong sibling and precision falls below 1; made here, never by a rule in the product),
imports it, refreshes the drivers index and runs recovery (seed + recover, as scheduled); --wrong-links
re-points a share of the automatic links to a random other person (wrong links of a known number, so the
precision estimate is tested below 1 whatever the matcher gets right). Then draws the
audit sample (CT4_AUDIT precision_half_width = --half-width, one run without a cap) and answers every audit
item from the ground truth through the review API (GET /api/v1/review/items?kind=audit, POST
.../decision, as a reviewer user the bench creates): "confirm" when the item's driver records belong to
the lead's true human, else "not_same". audit_report gives the estimates. Printed beside the truth over
the whole population the sample was drawn from:

- precision of automatic links: estimate [low, high] vs the share of right links among all of them;
- missed-link share below the threshold: estimate [low, high] vs the share of true matches among all
  the leads just below the threshold (the below-threshold stratum's population, its best candidate).

PASS when the true value lies inside the interval; exit status 1 on any FAIL. The bench's database is
CT4_BENCH_DB (default ct4_bench_audit), emptied first.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_audit")
from bench._common import BENCH_DB, bench_env, reset_database
from bench._truth import truth_load

RELATIVE_SHARE = 0.02
RELATIVE_GIVEN = ("Wilmer", "Yesenia", "Edwin", "Maribel", "Percy", "Roxana", "Walter", "Yolanda", "Hernán", "Flor")
PAGE_SIZE = 100
REVIEWER = "bench.revisora"


def relatives_add(out: Path, *, seed: int, share: float = RELATIVE_SHARE) -> int:
    """Append a sibling's driver record for `share` of the drivers some lead truly belongs to: same surnames and
    mobile, another given name and document, no e-mail, plate or birth date; a human of their own."""
    truth = truth_load(out)
    true_drivers = sorted({d for row in truth.rows for d in row["true_driver_ids"].split(";") if d})
    rng = random.Random(seed)
    chosen = set(rng.sample(true_drivers, int(len(true_drivers) * share)))
    with open(out / "drivers.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, drivers = reader.fieldnames, list(reader)
    siblings = []
    for n, driver in enumerate(d for d in drivers if d["driver_id"] in chosen):
        given = rng.choice([g for g in RELATIVE_GIVEN if g != driver["first_name"]])
        siblings.append({**driver, "driver_id": f"rel{seed:02d}{n:06d}", "first_name": given, "middle_name": "",
                         "document": f"{rng.randrange(70_000_000, 79_999_999):08d}",
                         "license_number": f"R{rng.randrange(10_000_000, 99_999_999)}",
                         "email": "", "plate": "", "birth_date": ""})
    with open(out / "drivers.csv", "a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=columns).writerows(siblings)
    with open(out / "drivers_truth.csv", "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([(s["driver_id"], f"REL{s['driver_id']}") for s in siblings])
    return len(siblings)


def django_setup() -> None:
    """This process on the bench's database (bench_env created it), with the API's test host allowed."""
    import django  # noqa: PLC0415 - after CT4_DB_NAME names the bench's database

    os.environ["CT4_DB_NAME"] = BENCH_DB
    os.environ.setdefault("CT4_LOG_LEVEL", "WARNING")
    # The bench draws its one sample itself, with its own half-width, after the whole recovery.
    os.environ["CT4_AUDIT_SAMPLE_AFTER_RUNS"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ct4site.settings")
    django.setup()
    from django.conf import settings  # noqa: PLC0415 - after setup

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]


def park_load(out: Path) -> None:
    from identity.importing import source_import  # noqa: PLC0415 - Django is set up in main()
    from identity.index import drivers_index_refresh  # noqa: PLC0415
    from recovery.jobs.recover import queue_recover  # noqa: PLC0415
    from recovery.jobs.seed import queue_seed  # noqa: PLC0415

    for kind, name in (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv"), ("trips", "trips.csv"),
                       ("claims", "claims.csv")):
        source_import(kind=kind, path=out / name)
    drivers_index_refresh()
    queue_seed()
    queue_recover(limit=None)


def links_miswire(share: float, *, seed: int) -> int:
    """Re-point `share` of the automatic lead links, drawn at random, to another person drawn at random:
    wrong links of a known number, as a faulty engine would make them, so that the audit's precision
    estimate is tested where precision is below 1 (the audit sees only the lead and the linked person)."""
    from django.db import connection  # noqa: PLC0415 - Django is set up in main()

    from identity.models import LEADS_TABLE  # noqa: PLC0415

    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH auto AS (
                SELECT id FROM canon.identity_links WHERE source_table = %(leads)s AND decided_by = 'system'),
            pick AS (
                SELECT id, row_number() OVER (ORDER BY md5(id::text || %(seed)s)) AS n FROM auto
                ORDER BY md5(id::text || %(seed)s) LIMIT (SELECT ceil(%(share)s * count(*))::int FROM auto)),
            other AS (
                SELECT person_key, row_number() OVER (ORDER BY md5(person_key::text || %(seed)s)) AS n
                FROM (SELECT DISTINCT person_key FROM canon.drivers_index) p
                ORDER BY md5(person_key::text || %(seed)s) LIMIT (SELECT count(*) FROM pick))
            UPDATE canon.identity_links l SET person_key = other.person_key
            FROM pick JOIN other USING (n)
            WHERE l.id = pick.id AND l.person_key <> other.person_key
            """,
            {"seed": str(seed), "leads": LEADS_TABLE, "share": share},
        )
        return cursor.rowcount


def truth_of_population(truth) -> dict:
    """What the sample is drawn from, judged by the ground truth: every automatic lead link, and every lead
    just below the threshold with its best candidate (recovery.review.audit's own population query)."""
    from django.db import connection  # noqa: PLC0415 - Django is set up in main()

    from identity.matching import Thresholds  # noqa: PLC0415
    from identity.models import LEADS_TABLE  # noqa: PLC0415
    from recovery.models import AuditKind  # noqa: PLC0415
    from recovery.review.audit import BELOW_THRESHOLD_BITS, BELOW_THRESHOLD_REASONS, _population_sql  # noqa: PLC0415

    human_of_lead = {row["lead_source_pk"]: row["human_id"] or None for row in truth.rows}
    humans_of_person: dict[str, set] = defaultdict(set)
    params = {"leads": LEADS_TABLE, "link": AuditKind.LINK.value, "below": AuditKind.BELOW_THRESHOLD.value,
              "reasons": list(BELOW_THRESHOLD_REASONS), "link_bits": Thresholds.from_settings().link_bits,
              "below_bits": BELOW_THRESHOLD_BITS}
    with connection.cursor() as cursor:
        cursor.execute("SELECT driver_id, person_key::text FROM canon.drivers_index")
        for driver_id, person_key in cursor.fetchall():
            humans_of_person[person_key].add(truth.human_of_driver.get(driver_id))
        cursor.execute(f"SELECT source_pk, person_key::text, kind FROM ({_population_sql(False)}) p", params)
        population = cursor.fetchall()
    right = defaultdict(lambda: [0, 0])
    for source_pk, person_key, kind in population:
        human = human_of_lead.get(source_pk)
        right[kind][0] += bool(human) and human in humans_of_person[person_key]
        right[kind][1] += 1
    return {kind: (ok / total, ok, total) for kind, (ok, total) in right.items()}


def audit_answer_all(truth) -> tuple[int, dict]:
    """Answer every open audit item through the review API, from the ground truth, as a reviewer would
    with a perfect memory: the item shows the lead and the driver records, values only."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415 - Django is set up in main()
    from django.contrib.auth.models import Group  # noqa: PLC0415
    from rest_framework.test import APIClient  # noqa: PLC0415

    from recovery.review.rules import REVIEWER_GROUP  # noqa: PLC0415

    user, _ = get_user_model().objects.get_or_create(username=REVIEWER, defaults={"is_staff": True})
    user.groups.add(Group.objects.get(name=REVIEWER_GROUP))
    client = APIClient()
    client.force_login(user)
    human_of_lead = {row["lead_source_pk"]: row["human_id"] or None for row in truth.rows}
    answered, statuses = 0, defaultdict(int)
    while True:
        page = client.get("/api/v1/review/items", {"kind": "audit", "page_size": PAGE_SIZE})
        if page.status_code != 200:
            raise SystemExit(f"GET review items answered {page.status_code}: {page.content[:300]!r}")
        items = page.json()["results"]
        if not items:
            return answered, statuses
        for item in items:
            human = human_of_lead.get(item["source_pk"])
            same = bool(human) and any(truth.human_of_driver.get(d["driver_id"]) == human for d in item["drivers"])
            response = client.post(f"/api/v1/review/items/{item['source_pk']}/decision",
                                   {"action": "confirm" if same else "not_same", "note": "bench: ground truth"},
                                   format="json")
            if response.status_code != 200:
                raise SystemExit(f"decision answered {response.status_code}: {response.content[:300]!r}")
            statuses[f"{item['kind']}:{'confirm' if same else 'not_same'}"] += 1
            answered += 1


def figure(label: str, estimate, low, high, true: float) -> bool:
    if estimate is None:
        print(f"{label:<32} no verdicts                         true {true:.4f}  [FAIL]")
        return False
    ok = low <= true <= high
    print(f"{label:<32} est {estimate:.4f} [{low:.4f}, {high:.4f}]  true {true:.4f}  [{'PASS' if ok else 'FAIL'}]")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drivers", type=int, default=100_000)
    parser.add_argument("--leads", type=int, default=25_000)
    parser.add_argument("--half-width", type=float, default=0.1,
                        help="CT4_AUDIT precision_half_width: the sample each stratum asks for (default 0.1)")
    parser.add_argument("--relatives", action="store_true",
                        help=f"add a sibling's driver record for {RELATIVE_SHARE:.0%} of the true drivers")
    parser.add_argument("--wrong-links", type=float, default=0.0, metavar="SHARE",
                        help="re-point this share of the automatic links to a random other person after recovery "
                             "(known wrong links: the precision estimate tested below 1; e.g. 0.03)")
    parser.add_argument("--data", type=Path, help="write the generated files here (kept)")
    args = parser.parse_args()
    env = bench_env()
    print(f"audit simulation: seed {args.seed}, {args.drivers} drivers, {args.leads} leads, half-width "
          f"{args.half_width}, relatives {'on' if args.relatives else 'off'} (database {BENCH_DB})")
    started = time.monotonic()
    reset_database(env)
    django_setup()
    from django.conf import settings  # noqa: PLC0415 - after django_setup
    from django.db import connection  # noqa: PLC0415

    from identity.domain import lima_today  # noqa: PLC0415
    from recovery.demo.generator import demo_data_generate  # noqa: PLC0415
    from recovery.review.audit import audit_sample  # noqa: PLC0415
    from recovery.review.quality import ALL_MONTHS, audit_report  # noqa: PLC0415

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE ops.audit_items, canon.identity_link_history RESTART IDENTITY CASCADE")
    out = args.data or Path(tempfile.mkdtemp(prefix=f"ct4-audit-{args.seed}-"))
    out.mkdir(parents=True, exist_ok=True)
    demo_data_generate(out_dir=out, end_date=lima_today(), drivers=args.drivers, leads=args.leads, seed=args.seed)
    siblings = relatives_add(out, seed=args.seed) if args.relatives else 0
    truth = truth_load(out)
    park_load(out)
    print(f"park generated, imported and recovered in {time.monotonic() - started:.0f}s ({siblings} relatives)")
    if args.wrong_links:
        print(f"{links_miswire(args.wrong_links, seed=args.seed)} automatic links re-pointed to a random other person")

    true = truth_of_population(truth)
    link_true, link_ok, links = true.get("link", (1.0, 0, 0))
    below_true, below_ok, below = true.get("below_threshold", (0.0, 0, 0))
    print(f"population: {links} automatic links ({links - link_ok} wrong), {below} leads just below the threshold "
          f"({below_ok} true matches)")

    settings.CT4_AUDIT = {**getattr(settings, "CT4_AUDIT", {}), "precision_half_width": args.half_width,
                          "max_per_run": links + below}
    sample = audit_sample(seed=f"bench-{args.seed}", trigger="command")
    answering = time.monotonic()
    answered, statuses = audit_answer_all(truth)
    print(f"audit sample: {sample.drawn} items in {len(sample.strata)} strata; {answered} answered through the "
          f"API in {time.monotonic() - answering:.0f}s ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})")

    period = next(p for p in audit_report()["periods"] if p["month"] == ALL_MONTHS)
    overall, below_fig = period["overall"], period["below_threshold"]
    ok = figure("precision of automatic links", overall["precision"], overall["precision_low"],
                overall["precision_high"], link_true)
    ok &= figure("missed-link share below threshold", below_fig["true_match_share"], below_fig["share_low"],
                 below_fig["share_high"], below_true)
    print(f"total {time.monotonic() - started:.0f}s")
    if args.data is None and "CT4_BENCH_KEEP" not in os.environ:
        for path in out.iterdir():
            path.unlink()
        out.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
