"""The paper grid's dry run (`snakemake -n --configfile config/experiments.yaml`) against the cost of
starting Snakemake at all (`snakemake --version`), each run --runs times alternately in this process's
children, from the repository root:

    python benchmarks/dryrun.py                 # 5 runs each
    python benchmarks/dryrun.py --config config/mini.yaml

Prints per command the median wall time and the median CPU time (user + sys of the child, from
getrusage: on a shared machine other jobs stretch the wall time but hardly the CPU time), the dry run
over the baseline as a ratio and as a difference, the job count the dry run planned, and whether the
target (the dry run under 3 s wall) is met.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its stdout + stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config/experiments.yaml")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--snakemake", default=str(Path(sys.executable).with_name("snakemake")))
    args = p.parse_args(argv)

    commands = {"snakemake --version": [args.snakemake, "--version"],
                f"snakemake -n --configfile {args.config}": [args.snakemake, "-n", "--configfile", args.config]}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    output = ""
    for _ in range(args.runs):  # alternately, so a change of machine load hits both
        for name, command in commands.items():
            wall, cpu, text = timed(command)
            samples[name].append((wall, cpu))
            output = text if "-n" in command else output
    jobs = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    print(f"{args.runs} runs each, median; PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}")
    print(f"{'command':<58s} {'wall s':>7s} {'CPU s':>7s}")
    medians = {}
    for name, runs in samples.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        medians[name] = (wall, cpu)
        print(f"{name:<58s} {wall:>7.2f} {cpu:>7.2f}")
    (base_wall, base_cpu), (dry_wall, dry_cpu) = medians.values()
    print(f"dry run / start: wall {dry_wall / base_wall:.2f}x (+{dry_wall - base_wall:.2f} s), "
          f"CPU {dry_cpu / base_cpu:.2f}x (+{dry_cpu - base_cpu:.2f} s); {jobs.group(1) if jobs else '?'} jobs planned")
    print(f"target (dry run < 3 s wall): {'met' if dry_wall < 3 else 'NOT met'} ({dry_wall:.2f} s)")
    return {"start": medians[next(iter(commands))], "dry_run": (dry_wall, dry_cpu),
            "jobs": int(jobs.group(1)) if jobs else None}


if __name__ == "__main__":
    main()
