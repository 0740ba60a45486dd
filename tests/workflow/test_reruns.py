"""Reruns of exactly what changed, and crashes that lose nothing, on a small finished mini study.

One study (three cells, VQA-v2 + RefCOCO, two tables) is run for real once. Then:
- for each kind of edit a user makes, the dry run plans exactly the jobs the edit affects (set
  equality), and nothing for edits that do not change any output (GPU count, venv location);
- a copy of the study is killed (SIGKILL to the whole Snakemake process group) at ten seeded
  points, restarted with `--unlock` + `--rerun-incomplete` each time, and finishes with the same
  bytes as the uninterrupted run.
Marked slow; CI runs it.
"""

from __future__ import annotations

import copy
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
A = "vit-mini@cls@64@block-2@mlp2"
B = "vmamba-mini@cls@64@stage3@mlp2"
C = "vmamba-mini@seg@64@stage3-outnorm@mlp2"


def study_config() -> dict:
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    study["study"] = "rerun"
    study["mini"].update(n_train=160, n_eval=12, n_classify=160, image_size=64, pretrain_epochs=1)
    # per-device batch 2: the global batch 8 still divides once the "number of GPUs" edit gives 4
    study["recipe"].update(epochs=1, checkpoint_every=4, per_device_batch=2)
    study["backbones"] = {k: v for k, v in study["backbones"].items() if k in ("vit-mini", "vmamba-mini")}
    study["objectives"] = {k: v for k, v in study["objectives"].items() if k in ("cls", "seg")}
    study.pop("diagnostics")  # it names cells of the full grid
    study["cells"] = [
        {"backbone": "vit-mini", "objective": "cls", "geometry": "64", "tap": "block-2", "connector": "mlp2"},
        {"backbone": "vmamba-mini", "objective": "cls", "geometry": "64", "tap": "stage3", "connector": "mlp2"},
        {"backbone": "vmamba-mini", "objective": "seg", "geometry": "64", "tap": "stage3-outnorm", "connector": "mlp2"},
    ]
    study["tables"] = {"all3": {"title": "all three", "columns": "all", "cells": [A, B, C]},
                       "vmamba-vqa": {"title": "VMamba, VQA", "columns": "vqa", "cells": [B, C]}}
    return study


def snakemake(workdir: Path, config: Path, *args: str, python: str = sys.executable, **kw):
    return subprocess.run(
        [python, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(config), "--cores", "2", *args],
        capture_output=True, text=True, timeout=kw.pop("timeout", 1500), **kw)


def planned(workdir: Path, study: dict, tmp: Path, name: str, python: str = sys.executable) -> set[tuple]:
    """The jobs a dry run of `study` plans in the finished `workdir`: {(rule, wildcard values...)}.
    `python` stands for the interpreter Snakemake runs under (the rules' shell commands name it)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness,
                                          ResourceSettings, StorageSettings)

    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    real, sys.executable = sys.executable, python
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(cores=2),
                config_settings=ConfigSettings(configfiles=[config]),
                storage_settings=StorageSettings(),
                snakefile=ROOT / "Snakefile",
                workdir=workdir,
            )
            dag_api = workflow_api.dag(DAGSettings())
            dag_api.execute_workflow(executor="dryrun")
            dag = workflow_api._workflow.dag
            jobs = list(dag.needrun_jobs(exclude_finished=False))
    finally:
        sys.executable = real
        os.chdir(ROOT)  # the API changes into the workdir
    return {(j.rule.name, *j.wildcards_dict.values()) for j in jobs if j.rule.name != "all"}


def evals(cells, groups=("vqa", "loc")):
    """Evaluation jobs: one per cell and column group (VQA-v2 is a VQA column, RefCOCO a loc one)."""
    return {(f"evaluate_{g}", c) for c in cells for g in groups}


def trains(*cells):
    return {("train", c) for c in cells}


def tables(*names):
    return {("table", t) for t in names}


CORR = {("correlation",)}
VIEW = {("findings",), ("figures",)}  # computed over every cell: any result or label change reruns them


def provs(*cells):
    return {("provenance", c) for c in cells}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The study, run to the end once (also the reference of the kill test)."""
    tmp = tmp_path_factory.mktemp("reruns")
    config = tmp / "rerun.yaml"
    config.write_text(yaml.safe_dump(study_config(), sort_keys=False))
    workdir = tmp / "straight"
    run = snakemake(workdir, config)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    return tmp, config, workdir


@pytest.mark.slow
def test_every_edit_reruns_exactly_what_it_affects(finished):
    tmp, _, workdir = finished
    base = study_config()
    assert planned(workdir, base, tmp, "same") == set()

    def edit(change) -> dict:
        study = copy.deepcopy(base)
        change(study)
        return study

    cases = {
        "backbone arch": (
            lambda s: s["backbones"]["vmamba-mini"]["arch"].update(dims=24),
            {("pretrain_mini", "vmamba-mini", "cls"), ("pretrain_mini", "vmamba-mini", "seg"),
             ("fetch_backbone", "vmamba-mini", "cls"), ("fetch_backbone", "vmamba-mini", "seg")}
            | trains(B, C) | evals([B, C]) | tables("all3", "vmamba-vqa") | CORR | VIEW | provs(B, C)),
        "checkpoint source": (
            lambda s: s["backbones"]["vit-mini"]["checkpoints"]["cls"]["mini"].update(epochs=2),
            {("pretrain_mini", "vit-mini", "cls"), ("fetch_backbone", "vit-mini", "cls")}
            | trains(A) | evals([A]) | tables("all3") | CORR | VIEW | provs(A)),
        "recipe value": (
            lambda s: s["recipe"].update(lr=5e-4),
            trains(A, B, C) | evals([A, B, C]) | tables("all3", "vmamba-vqa") | CORR | VIEW | provs(A, B, C)),
        "one cell's recipe": (
            lambda s: s["cells"][0].update(recipe={"lr": 5e-4}),
            trains(A) | evals([A]) | tables("all3") | CORR | VIEW | provs(A)),
        "resume cadence (not a determinant)": (lambda s: s["recipe"].update(checkpoint_every=3), set()),
        "eval setting": (
            lambda s: s["eval"].update(max_new_tokens=40),
            evals([A, B, C]) | tables("all3", "vmamba-vqa") | CORR | VIEW | provs(A, B, C)),
        "benchmark subset": (
            lambda s: s["benchmarks"]["refcoco"].update(subset="slim-8"),
            {("prepare_benchmark", "refcoco"), ("baselines", "refcoco")}
            | evals([A, B, C], ["loc"]) | tables("all3") | CORR | VIEW | provs(A, B, C)),
        "table membership": (lambda s: s["tables"]["all3"]["cells"].remove(A), tables("all3") | VIEW),
        "display name": (lambda s: s["backbones"]["vit-mini"].update(display="ViT-tiny"), tables("all3") | VIEW),
        "a cell's paper numbers": (lambda s: s["cells"][0].update(paper={"vqa-v2": 59.86}), tables("all3") | VIEW),
        "number of GPUs": (
            lambda s: (s["train_resources"].update(gpus_per_node=4), s["eval_resources"].update(gpus=2)), set()),
        "threads and memory": (lambda s: s["train_resources"].update(cpus_per_gpu=2, mem_mb_per_gpu=9000), set()),
    }
    # interface edits make a new cell (the id names geometry, tap and connector): only it is new
    new_tap = "vmamba-mini@cls@64@stage3-outnorm@mlp2"
    cases["tap"] = (
        lambda s: (s["cells"][1].update(tap="stage3-outnorm"),
                   s["tables"]["all3"]["cells"].__setitem__(1, new_tap),
                   s["tables"]["vmamba-vqa"]["cells"].__setitem__(0, new_tap)),
        # the cls checkpoint is pretrained at the tap its cells read
        {("pretrain_mini", "vmamba-mini", "cls"), ("fetch_backbone", "vmamba-mini", "cls")}
        | trains(new_tap) | evals([new_tap]) | tables("all3", "vmamba-vqa") | CORR | VIEW | provs(new_tap))
    new_geometry = "vit-mini@cls@96@block-2@mlp2"
    cases["geometry"] = (
        lambda s: (s["cells"][0].update(geometry="96"), s["tables"]["all3"]["cells"].__setitem__(0, new_geometry)),
        trains(new_geometry) | evals([new_geometry]) | tables("all3") | CORR | VIEW | provs(new_geometry))
    new_connector = "vit-mini@cls@64@block-2@mlp3"
    cases["connector"] = (
        lambda s: (s["cells"][0].update(connector="mlp3"), s["tables"]["all3"]["cells"].__setitem__(0, new_connector)),
        trains(new_connector) | evals([new_connector]) | tables("all3") | CORR | VIEW | provs(new_connector))

    for name, (change, expected) in cases.items():
        got = planned(workdir, edit(change), tmp, re.sub(r"\W+", "-", name))
        assert got == expected, f"{name}: planned {sorted(got)}, expected {sorted(expected)}"

    # the venv moved: the same interpreter reached through another path
    moved = tmp / "moved-venv"
    moved.symlink_to(Path(sys.prefix))
    python = str(moved / "bin" / Path(sys.executable).name)
    assert planned(workdir, base, tmp, "moved", python=python) == set()


@pytest.mark.slow
def test_a_deleted_result_is_rebuilt_by_the_default_target(finished, tmp_path):
    tmp, config, workdir = finished
    import shutil

    copy_dir = tmp_path / "copy"
    shutil.copytree(workdir, copy_dir, symlinks=True)
    (copy_dir / "results" / "rerun" / "evals" / B / "refcoco.json").unlink()
    got = planned(copy_dir, study_config(), tmp_path, "deleted")
    assert got == {("evaluate_loc", B), ("table", "all3"), ("correlation",)} | VIEW | provs(B)


@pytest.mark.slow
def test_each_evaluation_job_records_the_sha256_of_the_results_it_wrote(finished):
    """The aggregating rules depend on these records (one per job) instead of every result file."""
    import hashlib
    import json

    tmp, config, workdir = finished
    records = sorted((workdir / "results" / "rerun" / "evals").glob("*/*.group.json"))
    assert {(p.parent.name, p.name) for p in records} == {(c, f"{g}.group.json") for c in (A, B, C)
                                                          for g in ("vqa", "loc")}
    for path in records:
        record = json.loads(path.read_text())
        assert record["cell"] == path.parent.name and record["results"]
        for benchmark, sha in record["results"].items():
            assert sha == hashlib.sha256((path.parent / f"{benchmark}.json").read_bytes()).hexdigest()


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


# The first kill lands as soon as a training has saved its first resume state, so that every run of
# this test resumes a training mid-way; the other nine fall at seeded random times.
@pytest.mark.slow
def test_killed_anywhere_and_rerun_gives_the_same_bytes(finished):
    """SIGKILL the whole workflow at ten seeded points, restart each time, compare every output."""
    tmp, config, straight = finished
    workdir = tmp / "killed"
    rng = random.Random(20261201)
    kills, resumed = 0, False
    while kills < 10:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
             "--configfile", str(config), "--cores", "2", "--rerun-incomplete"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not resumed:
            deadline = time.time() + 600
            while proc.poll() is None and time.time() < deadline:
                if list((workdir / "results/rerun/resume").glob("*/latest")):
                    break
                time.sleep(0.05)
            resumed = proc.poll() is None
            assert resumed, "no training saved a resume state before the study ended"
        else:
            try:
                proc.wait(timeout=rng.uniform(4.0, 20.0))
                break  # finished before this kill point: nothing left to interrupt
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        unlock = snakemake(workdir, config, "--unlock")
        assert unlock.returncode == 0, unlock.stderr[-2000:]
    assert kills >= 5, "the study finished before half the kill points: they no longer cover the run"
    final = snakemake(workdir, config, "--rerun-incomplete")
    assert final.returncode == 0, (final.stdout + final.stderr)[-6000:]

    out = "results/rerun"
    for pattern in ("evals/*/*.json", "evals/*/*.jsonl", "tables/*", "baselines/*.json", "correlation.csv"):
        a, b = _files(straight / out, pattern), _files(workdir / out, pattern)
        assert a.keys() == b.keys() and a, pattern
        for name in a:
            assert a[name] == b[name], f"{name} differs after the killed run"
    # nothing partial was left behind as if complete
    assert not list((workdir / out).rglob(".*.tmp-*"))
    from safetensors.torch import load_file
    import torch

    for cell in (A, B, C):
        x = load_file(str(straight / out / "models" / cell / "model.safetensors"))
        y = load_file(str(workdir / out / "models" / cell / "model.safetensors"))
        assert x.keys() == y.keys()
        assert [key for key in x if not torch.equal(x[key], y[key])] == [], f"{cell}: resumed weights differ"
