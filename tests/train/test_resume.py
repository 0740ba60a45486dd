"""Resume and safety of a real training run (DeepSpeed ZeRO-3 on the CPU, tiny models):
a run killed mid-way and restarted ends with the same weights as an uninterrupted run, and a
diverging loss stops the run with a clear message, keeping the last good resume state."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vlmswap.data.mini_world import generate
    from vlmswap.image import Geometry
    from vlmswap.language import build_mini_llm
    from vlmswap.vision.vit import build_classifier

    base = tmp_path_factory.mktemp("resume")
    generate(base / "world", seed=1, n_train=60, n_eval=8, n_classify=20, image_size=32, log=lambda m: None)
    build_mini_llm(base / "world" / "text_corpus.txt", base / "llm",
                   {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": 2})
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    arch = study["backbones"]["vit-mini"]["arch"] = {"patch_size": 16, "embed_dim": 32, "depth": 3, "num_heads": 2}
    torch.save(build_classifier(arch, Geometry(32, 32), 12).state_dict(), base / "vit.pth")
    study["recipe"].update(global_batch=4, per_device_batch=2, max_steps=12, checkpoint_every=3, max_length=256)
    study.pop("diagnostics")  # it names cells of the full grid
    study["cells"] = [{"backbone": "vit-mini", "objective": "cls", "geometry": "32", "tap": "block-2",
                       "connector": "mlp2"}]
    study["tables"] = {"t": {"title": "t", "columns": "all", "cells": ["vit-mini@cls@32@block-2@mlp2"]}}
    (base / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return base


def train_cmd(base: Path, out: str, config: str = "study.yaml") -> list[str]:
    return [sys.executable, "-m", "vlmswap.cli", "train", "--config", str(base / config),
            "--cell", "vit-mini@cls@32@block-2@mlp2", "--checkpoint", str(base / "vit.pth"), "--llm", str(base / "llm"),
            "--instruct-json", str(base / "world/llava/llava_v1_5_mix665k.json"),
            "--image-root", str(base / "world/llava"), "--out", str(base / out), "--state-dir", str(base / f"{out}-state")]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_weights(setup):
    base = setup
    straight = subprocess.run(train_cmd(base, "straight"), env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    # progress lines a user can watch: throughput and time left
    assert re.search(r"step 12/12 loss \S+ lr \S+ \(\S+s/step, \d+ tokens/s, ETA 0m00s\)", straight.stdout)

    # start again, kill -9 as soon as resume state exists, then restart the same command
    proc = subprocess.Popen(train_cmd(base, "killed"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = base / "killed-state" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert latest.exists(), "no resume state appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (base / "killed" / "model.safetensors").exists()
    # loss.jsonl grew while the killed run trained, one line per step done
    grown = [json.loads(line)["step"] for line in (base / "killed" / "loss.jsonl").read_text().splitlines()]
    assert len(grown) >= 3 and grown == list(range(1, len(grown) + 1))

    # the resume state names the optimizer that stepped it (a requeue onto another kind is said)
    tag = (base / "killed-state" / "latest").read_text().strip()
    client = torch.load(base / "killed-state" / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    assert client["optimizer"] == "AdamW"

    resumed = subprocess.run(train_cmd(base, "killed"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "warning: the resume state" not in resumed.stdout
    a, b = weights(base / "straight"), weights(base / "killed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    summary = json.loads((base / "killed" / "train.json").read_text())
    assert summary["resumed_from_step"] > 0 and summary["steps"] == 12
    assert summary["micro_batches_without_answer"] == 0
    steps = [json.loads(line)["step"] for line in (base / "killed" / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the resumed history, then the rest: no step twice


@pytest.mark.slow
def test_a_job_near_its_time_limit_saves_stops_and_its_retry_ends_with_the_same_weights(setup):
    """Under SLURM `vlmswap train` reads the job's end time; once less than the margin is left the
    loop saves resume state at the step it is at and exits 75, and the retry finishes the run to the
    bytes of an uninterrupted one, instead of losing up to `checkpoint_every` steps to the kill."""
    base = setup
    if not (base / "straight" / "model.safetensors").exists():
        straight = subprocess.run(train_cmd(base, "straight"), env=ENV, capture_output=True, text=True, timeout=600)
        assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    # an hour's job already within its margin: it stops after the first step (step 1 is no save step)
    near = {**ENV, "VLMSWAP_TIME_LIMIT": f"{time.time() + 60:.0f},3600"}
    first = subprocess.run(train_cmd(base, "limited"), env=near, capture_output=True, text=True, timeout=600)
    assert first.returncode == 75, first.stdout[-3000:] + first.stderr[-3000:]
    assert "resume state saved at step 1/12" in first.stderr and "its retry continues" in first.stderr
    assert (base / "limited-state" / "latest").read_text().strip() == "step-0000001"
    assert not (base / "limited" / "model.safetensors").exists()
    retry = subprocess.run(train_cmd(base, "limited"), env=ENV, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    assert "resumed from" in retry.stdout and "at step 1/12" in retry.stdout
    a, b = weights(base / "straight"), weights(base / "limited")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (base / "limited" / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


@pytest.mark.slow
def test_diverging_loss_stops_with_a_clear_message(setup):
    base = setup
    study = yaml.safe_load((base / "study.yaml").read_text())
    study["recipe"].update(lr=1.0e9, max_grad_norm=1.0e9, warmup_ratio=0.0)
    (base / "diverge.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    run = subprocess.run(train_cmd(base, "diverge", "diverge.yaml"), env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert "TrainingDiverged" in text and "vit-mini@cls@32@block-2@mlp2" in text and "Last good resume state" in text
    assert not (base / "diverge" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_ranks_stop_at_the_same_step_and_rank_0_finishes_the_save_before_any_exits(setup):
    """torchrun ends the other ranks as soon as one exits: every rank waits until rank 0 has
    written `latest`, so the stop of a multi-rank job never leaves its save unnamed."""
    base = setup
    near = {**ENV, "VLMSWAP_TIME_LIMIT": f"{time.time() + 60:.0f},3600"}
    cmd = train_cmd(base, "two")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "vlmswap.cli", *cmd[3:]]
    run = subprocess.run(torchrun, env=near, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr.count("resume state saved at step 1/12") == 1, run.stderr[-3000:]  # said once, by rank 0
    state = base / "two-state"
    assert (state / "latest").read_text().strip() == "step-0000001"
    assert sorted(p.name for p in (state / "step-0000001").glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    assert json.loads((state / "provenance.json").read_text())["world_size"] == 2
    # and one rank cannot continue it: DeepSpeed cannot load two ranks' ZeRO-3 state into one
    alone = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 1 and "was saved by 2 ranks and this job has 1" in alone.stderr, alone.stderr[-3000:]
    assert (state / "latest").is_file()


@pytest.mark.slow
def test_a_max_length_that_cuts_off_every_answer_stops_before_training(setup):
    """Before: every step's loss was 0 (no supervised token) and a model trained on nothing was saved."""
    base = setup
    study = yaml.safe_load((base / "study.yaml").read_text())
    study["recipe"]["max_length"] = 20  # the system prompt alone is longer
    (base / "short.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    run = subprocess.run(train_cmd(base, "short", "short.yaml"), env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    line = run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "short.yaml: recipe.max_length: 20 truncates away every answer token of" in line
    assert "raise it" in line
    assert not (base / "short" / "model.safetensors").exists() and not (base / "short-state").exists()


@pytest.mark.slow
def test_bf16_with_activation_checkpointing_trains(setup):
    """The cluster recipe's precision and activation checkpointing run through the same engine."""
    base = setup
    study = yaml.safe_load((base / "study.yaml").read_text())
    study["recipe"].update(precision="bf16", grad_checkpointing=True, max_steps=3, checkpoint_every=100)
    (base / "bf16.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    run = subprocess.run(train_cmd(base, "bf16", "bf16.yaml"), env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    state = weights(base / "bf16")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    summary = json.loads((base / "bf16" / "train.json").read_text())
    assert summary["recipe"]["grad_checkpointing"] is True and summary["steps"] == 3


@pytest.mark.slow
def test_resume_state_of_another_recipe_is_moved_aside_and_training_restarts(setup):
    """A recipe edit after an interrupted run never continues the old recipe's optimizer state."""
    import json

    base = setup
    proc = subprocess.Popen(train_cmd(base, "edited"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = base / "edited-state" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert latest.exists(), "no resume state appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = json.loads((base / "edited-state" / "provenance.json").read_text())

    study = yaml.safe_load((base / "study.yaml").read_text())
    study["recipe"]["lr"] = study["recipe"]["lr"] / 2
    (base / "study-lr.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    run = subprocess.run(train_cmd(base, "edited", "study-lr.yaml"), env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "resumed from" not in run.stdout
    moved = [line for line in run.stdout.splitlines() if "moved aside" in line]
    assert len(moved) == 1 and "spec.recipe.lr" in moved[0]
    (aside,) = base.glob("edited-state.stale-*")
    assert (aside / "latest").is_file()  # the old state is kept for the user, not deleted
    summary = json.loads((base / "edited" / "train.json").read_text())
    assert summary["resumed_from_step"] == 0
    assert summary["provenance"]["fingerprint"] != recorded["fingerprint"]
    assert summary["provenance"]["spec"]["recipe"]["lr"] == study["recipe"]["lr"]


@pytest.mark.slow
def test_cached_features_train_the_same_model_and_are_reused_after_the_first_epoch(setup):
    """`recipe.cache_features` computes the frozen tower's features once per example: the same
    weights as recomputing them every epoch (up to float rounding), with every later draw reused."""
    base = setup
    study = yaml.safe_load((base / "study.yaml").read_text())
    study["recipe"].update(max_steps=None, epochs=2, checkpoint_every=1000)
    for name, cached in (("recompute.yaml", False), ("cached.yaml", True)):
        changed = copy.deepcopy(study)
        changed["recipe"]["cache_features"] = cached
        (base / name).write_text(yaml.safe_dump(changed, sort_keys=False))
    for name in ("recompute", "cached"):
        run = subprocess.run(train_cmd(base, name, f"{name}.yaml"), env=ENV, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    a, b = weights(base / "recompute"), weights(base / "cached")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    summary = json.loads((base / "cached" / "train.json").read_text())
    cache = summary["feature_cache"]
    assert cache["computed"] == 60 and cache["reused"] > 0  # each of the 60 images once, then from memory
    assert "feature_cache" not in json.loads((base / "recompute" / "train.json").read_text())


def _killed_once_state_exists(cmd: list[str], state_dir: Path) -> None:
    """Start a training and SIGKILL it as soon as its first resume state is complete."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (state_dir / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert (state_dir / "latest").exists(), "no resume state appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_cached_features_resume_to_the_same_bytes_in_either_epoch(setup):
    """A feature's bits depend on the batch the tower computed it in. A run resumed with
    `cache_features` rebuilds its cache through the micro-batches it had trained on, so the resumed
    weights are bit-identical to an uninterrupted run's whether the kill landed in the first epoch
    (features of the examples trained before it are needed later) or a later one (all of them)."""
    base = setup
    study = yaml.safe_load((base / "study.yaml").read_text())
    study["recipe"].update(max_steps=None, epochs=2, checkpoint_every=1000, cache_features=True)
    (base / "cache-straight.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    run = subprocess.run(train_cmd(base, "cache-straight", "cache-straight.yaml"), env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    straight = json.loads((base / "cache-straight" / "train.json").read_text())
    steps = straight["steps"]
    per_epoch = steps // 2
    expected = weights(base / "cache-straight")
    # checkpoint_every is not part of what determines the model, so these runs resume its state
    for name, first_state in (("cache-epoch1", 3), ("cache-epoch2", per_epoch + 3)):
        assert first_state < steps - 3
        study["recipe"]["checkpoint_every"] = first_state
        (base / f"{name}.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
        cmd = train_cmd(base, name, f"{name}.yaml")
        _killed_once_state_exists(cmd, base / f"{name}-state")
        assert not (base / name / "model.safetensors").exists()
        resumed = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "resumed from" in resumed.stdout and "feature cache rebuilt" in resumed.stdout
        got = weights(base / name)
        assert got.keys() == expected.keys()
        assert [k for k in expected if not torch.equal(expected[k], got[k])] == [], name
        summary = json.loads((base / name / "train.json").read_text())
        assert summary["resumed_from_step"] >= first_state
        assert summary["feature_cache"] == straight["feature_cache"], name
