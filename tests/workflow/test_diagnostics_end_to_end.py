"""The diagnostics of the mini study, trimmed, run for real through Snakemake: the stage-ablation
cells train and fill the `stage-ablation` table, the profiling sweep writes its CSV and six-panel
figure, the linear probes their table and rank correlation, Figure 2 its maps, the collapse probes
their CSV, figure and findings. Marked slow; CI runs it."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CELL = "vmamba-mini@cls@64@stage3@mlp2"
STAGE4 = "vmamba-mini@cls@64@stage4@mlp2"


def trimmed_config(tmp_path: Path) -> Path:
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    study["study"] = "diag"
    study["mini"].update(n_train=300, n_eval=24, n_classify=300, image_size=64, pretrain_epochs=1)
    study["recipe"].update(epochs=1, checkpoint_every=50)
    study["cells"] = [{"backbone": "vmamba-mini", "objective": "cls", "geometry": "64", "tap": "stage3",
                       "connector": "mlp2"}]
    study["tables"] = {"diag": {"title": "diag", "columns": "all", "cells": [CELL]}}
    study["diagnostics"] = {
        "stage_ablation": {"backbones": ["vmamba-mini"], "objective": "cls", "geometry": "64",
                           "taps": ["stage3", "stage4"], "connector": "mlp2", "tokens": {"stage3": 16, "stage4": 4}},
        "profile": {"cells": [CELL], "resolutions": [64, 32], "iterations": 3, "warmup": 1, "text_tokens": 16},
        "collapse": {"cells": [CELL, STAGE4], "llm_layers": [1, 4], "benchmark": "refcoco", "max_images": 24},
        "linear_probe": {"cells": [CELL, STAGE4], "datasets": ["mini-classify"], "max_train": 120, "max_test": 40},
        "figure2": {"cells": [CELL, STAGE4], "examples": [1, 2], "layer": 2},
    }
    path = tmp_path / "diag.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.mark.slow
def test_trimmed_diagnostics_run_end_to_end(tmp_path):
    config = trimmed_config(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(config), "--cores", "2"], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    out = tmp_path / "results" / "diag"

    # Appendix B: both stages trained and evaluated; the table shows each stage's token count
    stages = list(csv.DictReader((out / "tables" / "stage-ablation.csv").open()))
    assert [r["cell_id"] for r in stages] == [CELL, STAGE4]
    assert [r["Vision Token #"] for r in stages] == ["16", "4"]
    assert all(r["vqa-v2"] != "" and r["refcoco"] != "" for r in stages)

    # Appendix G: resolutions ascending, host-side metrics and peak RSS on the CPU, no GPU columns
    profile = list(csv.DictReader((out / "diagnostics" / "profile.csv").open()))
    assert [int(r["resolution"]) for r in profile] == [32, 64]
    assert [int(r["visual_tokens"]) for r in profile] == [4, 16]
    for r in profile:
        assert r["status"] == "ok" and r["device"] == "cpu" and r["peak_mem_kind"] == "cpu peak rss"
        assert float(r["e2e_ms"]) > 0 and float(r["host_vision_ms"]) > 0 and float(r["host_llm_ms"]) > 0
        assert r["gpu_vision_ms"] == r["gpu_llm_ms"] == "" and float(r["peak_mem_mb"]) > 0
    assert (out / "diagnostics" / "profile.png").read_bytes()[:4] == b"\x89PNG"

    # collapse: prior, tap, connector and the two LLM layers per cell; a verdict per cell
    probes = list(csv.DictReader((out / "diagnostics" / "collapse.csv").open()))
    assert [r["stage"] for r in probes if r["cell"] == CELL] == ["position-prior", "tap", "connector", "llm-1", "llm-4"]
    assert all(0.0 <= float(r["auc"]) <= 1.0 for r in probes)
    findings = (out / "diagnostics" / "collapse.md").read_text()
    for cell in (CELL, STAGE4):
        line = next(line for line in findings.splitlines() if line.startswith(f"| {cell} |"))
        assert any(f"| {v} |" in line for v in ("features", "transmission", "fades in the LLM", "utilization"))
    assert (out / "diagnostics" / "collapse.png").read_bytes()[:4] == b"\x89PNG"

    # linear probes: one accuracy per cell on the world's classification set, and the rank correlation
    probes = list(csv.DictReader((out / "diagnostics" / "probes.csv").open()))
    assert [r["cell"] for r in probes] == [CELL, STAGE4] and all(0 <= float(r["mini-classify"]) <= 100 for r in probes)
    assert "Spearman" in (out / "diagnostics" / "probes.md").read_text()

    # Figure 2: per cell, the two examples with a map on the token grid
    maps = json.loads((out / "diagnostics" / "figure2" / f"{CELL}.json").read_text())
    assert [e["id"] for e in maps["examples"]] == ["1", "2"] and maps["layer"] == 2
    assert all(len(e["similarity"]) == 16 and e["grid"] == [4, 4] for e in maps["examples"])
    assert all(-1.0 <= s <= 1.0 for e in maps["examples"] for s in e["similarity"])
    assert (out / "diagnostics" / "figure2.png").read_bytes()[:4] == b"\x89PNG"
