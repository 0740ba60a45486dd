"""The mini study as command (a) configures it (config/mini.yaml: world size, image size, LM shape,
recipe), on two of its cells and without the diagnostics, run for real through Snakemake: every cell
beats both trivial baselines (VQA-v2's majority answer per answer type, RefCOCO's fixed central box)
and the table reports a bootstrap 95% interval per score. This is what makes the mini study's
numbers worth reading; the trimmed runs of the other end-to-end tests train too little to score.
Marked slow; CI runs it (about 8 minutes on 2 cores)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CELLS = ["vit-mini@cls@64@block-2@mlp2", "mambavision-mini@cls@64@stage3@mlp2"]


@pytest.mark.slow
def test_every_cell_of_the_mini_study_beats_both_trivial_baselines(tmp_path):
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    study.pop("diagnostics")
    study["cells"] = [c for c in study["cells"]
                      if "@".join(str(c[k]) for k in ("backbone", "objective", "geometry", "tap", "connector")) in CELLS]
    assert len(study["cells"]) == len(CELLS), "the cells this test names are no longer in config/mini.yaml"
    study["tables"] = {"mini": {"title": "mini", "columns": "all", "cells": CELLS}}
    config = tmp_path / "mini.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                          "--configfile", str(config), "--cores", "2", "results/mini/tables/mini.md"],
                         capture_output=True, text=True, timeout=2400)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]

    out = tmp_path / "results" / "mini"
    baselines = {b: json.loads((out / "baselines" / f"{b}.json").read_text())["columns"][b] for b in ("vqa-v2", "refcoco")}
    scores = {}
    for cell in CELLS:
        for benchmark in ("vqa-v2", "refcoco"):
            result = json.loads((out / "evals" / cell / f"{benchmark}.json").read_text())
            low, high = result["intervals"][benchmark]
            assert low <= result["columns"][benchmark] <= high
            scores[cell, benchmark] = result["columns"][benchmark]
    beaten = {key: score > baselines[key[1]] for key, score in scores.items()}
    assert all(beaten.values()), f"scores {scores} vs trivial baselines {baselines}"
    table = (out / "tables" / "mini.md").read_text()
    assert "bootstrap 95% interval" in table and table.count("\u00a0[") == 2 * len(CELLS)  # one per score
