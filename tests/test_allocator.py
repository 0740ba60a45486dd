"""CPU runs keep freed memory in the process: buffers of a few MB reuse pages, not fresh ones."""

import json
import platform
import subprocess
import sys

import pytest

# Four 3 MiB buffers alive at once, then freed, forty times: the pattern of a layer's activations.
# Minor page faults per round are counted, not seconds.
ROUNDS = """
import json, resource, sys
import torch
from vlmswap.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
def one_round():
    bufs = [torch.empty(768 * 1024).fill_(1.0) for _ in range(4)]  # 3 MiB each, every page touched
    del bufs
for _ in range(3):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    one_round()
print(json.dumps({"applied": applied, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40}))
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's mallopt thresholds")


def _faults_per_round(mode: str, env_extra: dict | None = None) -> dict:
    import os

    # glibc's initial thresholds, pinned: left dynamic, they follow what the imports happened to
    # free, and the defaults' count would vary from run to run; keep_freed_memory overrides them
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_without_page_faults_once_the_thresholds_are_raised():
    default = _faults_per_round("default")
    kept = _faults_per_round("kept")
    assert kept["applied"] is True
    # 4 x 768 pages are touched a round: glibc's initial thresholds hand them back and fault them in again
    assert default["faults"] > 2000, default
    assert kept["faults"] < 50, kept


def test_the_opt_out_keeps_glibcs_defaults():
    kept = _faults_per_round("kept", {"VLMSWAP_GLIBC_MALLOC_DEFAULTS": "1"})
    assert kept["applied"] is False
    assert kept["faults"] > 2000, kept


def test_cpu_placement_raises_the_thresholds(monkeypatch):
    import torch

    from vlmswap import vlm

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vlm, "keep_freed_memory", lambda: calls.append("inference") or True)
    assert vlm.inference_placement() == ("cpu", torch.float32)
    assert calls == ["inference"]


def test_training_on_the_cpu_raises_the_thresholds(tmp_path):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VLMSWAP_GLIBC_MALLOC_DEFAULTS"):
        env.pop(key, None)
    code = ("from vlmswap import allocator\nfrom vlmswap.train.engine import init_deepspeed\n"
            "assert allocator._applied is None\ninit_deepspeed()\nprint(allocator._applied)")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "True"
