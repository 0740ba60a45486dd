"""Command (a) timed: the mini study end to end from empty `results/` and `resources/`, in a scratch
work directory (`snakemake -s Snakefile --directory <scratch> --cores 2`), and where the time went.

    python benchmarks/mini_study.py                       # config/mini.yaml, 2 cores
    python benchmarks/mini_study.py --config config/mini.yaml --cores 2 --keep /tmp/mini-run

Prints the wall time against the 8-minute target and against `snakemake -n` of the same study (the
process-start and planning cost, measured in this run), the CPU time of all jobs (user + sys of the
children: on a shared machine other work stretches the wall time but hardly the CPU time), then per
rule the number of jobs and their summed and longest wall time, parsed from Snakemake's log (the
timestamp before each `Job N:` line and before each `Finished jobid: N`).
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 8 * 60
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
STARTED = re.compile(r"^(?:local)?[jJ]ob (\d+):")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: ([\w-]+)\)")


def run(command: list[str], log: Path | None = None) -> tuple[float, float]:
    """(wall s, CPU s of the child and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") if log else open("/dev/null", "w") as sink:
        done = subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        tail = log.read_text()[-3000:] if log else ""
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def per_rule(log_text: str) -> dict[str, list[float]]:
    """rule -> wall seconds of each of its jobs, from the log's timestamps (1 s resolution)."""
    stamp, started, durations = None, {}, defaultdict(list)
    for line in log_text.splitlines():
        line = line.strip()
        if m := STAMP.match(line):
            stamp = datetime.strptime(m.group(1).replace("  ", " "), "%a %b %d %H:%M:%S %Y")
        elif (m := STARTED.match(line)) and stamp is not None:
            started[m.group(1)] = stamp
        elif (m := FINISHED.match(line)) and stamp is not None and m.group(1) in started:
            durations[m.group(2)].append((stamp - started.pop(m.group(1))).total_seconds())
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/mini.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it; default: a temporary one")
    args = parser.parse_args()

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="vlmswap-mini-"))
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"{args.keep} is not empty; the study must start from empty results/ and resources/")
    scratch.mkdir(parents=True, exist_ok=True)
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(scratch),
                 "--configfile", str(ROOT / args.config), "--cores", str(args.cores)]
    try:
        plan_wall, plan_cpu = run(snakemake + ["-n", "--quiet"])
        log = scratch / "snakemake.log"
        wall, cpu = run(snakemake, log)
        rules = per_rule(log.read_text())
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"command (a) on {args.config}, --cores {args.cores}, from empty results/ and resources/")
    print(f"  wall {wall / 60:.1f} min ({wall:.0f} s); target <= {TARGET_S // 60} min: "
          f"{'met' if wall <= TARGET_S else 'NOT met'} (ratio to target {wall / TARGET_S:.2f})")
    print(f"  CPU of all jobs {cpu / 60:.1f} min ({cpu / max(wall, 1e-9):.2f} cores busy on average)")
    print(f"  baseline in the same run, `snakemake -n` (start-up + planning): {plan_wall:.1f} s wall, "
          f"{plan_cpu:.1f} s CPU; the study is {wall / max(plan_wall, 1e-9):.0f}x that")
    print(f"  {'rule':<22}{'jobs':>5}{'sum s':>9}{'max s':>8}")
    for rule, times in sorted(rules.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {rule:<22}{len(times):>5}{sum(times):>9.0f}{max(times):>8.0f}")


if __name__ == "__main__":
    main()
