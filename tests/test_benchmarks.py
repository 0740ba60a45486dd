"""The benchmark scripts run (smoke runs on the CPU at tiny sizes; no timing is asserted)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbones_script_builds_and_runs_the_paper_families(capsys):
    rows = _load("backbones").main(["--device", "cpu", "--dtype", "float32", "--batch", "1", "--size", "64",
                                    "--families", "vit,vim", "--warmup", "0", "--repeats", "1"])
    assert [r["family"] for r in rows] == ["vit", "vim"]
    assert all(r["tokens_ok"] and r["ms"] > 0 for r in rows)
    assert "fused selective scan: not available here (no CUDA device)" in capsys.readouterr().out


def test_scan_script_times_every_path_against_the_reference(capsys):
    results = _load("scan").main(["--scale", "16", "--repeats", "1", "--warmup", "0", "--threads", "1"])
    assert set(results) == {"VMamba-T stage-1", "VMamba-T stage-3", "Vim-S one direction"}
    for paths in results.values():
        assert {"reference", "chunked"} <= set(paths)
        assert all(p["ms"] > 0 and p["error"] < 1e-5 and p["bound_ms"] > 0 for p in paths.values())
    assert "targets: stage 1 >= 20x" in capsys.readouterr().out


def test_generate_script_compares_batched_with_one_at_a_time(capsys):
    results = _load("generate").main(["--n", "4", "--batch", "2", "--max-new-tokens", "3", "--hidden", "32",
                                      "--layers", "1", "--threads", "1", "--clock", "cpu"])
    assert results["generation"]["same"] == 4 and results["choice probabilities"]["same"] == 4
    assert "target (batched generation >= 8x" in capsys.readouterr().out


def test_gpu_check_runs_the_parts_after_a_failed_one_and_exits_nonzero(monkeypatch, capsys):
    """A device is lent for minutes: one broken part must not cost the figures of the others."""
    check = _load("gpu_check")

    def broken_step(**_sizes):
        raise RuntimeError("CUDA_HOME does not exist, unable to compile CUDA op(s)")

    class Generate:
        @staticmethod
        def main(options):
            return {"options": options}

    monkeypatch.setattr(check, "train_step", broken_step)
    monkeypatch.setattr(check, "_script", lambda name: Generate)
    with pytest.raises(SystemExit) as ended:
        check.main(["--smoke", "--parts", "train,generate"])
    assert ended.value.code == 1
    captured = capsys.readouterr()
    assert "== 3. one ZeRO-3 training step" in captured.out and "== 4. batched generation" in captured.out
    assert "failed: train" in captured.out and "CUDA_HOME does not exist" in captured.err


def _run_script(*args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu_at_tiny_sizes():
    done = _run_script("gpu_check.py", "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    for part in ("== 1.", "== 2.", "== 3.", "== 4.", "train step: connector + Llama", "tokens/s, MFU",
                 "gpu check done"):
        assert part in done.stdout


@pytest.mark.slow
def test_llm_load_script_partitions_the_llm_across_ranks():
    done = _run_script("llm_load.py", "--hidden", "256", "--layers", "2", "--vocab", "4000")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(":")[0].strip(): line for line in done.stdout.splitlines() if ":" in line}

    def held_params(way):
        return float(lines[way].split("held by a rank")[1].split("M of")[0].replace(",", ""))

    assert held_params("whole-fp32") == held_params("whole")
    # each rank holds its shard (ds_tensor, counted) of every partitioned parameter: less than all of it
    assert 0 < held_params("partitioned") < held_params("whole")
    assert "rank 0" in lines and "rank 1" in lines and "held after the load" in lines
