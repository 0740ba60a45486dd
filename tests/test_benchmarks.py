"""The benchmark scripts run (smoke runs on the CPU at tiny sizes; no timing is asserted)."""

import importlib.util
from pathlib import Path

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
