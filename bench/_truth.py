"""Scoring links against the generator's ground truth, shared by every benchmark that links leads.

A data folder holds ground_truth.csv (one row per lead: lead_source_pk, human_id, true_driver_ids,
case_types, has_identifier) and drivers_truth.csv (driver_id, human_id), as written by
`generate_demo_data` and by bench/febrl.py. A link from a lead to a target (a driver record, or a
person holding driver records) is right when the target holds a driver record of the lead's true
human. Precision is over every link made; recall is over the leads whose human has driver records
and who show an identifier of their own (has_identifier=1).
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Truth:
    rows: list[dict[str, str]]  # ground_truth.csv, in lead order
    human_of_driver: dict[str, str]  # drivers_truth.csv


def truth_load(data_dir: str | Path) -> Truth:
    data_dir = Path(data_dir)
    with open(data_dir / "drivers_truth.csv", newline="", encoding="utf-8") as handle:
        human_of_driver = {row["driver_id"]: row["human_id"] for row in csv.DictReader(handle)}
    with open(data_dir / "ground_truth.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return Truth(rows=rows, human_of_driver=human_of_driver)


def lead_cases(row: dict[str, str]) -> list[str]:
    """The hard-case tags of a ground-truth row ("clean" when it has none)."""
    return [case for case in row["case_types"].split(";") if case] or ["clean"]


def evaluate_links(links: dict[str, str], data_dir: str | Path | None = None, *, truth: Truth | None = None,
                   humans_of_target: dict[str, set] | None = None) -> dict:
    """Precision and recall of `links` (lead source_pk -> driver_id) against the ground truth.

    `humans_of_target` maps each link target to the humans it stands for; by default the targets
    are driver records (drivers_truth.csv). Leads missing from ground_truth.csv are not counted.
    Returns precision, recall (has_identifier=1), f1, names_only_recall (None when there are no
    such leads), counts, `outcome` (source_pk -> "link_ok" | "link_wrong" for each linked lead)
    and `by_case` (case tag -> Counter of link_ok, link_wrong, unlinked).
    """
    if truth is None:
        if data_dir is None:
            raise ValueError("evaluate_links needs data_dir or truth")
        truth = truth_load(data_dir)
    if humans_of_target is None:
        humans_of_target = defaultdict(set)
        for driver_id, human in truth.human_of_driver.items():
            humans_of_target[driver_id].add(human)
    totals: Counter = Counter()
    outcome: dict[str, str] = {}
    by_case: dict[str, Counter] = defaultdict(Counter)
    for row in truth.rows:
        pk, human = row["lead_source_pk"], row["human_id"] or None
        linked = links.get(pk)
        if linked:
            outcome[pk] = "link_ok" if human and human in humans_of_target.get(linked, ()) else "link_wrong"
        for case in lead_cases(row):
            by_case[case][outcome.get(pk, "unlinked")] += 1
        totals["links"] += bool(linked)
        totals["links_ok"] += outcome.get(pk) == "link_ok"
        if human:
            bucket = "ident" if row["has_identifier"] == "1" else "names_only"
            totals[f"true_{bucket}"] += 1
            totals[f"found_{bucket}"] += outcome.get(pk) == "link_ok"
    precision = totals["links_ok"] / totals["links"] if totals["links"] else 1.0
    recall = totals["found_ident"] / totals["true_ident"] if totals["true_ident"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    names_only = totals["found_names_only"] / totals["true_names_only"] if totals["true_names_only"] else None
    return {"precision": precision, "recall": recall, "f1": f1, "names_only_recall": names_only,
            "links": totals["links"], "links_ok": totals["links_ok"], "wrong": totals["links"] - totals["links_ok"],
            "true_with_identifier": totals["true_ident"], "found_with_identifier": totals["found_ident"],
            "true_names_only": totals["true_names_only"], "leads": len(truth.rows),
            "outcome": outcome, "by_case": by_case}
