"""Matching speed at scale: full index refresh plus matching every lead, and single-lead latency.

    .venv/bin/python bench/matching_speed.py                      # 1,000,000 drivers, 100,000 leads
    .venv/bin/python bench/matching_speed.py --drivers 100000 --leads 10000 --workers 2

Generates and imports a park (not timed), then times: `refresh_drivers_index --full` on an
empty index, the single-lead path (one lead resolved and written at a time, p50/p95/p99 over
--single leads), and `match_leads` over every other lead. Peak RSS is each process's own.
Targets: refresh + matching under 20 s, peak RSS under 1.5 GB, single-lead p95 under 50 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_speed")
from bench._common import BENCH_DB, bench_env, manage, reset_database  # noqa: E402

SINGLE_LEAD_SCRIPT = """
import json, random, time
from identity.resolution import MatchContext, leads_resolve, unlinked_leads
pks = unlinked_leads()
random.Random(7).shuffle(pks)
context = MatchContext.load()
timings = []
for pk in pks[:{n}]:
    started = time.perf_counter()
    leads_resolve(source_pks=[pk], context=context)
    timings.append((time.perf_counter() - started) * 1000)
print(json.dumps(timings))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--single", type=int, default=300, help="leads timed one by one")
    parser.add_argument("--workers", type=int, default=1, help="match_leads worker processes")
    parser.add_argument("--data", type=Path, help="reuse (or keep) generated files in this folder")
    args = parser.parse_args()
    env = bench_env()
    out = args.data or Path(tempfile.mkdtemp(prefix="ct4-speed-"))
    print(f"matching speed: {args.drivers} drivers, {args.leads} leads (database {BENCH_DB}, files {out})")
    reset_database(env)
    if not (out / "drivers.csv").exists():
        secs, _, _ = manage("generate_demo_data", "--out", str(out), "--drivers", str(args.drivers),
                            "--leads", str(args.leads), "--seed", str(args.seed), env=env)
        print(f"generate           {secs:7.1f}s (not counted)")
    for kind, name in (("drivers", "drivers.csv"), ("cabinet_leads", "cabinet_leads.csv")):
        secs, _, _ = manage("import_source", kind, str(out / name), env=env, check=False)
        print(f"import {kind:<12}{secs:7.1f}s (not counted)")
    refresh, rss_refresh, _ = manage("refresh_drivers_index", "--full", env=env)
    print(f"refresh (full)     {refresh:7.1f}s  peak_rss={rss_refresh}MB")
    _, _, single_out = manage("shell", "-c", SINGLE_LEAD_SCRIPT.replace("{n}", str(args.single)), env=env)
    import json  # noqa: PLC0415

    timings = sorted(json.loads(single_out.strip().splitlines()[-1]))
    if timings:
        p = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))]  # noqa: E731
        print(f"single lead        p50={p(0.50):.1f}ms p95={p(0.95):.1f}ms p99={p(0.99):.1f}ms "
              f"mean={statistics.mean(timings):.1f}ms over {len(timings)} leads "
              f"[{'PASS' if p(0.95) < 50 else 'FAIL'} p95 < 50ms]")
    match_args = ["match_leads"] + (["--workers", str(args.workers)] if args.workers > 1 else [])
    match, rss_match, match_out = manage(*match_args, env=env)
    print(f"match_leads        {match:7.1f}s  peak_rss={rss_match}MB  ({match_out.strip().splitlines()[-1][:160]})")
    total = refresh + match
    rss = max(rss_refresh, rss_match)
    print(f"TOTAL refresh+match {total:6.1f}s [{'PASS' if total < 20 else 'FAIL'} < 20s]  "
          f"peak_rss={rss}MB [{'PASS' if rss < 1536 else 'FAIL'} < 1536MB]")
    if "CT4_BENCH_KEEP" not in os.environ and args.data is None:
        for path in out.iterdir():
            path.unlink()
        out.rmdir()


if __name__ == "__main__":
    main()
