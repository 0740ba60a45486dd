"""Profiling: resolutions ascending, host-side metrics and peak RSS on the CPU, mean over the
iterations after warm-up, the sweep stops at the first out-of-memory resolution, six panels."""

import csv
import copy

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from vlmswap.diagnostics import profiling
from vlmswap.language import PAD_TOKEN, train_tokenizer
from vlmswap.study import study_from_dict

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELL = "vmamba-mini@cls@64@stage3@mlp2"


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llm")
    tok = train_tokenizer(["USER: what color is it ASSISTANT: red blue green yes no 1 2 3"] * 5, 120)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def study():
    raw = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["diagnostics"]["profile"].update(resolutions=[64, 32, 96], iterations=3, warmup=1, text_tokens=8)
    return study_from_dict(raw, "mini.yaml")


def test_sweeps_ascending_with_host_metrics_on_the_cpu(study, llm_dir, tmp_path):
    rows = profiling.profile_cell(study, study.cell(CELL), llm_dir, tmp_path / "p.csv", log=lambda m: None)
    assert [r.resolution for r in rows] == [32, 64, 96]
    assert [r.visual_tokens for r in rows] == [4, 16, 36]
    for r in rows:
        assert r.status == "ok" and r.device == "cpu" and r.peak_mem_kind == "cpu peak rss"
        assert r.host_vision_ms > 0 and r.host_llm_ms > 0 and r.e2e_ms >= r.host_llm_ms
        assert r.gpu_vision_ms == r.gpu_llm_ms == ""
    written = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [w["resolution"] for w in written] == ["32", "64", "96"] and list(written[0]) == profiling.COLUMNS


def test_a_fused_backbone_is_profiled_with_one_view_per_tower(study, llm_dir, tmp_path):
    """A fused backbone takes one normalized RGB view per tower, stacked along the channels."""
    cell = study.cell("dino-mini+vit-mini@fused@64@block-2@mlp3")
    rows = profiling.profile_cell(study, cell, llm_dir, tmp_path / "p.csv", log=lambda m: None)
    assert [r.status for r in rows] == ["ok"] * 3 and all(r.host_vision_ms > 0 for r in rows)


def test_the_mean_skips_the_warmup_and_the_sweep_stops_at_the_first_oom(study, llm_dir, tmp_path, monkeypatch):
    calls = []

    def fake_forward(vision, head, pixels, input_ids, mask, cuda):
        calls.append(pixels.shape[-1])
        if pixels.shape[-1] == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        n = len(calls)  # 1, 2, 3 at 32 px: the warm-up iteration (1) is not averaged
        return {"host_vision_ms": float(n), "host_llm_ms": 1.0, "e2e_ms": 2.0 * n}

    monkeypatch.setattr(profiling, "_forward_once", fake_forward)
    rows = profiling.profile_cell(study, study.cell(CELL), llm_dir, tmp_path / "p.csv", log=lambda m: None)
    assert [(r.resolution, r.status) for r in rows] == [(32, "ok"), (64, "oom")]  # 96 is never tried
    assert rows[0].host_vision_ms == 2.5 and rows[0].e2e_ms == 5.0
    assert rows[1].e2e_ms == "" and rows[1].peak_mem_mb == ""
    assert 96 not in calls


def test_an_error_that_is_not_oom_is_raised(study, llm_dir, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(profiling, "_forward_once", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        profiling.profile_cell(study, study.cell(CELL), llm_dir, tmp_path / "p.csv", log=lambda m: None)


def test_the_figure_has_six_panels_and_marks_oom(tmp_path):
    path = tmp_path / "a.csv"
    rows = [{"cell": CELL, "family": "vmamba", "resolution": r, "visual_tokens": 1, "device": "cpu", "iterations": 3,
             "warmup": 1, "host_vision_ms": 1.0 * r, "host_llm_ms": 2.0, "gpu_vision_ms": "", "gpu_llm_ms": "",
             "e2e_ms": 3.0, "peak_mem_mb": 100.0, "peak_mem_kind": "cpu peak rss", "status": "ok"} for r in (32, 64)]
    rows.append({**rows[-1], "resolution": 96, "status": "oom", "e2e_ms": "", "peak_mem_mb": ""})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=profiling.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    out = profiling.write_profile_summary([path], tmp_path / "all.csv", tmp_path / "all.png", "t")
    assert len(out) == 3 and (tmp_path / "all.png").read_bytes()[:4] == b"\x89PNG"
    assert len(profiling.PANELS) == 6
