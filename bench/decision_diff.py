"""Decisions of this engine against an earlier revision's, lead by lead, on the same database.

    .venv/bin/python bench/decision_diff.py --data DIR [--old-ref 0b4df08]

DIR holds a generated park (generate_demo_data) with its ground truth. The park is imported
into a bench database and indexed with this checkout; then this checkout and the old revision
(checked out with `git worktree` into a temporary folder, run with the same venv) each decide
every lead without writing anything. Prints how many leads changed outcome, by pair of outcomes
and by hard-case type, and whether each change made a link right or wrong per the ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_diff")
from bench._common import PY, ROOT, bench_env, manage, reset_database, sql_rows
from bench._truth import lead_cases, truth_load

# Both revisions expose leads_decide(list[LeadKeys], MatchContext) -> {source_pk: Decision} and
# leads_load_keys; each prints {source_pk: [outcome, person_key, rule]} for every lead. A change of rule
# alone (v5 names a link's corroboration path) is not a changed decision: it is counted apart.
DECIDE = """
import json, sys
from django.db import connection
from identity.resolution import MatchContext, leads_decide, leads_load_keys
with connection.cursor() as c:
    c.execute("SELECT source_pk FROM public.module_ct_cabinet_leads ORDER BY source_pk")
    pks = [r[0] for r in c.fetchall()]
context = MatchContext.load()
out = {}
for start in range(0, len(pks), 1000):
    leads = leads_load_keys(pks[start:start + 1000])
    for pk, d in leads_decide(leads, context).items():
        out[pk] = [str(d.outcome), d.person_key, d.rule]
sys.stdout.write("\\n" + json.dumps(out))
"""


def decide(cwd: Path, env: dict) -> dict:
    proc = subprocess.run([PY, "manage.py", "shell", "-c", DECIDE], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"deciding in {cwd} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a generated park with ground truth")
    parser.add_argument("--old-ref", default="0b4df08", help="the revision to compare with (default: engine v1)")
    parser.add_argument("--list", action="store_true",
                        help="also print each changed lead (source_pk, tags, old -> new) to look at with explain_lead")
    args = parser.parse_args()
    env = bench_env()
    reset_database(env)
    for kind, name in (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv")):
        manage("import_source", kind, str(args.data / name), env=env, check=False)
    manage("refresh_drivers_index", env=env)
    new = decide(ROOT, env)
    with tempfile.TemporaryDirectory(prefix="ct4-old-") as tmp:
        old_tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old_ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            old = decide(old_tree, env)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    truth = truth_load(args.data)
    rows = {r["lead_source_pk"]: r for r in truth.rows}
    persons = _persons_of_drivers(env)
    changed = Counter()
    listed = []
    by_case = Counter()
    verdicts = Counter()
    renamed = Counter()
    for pk in sorted(set(new) | set(old)):
        a, b = old.get(pk, ["-", None, None]), new.get(pk, ["-", None, None])
        if a[:2] == b[:2]:
            if a[0] == "link":
                renamed[(a[2], b[2])] += 1
            continue
        changed[(a[0], b[0])] += 1
        row = rows.get(pk)
        listed.append(f"  {pk:<20} {';'.join(lead_cases(row)) if row else '?':<40} {a[0]} -> {b[0]}")
        for case in lead_cases(row) if row else ["?"]:
            by_case[(case, a[0], b[0])] += 1
        if row:
            right = {persons.get(d) for d in row["true_driver_ids"].split(";") if d}
            for side, (outcome, person, _rule) in (("old", a), ("new", b)):
                if outcome == "link":
                    verdicts[(side, "right" if person in right else "wrong")] += 1
    print(f"leads: {len(new)} (new) / {len(old)} (old); changed outcome or person: {sum(changed.values())}")
    for (a, b), n in changed.most_common():
        print(f"  {a:<30} -> {b:<30} {n:>6}")
    print("by hard-case type (a lead counts under each of its tags):")
    for (case, a, b), n in sorted(by_case.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {case:<16} {a:<30} -> {b:<30} {n:>6}")
    print("links among the changed leads:", dict(verdicts))
    if args.list:
        print("changed leads (manage.py explain_lead SOURCE_PK on database " + env["CT4_DB_NAME"] + "):")
        print("\n".join(listed))
    print("unchanged links by rule (old rule -> new rule):")
    for (a, b), n in renamed.most_common():
        print(f"  {a or '-':<30} -> {b or '-':<30} {n:>6}")


def _persons_of_drivers(env: dict) -> dict:
    return dict(sql_rows("SELECT driver_id, person_key::text FROM canon.drivers_index", env))


if __name__ == "__main__":
    main()
