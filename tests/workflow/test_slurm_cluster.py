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
    # a training longer than its one-minute SLURM limit: each attempt saves and stops before the
    # limit (exit 75) and the next continues, until it is done (480 steps, 2-4 attempts)
    study["recipe"].update(epochs=60, checkpoint_every=100_000)
    study["train_resources"]["runtime_min"] = 1
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
         "--profile", str(ROOT / "slurm" / "local"), "--configfile", str(config), "--retries", "5"],
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
    # each attempt read its job's end time from squeue inside the job (the jobstep keeps only
    # SLURM_JOB_ID); the stopped ones saved resume state before the limit and the next resumed it
    attempts = sorted((work / "logs" / "slurm" / "rule_train").rglob("*.log"), key=lambda a: int(a.stem))
    texts = [a.read_text() for a in attempts]
    assert len(texts) >= 2, [a.name for a in attempts]
    for text in texts:
        assert re.search(r"SLURM job \d+ ends at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(1 min limit\)", text), text[-3000:]
    stopped = [re.search(r"time limit; resume state saved at step (\d+)/480", t) for t in texts]
    assert all(stopped[:-1]) and not stopped[-1], [t[-1500:] for t in texts]
    summary = json.loads((out / "models" / cell_id / "train.json").read_text())
    assert summary["steps"] == 480 and summary["resumed_from_step"] == int(stopped[-2].group(1))
