"""Matching speed at scale, ours and Splink 5's on the same CSV files in one run.

    .venv/bin/python bench/matching_speed.py                                  # 1,000,000 drivers, 100,000 leads
    .venv/bin/python bench/matching_speed.py --data /tmp/bench1m --splink same  # reuse a generated park
    .venv/bin/python bench/matching_speed.py --drivers 100000 --leads 10000 --splink none

Generates (or reuses) a park, imports it (not timed) holding back the last --later leads, then times:
1. `match_leads --refresh` on an empty index: the first build of the drivers index (phase by phase)
   and the matching of every imported lead, decided while the build writes: the figure the target
   is about (under 20 s, and at most half of Splink's); `--sequential` times `refresh_drivers_index
   --full` and `match_leads` as two commands instead;
2. --later more leads arriving on that indexed million: import (not timed), `refresh_drivers_index`
   + `match_leads` (target: under 2 s): as two commands (each with its own process start), then
   --later more inside one running process, as a django-q2 worker runs its scheduled jobs (the
   target's verdict is on that one: a worker starts once, not per job), and --later more again in
   that process, its next job (with the index it kept, CT4_INDEX_KEEP, when its first job read it);
3. the single-lead path: one lead resolved and written at a time (p50/p95/p99 over --single leads), in a
   free process and again on one CPU (`taskset -c 0`), as a web worker runs it for the review screens
   (ct4site/deploy/gunicorn.conf.py), each on its own half of the unlinked leads;
4. Splink 5 end to end (load, clean, train, predict, best link) on the same drivers.csv and
   cabinet_leads.csv, in its own process (bench/splink_baseline.py; needs `make bench-setup`), with
   precision and recall beside ours (bench/_truth.py). Its EM passes train on narrow name blocks by default
   (--splink-training narrow): as good a model as the wider blocks of sessions 4-22, in about half Splink's
   end-to-end time at 1M, so the ratio is against a Splink an experienced user would run.
Peak RSS is each process's own. The machine's load average is printed with the figures: on a
shared 2-core machine, rerun before drawing fine conclusions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CT4_BENCH_DB", "ct4_bench_speed")
from bench._common import BENCH_DB, PY, ROOT, bench_env, manage, reset_database, sql_rows
from bench._truth import evaluate_links, truth_load

SINGLE_LEAD_SCRIPT = """
import hashlib, json, random, time
from identity.resolution import MatchContext, leads_resolve, unlinked_leads
# Two disjoint halves of the unlinked leads (by a hash of the key): one per variant, each lead seen once.
pks = [pk for pk in unlinked_leads() if (hashlib.md5(pk.encode()).digest()[0] < 128) == ({half} == 0)]
random.Random(7).shuffle(pks)
context = MatchContext.load()
timings = []
for pk in pks[:{n}]:
    started = time.perf_counter()
    leads_resolve(source_pks=[pk], context=context)
    timings.append((time.perf_counter() - started) * 1000)
print(json.dumps(timings))
"""


IN_PROCESS_SCRIPT = """
import json, resource, time
from django.core.management import call_command
from identity.index import drivers_index_refresh
from identity.resolution import leads_match
timings = []
for path in [None, {next_path!r}]:
    if path:  # the next leads arrive (not timed)
        call_command("import_source", "cabinet_leads", path, verbosity=0)
    started = time.perf_counter()
    drivers_index_refresh()
    refreshed = time.perf_counter()
    leads_match(progress=False)
    timings.append([refreshed - started, time.perf_counter() - refreshed])
print(json.dumps([timings, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024]))
"""


def _split_leads(source: Path, out: Path, later: int) -> tuple[Path, ...]:
    """cabinet_leads.csv as four files: every lead but the last 3 x `later`, then `later` three times."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    cut = len(rows) - 3 * later
    files = (out / "leads_first.csv", out / "leads_later.csv", out / "leads_later_in_process.csv",
             out / "leads_later_in_process_next.csv")
    parts = (rows[:cut], rows[cut:cut + later], rows[cut + later:cut + 2 * later], rows[cut + 2 * later:])
    for path, part in zip(files, parts, strict=True):
        path.write_text(header + "".join(part), encoding="utf-8")
    return files


def _phases_line(env: dict) -> str:
    """The phases of the latest refresh_drivers_index run, as `name=seconds` pairs."""
    rows = sql_rows("SELECT counts::text FROM ops.job_runs WHERE name = 'refresh_drivers_index' "
                    "ORDER BY id DESC LIMIT 1", env)
    counts = json.loads(rows[0][0]) if rows else {}
    phases = counts.get("phases") or {k: v for k, v in counts.items() if k.endswith("seconds")}
    return "  ".join(f"{k}={v}s" for k, v in phases.items())


def _load() -> str:
    return f"load_avg={os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--later", type=int, default=1000, help="leads held back and matched after the first run")
    parser.add_argument("--single", type=int, default=300, help="leads timed one by one")
    parser.add_argument("--data", type=Path, help="reuse (or keep) generated files in this folder")
    parser.add_argument("--sequential", action="store_true",
                        help="time refresh_drivers_index --full, then match_leads, as two commands (by default "
                             "one `match_leads --refresh`, which decides the leads while the first build writes)")
    parser.add_argument("--splink", choices=("same", "wide", "none"), default="same",
                        help="Splink's blocking rules (bench/splink_baseline.py), or none to skip it")
    parser.add_argument("--splink-training", choices=("narrow", "names"), default="narrow",
                        help="the blocks Splink's EM passes train on (bench/splink_baseline.py TRAINING): 'narrow' "
                             "(given name + both surnames: as good, about 3 times faster to train at 1M) or 'names' "
                             "(given name + first surname, the baseline of sessions 4-22)")
    args = parser.parse_args()
    env = bench_env()
    out = args.data or Path(tempfile.mkdtemp(prefix="ct4-speed-"))
    print(f"matching speed: {args.drivers} drivers, {args.leads} leads (database {BENCH_DB}, files {out}) {_load()}")
    reset_database(env)
    if not (out / "drivers.csv").exists():
        secs, _, _ = manage("generate_demo_data", "--out", str(out), "--drivers", str(args.drivers),
                            "--leads", str(args.leads), "--seed", str(args.seed), env=env)
        print(f"generate            {secs:7.1f}s (not counted)")
    work = Path(tempfile.mkdtemp(prefix="ct4-speed-leads-"))
    first, later, later_in_process, later_next = _split_leads(out / "cabinet_leads.csv", work, args.later)
    for kind, path in (("drivers", out / "drivers.csv"), ("cabinet_leads", first)):
        secs, _, _ = manage("import_source", kind, str(path), env=env, check=False)
        print(f"import {kind:<13}{secs:7.1f}s (not counted)")

    if args.sequential:
        refresh, rss_refresh, _ = manage("refresh_drivers_index", "--full", env=env)
        print(f"refresh (full)      {refresh:7.1f}s  peak_rss={rss_refresh}MB  {_load()}")
        print("  phases: " + _phases_line(env))
        match, rss_match, match_out = manage("match_leads", "--json", env=env)
        counts = json.loads(match_out.strip().splitlines()[-1])
        print(f"match_leads         {match:7.1f}s  peak_rss={rss_match}MB  {_load()}  "
              f"processed={counts.get('processed')} linked={counts.get('linked')} "
              f"(reading leads and index {counts.get('load_seconds')}s)")
        ours, peak = refresh + match, max(rss_refresh, rss_match)
    else:
        ours, peak, match_out = manage("match_leads", "--refresh", "--json", env=env)
        counts = json.loads(match_out.strip().splitlines()[-1])
        refresh_secs = sql_rows("SELECT extract(epoch FROM finished_at - started_at) FROM ops.job_runs "
                                "WHERE name = 'refresh_drivers_index' ORDER BY id DESC LIMIT 1", env)[0][0]
        print(f"match_leads --refresh {ours:5.1f}s  peak_rss={peak}MB  {_load()}  processed={counts.get('processed')} "
              f"linked={counts.get('linked')}")
        print(f"  its first build {float(refresh_secs):.1f}s; deciding began after {counts.get('load_seconds')}s "
              "(leads read, index handed over, model estimated); phases of the build: "
              + _phases_line(env))
    print(f"OURS refresh+match  {ours:7.1f}s [{'PASS' if ours < 20 else 'FAIL'} < 20s]  peak_rss={peak}MB "
          f"[{'PASS' if peak < 1536 else 'FAIL'} < 1536MB]")

    manage("import_source", "cabinet_leads", str(later), env=env, check=False)
    inc_refresh, _, _ = manage("refresh_drivers_index", env=env)
    inc_match, _, _ = manage("match_leads", env=env)
    inc = inc_refresh + inc_match
    print(f"{args.later} more leads, two commands: refresh {inc_refresh:.1f}s + match {inc_match:.1f}s = {inc:.1f}s "
          f"(each includes its process start, ~1 s)")
    manage("import_source", "cabinet_leads", str(later_in_process), env=env, check=False)
    _, _, timed = manage("shell", "-c", IN_PROCESS_SCRIPT.replace("{next_path!r}", repr(str(later_next))), env=env)
    jobs, worker_rss = json.loads(timed.strip().splitlines()[-1])
    for (inc_refresh, inc_match), which in zip(jobs, ("its first job", "its next job"), strict=True):
        inc = inc_refresh + inc_match
        print(f"{args.later} more leads in a running worker, {which}: refresh {inc_refresh:.2f}s + match "
              f"{inc_match:.2f}s = {inc:.2f}s [{'PASS' if inc < 2 else 'FAIL'} < 2s]  {_load()}")
    print(f"  that worker's peak RSS {worker_rss}MB [{'PASS' if worker_rss < 1536 else 'FAIL'} < 1536MB]")

    quality = evaluate_links(_as_person_links(env), out, humans_of_target=_humans_of_persons(env, out))
    print(f"OURS quality (every lead): precision={quality['precision']:.5f} recall={quality['recall']:.5f} "
          f"links={quality['links']} wrong={quality['wrong']}")

    if args.single:
        # Free (a qcluster worker, a command), then on one CPU as a web worker runs it (gunicorn.conf.py pins
        # each to one: the review screens' one-lead path), on the other half of the leads.
        pinned = ["taskset", "-c", "0"] if shutil.which("taskset") else None
        for half, prefix, label in ((0, None, "single lead        "), (1, pinned, "single lead, 1 CPU ")):
            if half and not prefix:
                break
            script = SINGLE_LEAD_SCRIPT.replace("{n}", str(args.single)).replace("{half}", str(half))
            _, _, single_out = manage("shell", "-c", script, env=env, prefix=prefix)
            timings = sorted(json.loads(single_out.strip().splitlines()[-1]))
            if timings:
                p = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))]  # noqa: E731
                print(f"{label} p50={p(0.50):.1f}ms p95={p(0.95):.1f}ms p99={p(0.99):.1f}ms "
                      f"mean={statistics.mean(timings):.1f}ms over {len(timings)} leads "
                      f"[{'PASS' if p(0.95) < 50 else 'FAIL'} p95 < 50ms] {_load()}")

    if args.splink != "none":
        figures = work / "splink.json"
        command = [PY, str(ROOT / "bench" / "splink_baseline.py"), "--data", str(out), "--blocking", args.splink,
                   "--training", args.splink_training, "--json-out", str(figures)]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            print("splink: failed (is bench/requirements.txt installed? make bench-setup)")
        else:
            splink = json.loads(figures.read_text())
            print(f"SPLINK ({args.splink} blocking, {args.splink_training} training) {splink['seconds']:7.1f}s  "
                  f"peak_rss={splink['peak_rss_mb']}MB  "
                  f"precision={splink['precision']:.5f} recall={splink['recall']:.5f} links={splink['links']} "
                  f"wrong={splink['wrong']} (all leads)  phases: "
                  + "  ".join(f"{k}={v:.1f}s" for k, v in splink["phases"].items()))
            ratio = ours / splink["seconds"]
            print(f"ours / splink = {ratio:.2f} [{'PASS' if ratio <= 0.5 else 'FAIL'} <= 0.5]")
    if "CT4_BENCH_KEEP" not in os.environ and args.data is None:
        for path in out.iterdir():
            path.unlink()
        out.rmdir()


def _as_person_links(env: dict) -> dict:
    return dict(sql_rows("SELECT source_pk, person_key::text FROM canon.identity_links "
                         "WHERE source_table = 'module_ct_cabinet_leads'", env))


def _humans_of_persons(env: dict, out: Path) -> dict:
    human_of_driver = truth_load(out).human_of_driver
    humans: dict[str, set] = {}
    for driver_id, person_key in sql_rows("SELECT driver_id, person_key::text FROM canon.drivers_index", env):
        humans.setdefault(person_key, set()).add(human_of_driver.get(driver_id))
    return humans


if __name__ == "__main__":
    main()
