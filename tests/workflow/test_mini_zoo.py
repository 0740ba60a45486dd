"""Every backbone family through the real DAG (config/mini-zoo.yaml, trimmed): a tiny member of each
is pretrained on the mini world for its objective, saved in its family's official layout, fetched,
loaded with strict keys, trained into a VLM and scored. Marked slow; CI runs it."""

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from tests.workflow.test_mini_end_to_end import ROOT, snakemake
from vlmswap.checkpoint import read_checkpoint
from vlmswap.vision.registry import FAMILIES


def trimmed_zoo(tmp_path: Path) -> Path:
    study = yaml.safe_load((ROOT / "config" / "mini-zoo.yaml").read_text())
    study["study"] = "zoo"
    study["mini"].update(n_train=40, n_eval=12, n_classify=48, pretrain_epochs=1)
    study["recipe"].update(epochs=1, checkpoint_every=50)
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_the_zoo_covers_every_family_and_objective_kind():
    study = yaml.safe_load((ROOT / "config" / "mini-zoo.yaml").read_text())
    used = {study["backbones"][c["backbone"]]["family"] for c in study["cells"]}
    assert used == set(FAMILIES)  # the registry is the list: a new family needs a zoo member
    kinds = {study["objectives"][c["objective"]]["kind"] for c in study["cells"]}
    assert kinds == {"classification", "detection", "segmentation", "fused"}
    assert {c["connector"] for c in study["cells"]} == {"mlp2", "mlp3"}


@pytest.mark.slow
def test_every_family_pretrains_loads_trains_and_scores(tmp_path):
    config = trimmed_zoo(tmp_path)
    run = snakemake(tmp_path, config)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    study = yaml.safe_load(config.read_text())
    out, res = tmp_path / "results" / "zoo", tmp_path / "resources" / "zoo"

    # the official containers, as the fetch step took them
    layouts = {}
    for backbone, spec in study["backbones"].items():
        for objective in spec["checkpoints"]:
            if spec["family"] == "fused":
                continue
            path = res / "checkpoints" / f"{backbone}@{objective}.ckpt"
            checkpoint = read_checkpoint(path)
            kind = study["objectives"][objective]["kind"]
            layouts[(spec["family"], kind)] = checkpoint
            if spec["family"] == "vitdet":  # a detectron2 pickle of numpy arrays
                with open(path, "rb") as f:
                    raw = pickle.load(f)
                assert all(k.startswith(("backbone.net.", "roi_heads.")) for k in raw["model"])
            elif kind in ("detection", "segmentation"):
                assert set(checkpoint) == {"meta", "state_dict"}
                assert any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    assert set(layouts["vmamba", "classification"]) >= {"model", "model_ema", "config"}
    assert "state_dict_ema" in layouts["mambavision", "classification"]
    assert "args" in layouts["vim", "classification"]
    assert all(isinstance(v, torch.Tensor) for v in layouts["maxvit", "classification"].values())
    assert "head.fc.weight" in layouts["timm", "classification"]  # timm hub weights, classifier included
    hf_file = res / "checkpoints" / "dinov2-hf-mini@cls.ckpt"  # transformers' model.safetensors
    with open(hf_file, "rb") as f:
        assert f.read(9)[8:9] == b"{"  # the safetensors header, not a pickle
    assert {"classifier.weight", "dinov2.embeddings.cls_token"} <= set(layouts["hf", "classification"])

    for cell in study["tables"]["zoo"]["cells"]:
        summary = json.loads((out / "models" / cell / "train.json").read_text())
        assert summary["loss_final"] < summary["loss_first"], cell
        for bench in ("vqa-v2", "refcoco"):
            result = json.loads((out / "evals" / cell / f"{bench}.json").read_text())
            assert result["n_samples"] > 0 and result["n_skipped"] == 0, (cell, bench)
    md = (out / "tables" / "zoo.md").read_text()
    for display in ("MaxViT-mini", "Vim-mini", "ViTDet-mini", "DeiT-Adapter-mini", "BEiT-Adapter-mini",
                    "DINO-mini/ViT-mini(f)", "ConvNeXt-mini", "DINOv2-HF-mini"):
        assert display in md
