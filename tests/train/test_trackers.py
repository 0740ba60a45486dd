"""Optional experiment trackers: jsonl always (the loop's loss.jsonl), wandb and tensorboard only
when the study lists them, imported only then, wandb offline by default. No network: wandb is a
stand-in module here."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest
import yaml

from vlmswap.study import ConfigError, study_from_dict
from vlmswap.train.trackers import TrackerError, open_trackers

ROOT = Path(__file__).resolve().parents[2]
RECORD = {"step": 3, "loss": 2.5, "lr": 1e-3, "seconds": 0.4}


def test_jsonl_alone_starts_nothing_and_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    trackers = open_trackers(["jsonl"], tmp_path, "cell", {})
    trackers.log(RECORD)
    trackers.close()
    assert trackers.backends == [] and "wandb" not in sys.modules
    assert not any(tmp_path.iterdir())


def test_wandb_is_offline_by_default_and_gets_every_step(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    trackers = open_trackers(["jsonl", "wandb"], tmp_path, "vit-mini@cls@96@block-2@mlp2", {"lr": 1e-3})
    trackers.log(RECORD)
    trackers.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["name"] == "vit-mini@cls@96@block-2@mlp2"
    assert init["config"] == {"lr": 1e-3} and Path(init["dir"]) == tmp_path
    assert calls[1] == ("log", {"train/loss": 2.5, "train/lr": 1e-3, "train/seconds": 0.4}, 3)
    assert calls[2] == ("finish",)


def test_a_chosen_tracker_that_is_not_installed_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(TrackerError, match=r"config/x.yaml: .*'wandb'.*pip install wandb.*remove 'wandb'"):
        open_trackers(["wandb"], tmp_path, "cell", {}, "config/x.yaml")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TrackerError, match="pip install tensorboard"):
        open_trackers(["tensorboard"], tmp_path, "cell", {}, "config/x.yaml")


def test_the_config_accepts_only_known_trackers():
    raw = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    ok = copy.deepcopy(raw)
    ok["trackers"] = ["jsonl", "wandb"]
    assert study_from_dict(ok, "mini.yaml").raw["trackers"] == ["jsonl", "wandb"]
    bad = copy.deepcopy(raw)
    bad["trackers"] = ["mlflow"]
    with pytest.raises(ConfigError, match="trackers"):
        study_from_dict(bad, "mini.yaml")
