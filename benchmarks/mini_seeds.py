"""The spread of the mini study's scores over training seeds: how far one run's numbers are from
being exact.

    python benchmarks/mini_seeds.py --seeds 0 1 2                   # every cell of config/mini.yaml
    python benchmarks/mini_seeds.py --seeds 0 1 2 --cells vit-mini@cls@64@block-2@mlp2 ...

In one scratch work directory, the study (diagnostics left out) runs once per `recipe.seed` (the batch
order and the connector's initialisation). The world, the backbones and the LLM do not depend on it,
so after the first seed Snakemake reruns exactly the trainings, evaluations and tables. Each seed's
scores are read from the results; printed per cell and benchmark column: each seed's score, mean,
sample standard deviation and range, beside the mean half-width of the single runs' bootstrap 95%
intervals (the noise of a finite benchmark; the seed spread adds the noise of training).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from vlmswap.study import study_from_dict

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/mini.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="*", help="cell ids to keep (default: every cell of the config)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work directory to use and keep (default: a temporary one)")
    args = parser.parse_args()

    study = yaml.safe_load((ROOT / args.config).read_text())
    study.pop("diagnostics", None)
    by_id = dict(zip(study_from_dict(study, args.config).cell_ids, study["cells"]))  # the ids Study makes
    if args.cells:
        missing = set(args.cells) - set(by_id)
        if missing:
            sys.exit(f"--cells: not cells of {args.config}: {sorted(missing)}")
        by_id = {cell_id: cell for cell_id, cell in by_id.items() if cell_id in args.cells}
    study["cells"] = list(by_id.values())
    ids = list(by_id)
    study["tables"] = {"seeds": {"title": "seed spread", "columns": "all", "cells": ids}}
    work = args.keep or Path(tempfile.mkdtemp(prefix="vlmswap-seeds-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "seeds.yaml"
    scores: dict[tuple[str, str], list[float]] = {}
    halves: dict[tuple[str, str], list[float]] = {}
    try:
        for seed in args.seeds:
            study["recipe"]["seed"] = seed
            config.write_text(yaml.safe_dump(study, sort_keys=False))
            print(f"seed {seed}: running the study in {work} ...", flush=True)
            done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                                   str(work), "--configfile", str(config), "--cores", str(args.cores)],
                                  cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"seed {seed}: snakemake failed:\n{(done.stdout + done.stderr)[-4000:]}")
            for cell in ids:
                for benchmark in study["benchmarks"]:
                    result = work / "results" / study["study"] / "evals" / cell / f"{benchmark}.json"
                    data = json.loads(result.read_text())
                    for column, value in data["columns"].items():
                        scores.setdefault((cell, column), []).append(value)
                        if column in data.get("intervals", {}):
                            low, high = data["intervals"][column]
                            halves.setdefault((cell, column), []).append((high - low) / 2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.config}, seeds {args.seeds} (recipe.seed); scores in percent")
    print(f"{'cell':<44}{'column':<10}{'per seed':<26}{'mean':>7}{'sd':>6}{'range':>7}{'CI half':>9}")
    for (cell, column), values in scores.items():
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        half = statistics.mean(halves[(cell, column)]) if halves.get((cell, column)) else float("nan")
        print(f"{cell:<44}{column:<10}{' '.join(f'{v:6.2f}' for v in values):<26}{statistics.mean(values):>7.2f}"
              f"{sd:>6.2f}{max(values) - min(values):>7.2f}{half:>9.2f}")


if __name__ == "__main__":
    main()
