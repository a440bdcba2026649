"""Matching quality against the demo generator's ground truth (issue: precision, recall, hard cases).

    .venv/bin/python bench/matching_quality.py                       # 20k drivers / 5k leads, seeds 1 2 3
    .venv/bin/python bench/matching_quality.py --drivers 1000000 --leads 100000 --seeds 7

For each seed: generate a park, import it, refresh the index, match every lead, then compare
the links with ground_truth.csv. A link is correct when the linked person holds a driver record
of the lead's true human. Prints precision, recall, F1 and a confusion table by hard-case type.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_quality")
from bench._common import BENCH_DB, bench_env, manage, reset_database
from bench._truth import evaluate_links, lead_cases, truth_load

TARGET_PRECISION = 0.9995
TARGET_RECALL = 0.99


def run_seed(*, seed: int, drivers: int, leads: int, env: dict, keep: Path | None) -> dict:
    out = Path(keep or tempfile.mkdtemp(prefix=f"ct4-quality-{seed}-"))
    reset_database(env)
    phases = {}
    phases["generate"], _, _ = manage("generate_demo_data", "--out", str(out), "--drivers", str(drivers),
                                      "--leads", str(leads), "--seed", str(seed), env=env)
    import_secs = 0.0
    for kind, name in (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv")):
        secs, _, _ = manage("import_source", kind, str(out / name), env=env, check=False)
        import_secs += secs
    phases["import"] = import_secs
    phases["refresh_index"], rss_refresh, _ = manage("refresh_drivers_index", env=env)
    phases["match"], rss_match, _ = manage("match_leads", env=env)
    return {"out": out, "phases": phases, "rss": max(rss_refresh, rss_match)}


def evaluate(out: Path) -> dict:
    """Compare the database's links and outcomes with the generator's ground truth."""
    from django.db import connection  # noqa: PLC0415 - after the settings module and the bench database are chosen

    truth = truth_load(out)
    with connection.cursor() as cursor:
        cursor.execute("SELECT driver_id, person_key::text FROM canon.drivers_index")
        humans_of_person: dict[str, set] = defaultdict(set)
        for driver_id, person_key in cursor.fetchall():
            humans_of_person[person_key].add(truth.human_of_driver.get(driver_id))
        cursor.execute("SELECT source_pk, person_key::text FROM canon.identity_links "
                       "WHERE source_table = 'module_ct_cabinet_leads'")
        link = dict(cursor.fetchall())
        cursor.execute("SELECT source_pk, reason_code FROM canon.identity_unmatched WHERE status = 'open'")
        reason = dict(cursor.fetchall())
        key_agreed = _true_key_agreement(cursor, truth.rows)
        phone_owner = _phone_owner_persons(cursor)
    scored = evaluate_links(link, truth=truth, humans_of_target=humans_of_person)
    totals = Counter()
    by_case: dict[str, Counter] = defaultdict(Counter)
    recycled_wrong = 0
    for row in truth.rows:
        pk, human = row["lead_source_pk"], row["human_id"] or None
        cases = lead_cases(row)
        linked = link.get(pk)
        outcome = scored["outcome"].get(pk) or reason.get(pk, "unprocessed")
        for case in cases:
            by_case[case][outcome] += 1
        if human:
            if not linked and key_agreed.get(pk) == "exact" and outcome == "NO_CANDIDATES":
                totals["no_candidates_despite_key"] += 1
            if row["has_identifier"] == "1" and key_agreed.get(pk):
                totals["true_reachable"] += 1
                totals["found_reachable"] += outcome == "link_ok"
        if "recycled_phone" in cases and linked and linked in phone_owner.get(pk, ()):
            recycled_wrong += 1
    reachable = totals["found_reachable"] / totals["true_reachable"] if totals["true_reachable"] else 0.0
    return {"precision": scored["precision"], "recall": scored["recall"], "f1": scored["f1"],
            "names_only_recall": scored["names_only_recall"],
            "reachable_recall": reachable, "true_reachable": totals["true_reachable"],
            "links": scored["links"], "wrong_links": scored["wrong"],
            "true_with_identifier": scored["true_with_identifier"], "recycled_phone_links_to_owner": recycled_wrong,
            "no_candidates_despite_key": totals["no_candidates_despite_key"], "by_case": by_case}


def _true_key_agreement(cursor, truth) -> dict[str, str]:
    """For each lead, how it overlaps with its true driver records: 'exact' when a normalized key
    (phone, document, e-mail, plate) is equal, 'shared' when one is within a typo or the birth
    date is equal, absent when nothing but the name could tell."""
    from rapidfuzz.distance import DamerauLevenshtein  # noqa: PLC0415 - only the evaluation needs it

    pairs = [(r["lead_source_pk"], d) for r in truth for d in r["true_driver_ids"].split(";") if d]
    if not pairs:
        return {}
    cursor.execute(
        """
        SELECT p.source_pk,
               canon.norm_phone_fast(c.phone), canon.norm_document(c.document), canon.norm_email(c.email),
               canon.norm_plate(c.plate), c.birth_date,
               di.phone, di.document, di.license_document, di.email, di.plate, di.birth_date
        FROM unnest(%s::text[], %s::text[]) AS p(source_pk, driver_id)
        JOIN public.module_ct_cabinet_leads c ON c.source_pk = p.source_pk
        JOIN canon.drivers_index di ON di.driver_id = p.driver_id
        """,
        [[p for p, _ in pairs], [d for _, d in pairs]],
    )
    overlap: dict[str, str] = {}
    for pk, phone, doc, email, plate, dob, d_phone, d_doc, d_lic, d_email, d_plate, d_dob in cursor.fetchall():
        pairs_of_keys = [(phone, d_phone), (doc, d_doc), (doc, d_lic), (email, d_email), (plate, d_plate)]
        if any(a and a == b for a, b in pairs_of_keys):
            overlap[pk] = "exact"
        elif overlap.get(pk) != "exact" and (
            (dob and dob == d_dob)
            or any(a and b and len(a) == len(b) and DamerauLevenshtein.distance(a, b) <= 1 for a, b in pairs_of_keys)
        ):
            overlap[pk] = "shared"
    return overlap


def _phone_owner_persons(cursor) -> dict[str, set]:
    """For each lead, the persons whose driver records carry the lead's phone today."""
    cursor.execute(
        """
        SELECT c.source_pk, di.person_key::text
        FROM public.module_ct_cabinet_leads c
        JOIN canon.drivers_index di ON di.phone = canon.norm_phone_fast(c.phone)
        """
    )
    owners: dict[str, set] = defaultdict(set)
    for pk, person in cursor.fetchall():
        owners[pk].add(person)
    return owners


def print_report(seed: int, result: dict, run: dict) -> None:
    ok = lambda good: "PASS" if good else "FAIL"  # noqa: E731
    print(f"\n=== seed {seed} ===")
    print("phases: " + "  ".join(f"{k}={v:.1f}s" for k, v in run["phases"].items()) + f"  peak_rss={run['rss']}MB")
    print(f"links={result['links']} wrong={result['wrong_links']}")
    print(f"precision={result['precision']:.5f} [{ok(result['precision'] >= TARGET_PRECISION)} >= {TARGET_PRECISION}]")
    print(f"recall(with identifier)={result['recall']:.5f} of {result['true_with_identifier']} "
          f"[{ok(result['recall'] >= TARGET_RECALL)} >= {TARGET_RECALL}]")
    print(f"recall(shares an identifier with its driver record)={result['reachable_recall']:.5f} "
          f"of {result['true_reachable']} [{ok(result['reachable_recall'] >= TARGET_RECALL)} >= {TARGET_RECALL}]")
    print(f"f1={result['f1']:.5f}")
    if result["names_only_recall"] is not None:
        print(f"recall(names only)={result['names_only_recall']:.4f}")
    print(f"recycled-phone leads linked to the phone's owner: {result['recycled_phone_links_to_owner']} "
          f"[{ok(result['recycled_phone_links_to_owner'] == 0)}]")
    print(f"true matches left NO_CANDIDATES although a key agreed: {result['no_candidates_despite_key']} "
          f"[{ok(result['no_candidates_despite_key'] == 0)}]")
    columns = ["link_ok", "link_wrong", "WEAK_MATCH_ONLY", "CONFLICT_MULTIPLE_CANDIDATES", "NO_CANDIDATES",
               "MISSING_IDENTIFIERS", "ERROR", "unprocessed"]
    short = ["ok", "wrong", "weak", "conflict", "no_cand", "missing", "error", "unproc"]
    print("outcomes by hard case (leads of non-drivers included; not_a_driver rows should never link):")
    print(f"{'case':<16}" + "".join(f"{c:>9}" for c in short))
    for case in sorted(result["by_case"]):
        counts = result["by_case"][case]
        print(f"{case:<16}" + "".join(f"{counts.get(c, 0):>9}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", type=int, default=20000)
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--keep", type=Path, help="keep the generated files in this folder")
    args = parser.parse_args()
    env = bench_env()
    os.environ.update(CT4_DB_NAME=BENCH_DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ct4site.settings")
    import django  # noqa: PLC0415 - after the settings module and the bench database are chosen

    django.setup()
    from django.db import connection  # noqa: PLC0415 - after the settings module and the bench database are chosen

    print(f"matching quality: {args.drivers} drivers, {args.leads} leads, seeds {args.seeds} (database {BENCH_DB})")
    worst = {"precision": 1.0, "recall": 1.0, "reachable_recall": 1.0}
    for seed in args.seeds:
        started = time.monotonic()
        run = run_seed(seed=seed, drivers=args.drivers, leads=args.leads, env=env, keep=args.keep)
        connection.close()
        result = evaluate(run["out"])
        print_report(seed, result, run)
        print(f"(seed took {time.monotonic() - started:.0f}s)")
        worst = {k: min(worst[k], result[k]) for k in worst}
    print(f"\nworst over seeds: precision={worst['precision']:.5f} recall={worst['recall']:.5f} "
          f"recall(shares an identifier)={worst['reachable_recall']:.5f}")


if __name__ == "__main__":
    main()
