"""A trimmed mini study through a real SLURM (the single-node cluster of scripts/slurm-local.sh),
submitted by Snakemake's SLURM executor with the project's CI profile (slurm/local): world,
pretraining, training and evaluation run as SLURM jobs; fetches and tables on the submit host.
Marked slow. CI starts the cluster before the tests (.ci/run); elsewhere the test is skipped
unless a SLURM node answers `sinfo`."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture
def cluster():
    if not _cluster_up():
        if os.environ.get("CI") == "true":
            pytest.fail("CI starts a SLURM cluster (bash scripts/slurm-local.sh start) but no node answers sinfo")
        pytest.skip("no SLURM cluster here: bash scripts/slurm-local.sh install && bash scripts/slurm-local.sh start")


@pytest.mark.slow
def test_a_trimmed_mini_study_runs_through_slurm(cluster, tmp_path):
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    study["study"] = "cluster"  # (not "slurm": the executor writes its logs to logs/slurm)
    study["mini"].update(n_train=60, n_eval=8, n_classify=48, image_size=64, pretrain_epochs=1)
    study["recipe"].update(epochs=1, checkpoint_every=50)
    cell = {"backbone": "vit-mini", "objective": "cls", "geometry": "64", "tap": "block-2", "connector": "mlp2"}
    cell_id = "vit-mini@cls@64@block-2@mlp2"
    study.pop("diagnostics")  # it names cells of the full grid
    study["cells"] = [cell]
    study["backbones"] = {"vit-mini": study["backbones"]["vit-mini"]}
    study["objectives"] = {"cls": study["objectives"]["cls"]}
    study["tables"] = {"cluster": {"title": "through SLURM", "columns": "all", "cells": [cell_id]}}
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    work = tmp_path / "work"
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
         "--profile", str(ROOT / "slurm" / "local"), "--configfile", str(config)],
        capture_output=True, text=True, timeout=1800)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    # the compute rules went through sbatch (one SLURM log per job), the local rules did not
    # the executor keeps one log per SLURM job under logs/slurm/rule_<rule>/...
    slurm_logs = {part.removeprefix("rule_") for p in (work / "logs" / "slurm").rglob("*.log")
                  for part in p.relative_to(work / "logs" / "slurm").parts if part.startswith("rule_")}
    assert {"mini_world", "pretrain_mini", "train", "evaluate_vqa", "evaluate_loc"} <= slurm_logs, slurm_logs
    assert "table" not in slurm_logs and "fetch_backbone" not in slurm_logs
    out = work / "results" / "cluster"
    result = json.loads((out / "evals" / cell_id / "vqa-v2.json").read_text())
    assert result["n_samples"] > 0 and result["provenance"]["model"]
    assert "VQA-v2" in (out / "tables" / "cluster.md").read_text()
    # the training read its job's end time from squeue inside the job (the jobstep keeps only
    # SLURM_JOB_ID), so it would save and stop before the time limit (mini.yaml: 30 min)
    train_log = (work / "logs" / "cluster" / "train" / f"{cell_id}.log").read_text()
    assert re.search(r"SLURM job \d+ ends at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(30 min limit\)", train_log), train_log[-3000:]
