"""`python -m bench [--quick] [--only rpo,initial,realistic,incremental,poll,wan] [--report-only]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import lab as bench_lab
from bench import machine, report, scenarios, wan_cases
from bench.lab import make_lab, root_sql
from seafbackup_agent.config import DEFAULT_WORKERS

REPO = Path(__file__).resolve().parents[1]
CASES = ("rpo", "initial", "realistic", "incremental", "poll", "wan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under 5 minutes")
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from benchmarks.json")
    parser.add_argument("--keep-lab", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the cases run in the existing benchmarks.json (each case keeps its run's "
                             "command and time in the report)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="the backup agent's [backup] workers (default: the product's)")
    parser.add_argument("--poll-libraries", help="override the poll sizes: 1000,10000,...")
    parser.add_argument("--rpo-points", help="override the RPO points: rate:seconds:bytes,...")
    parser.add_argument("--profile", type=Path, help="run the agents under py-spy, collapsed stacks into this dir")
    args = parser.parse_args(argv)
    docs: Path = args.docs
    images = docs / "benchmarks"
    images.mkdir(parents=True, exist_ok=True)
    data_file = docs / "benchmarks.json"
    bench_lab.WORKERS = args.workers
    if args.profile:
        bench_lab.PROFILE_DIR = args.profile.resolve()
    if args.report_only:
        results = json.loads(data_file.read_text())
    else:
        plan = scenarios.QUICK if args.quick else scenarios.FULL
        if args.rpo_points:
            points = tuple(tuple(float(x) for x in p.split(":")) for p in args.rpo_points.split(","))
            plan = dataclasses.replace(plan, rpo_points=tuple((r, s, int(b)) for r, s, b in points))
        if args.poll_libraries:
            plan = dataclasses.replace(plan, poll_libraries=tuple(int(n) for n in args.poll_libraries.split(",")))
        cases = args.only.split(",")
        fresh = run(plan, cases, args.keep_lab)
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        origin = {"command": command.strip(), "started": fresh["started"], "elapsed_s": fresh["elapsed_s"],
                  "quick": plan.quick, "workers": args.workers, "disks": fresh["machine"]["hosts' disks"]}
        for case in cases:
            fresh[case]["run"] = origin
        if args.merge and data_file.exists():
            results = json.loads(data_file.read_text())
            results.update({case: fresh[case] for case in cases})
            results["machine"] = fresh["machine"]
        else:
            results = fresh
        results["workers"] = args.workers
        results["command"] = command
        data_file.write_text(json.dumps(results, indent=1, default=str) + "\n")
    made = report.plots(results, images)
    (docs / "benchmarks.md").write_text(report.markdown(results, made))
    print(f"wrote {docs / 'benchmarks.md'} and {', '.join(made)}")
    return 0


def run(plan: scenarios.Plan, cases: list[str], keep_lab: bool) -> dict:
    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    started = time.time()
    lab, disks = make_lab()
    work = lab.dir / "work"
    log(f"lab at {lab.dir}; {disks.describe(lab.dir)}")
    results: dict = {"plan": scenarios.as_dict(plan), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        version = root_sql(lab.primary, "SELECT VERSION()")[0][0]
        results["machine"] = machine.describe(lab.dir, version)
        results["machine"]["hosts' disks"] = disks.describe(lab.dir)
        for case in cases:
            t = time.monotonic()
            if case == "rpo":
                results["rpo"] = scenarios.rpo(lab, plan, work, log)
            elif case == "initial":
                results["initial"] = scenarios.initial(lab, plan, work, log)
            elif case == "realistic":
                results["realistic"] = scenarios.initial(lab, plan, work, log, store="realistic")
            elif case == "incremental":
                results["incremental"] = scenarios.incremental(lab, plan, work, log)
            elif case == "poll":
                results["poll"] = scenarios.poll_and_primary_cost(lab, plan, work, log)
            elif case == "wan":
                results["wan"] = wan_cases.wan_case(lab, plan, work, log)
            else:
                raise SystemExit(f"unknown case {case!r}")
            log(f"{case} done in {time.monotonic() - t:.0f}s")
    finally:
        if not keep_lab:
            lab.down()
            disks.detach()
            # Hundreds of thousands of small files: deleted in the background, the report need not wait.
            subprocess.Popen(["rm", "-rf", str(lab.dir)], start_new_session=True)
    results["elapsed_s"] = time.time() - started
    return results


if __name__ == "__main__":
    sys.exit(main())
