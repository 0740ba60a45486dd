"""Preflight: before any download or job, every input to place by hand is named with where it
goes and where to get it, disk and credentials are checked, and the grid's cost is stated."""

import copy
from pathlib import Path

import pytest
import yaml

from vlmswap.cli import main
from vlmswap.preflight import run_preflight
from vlmswap.study import study_from_dict

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config" / "experiments.yaml").read_text())


def paper(**changes):
    data = copy.deepcopy(PAPER)
    data.update(changes)
    return study_from_dict(data, "experiments.yaml")


def test_every_hand_placed_input_of_the_paper_is_named_with_where_to_get_it(tmp_path):
    report = run_preflight(paper(), tmp_path / "resources")
    missing = [h for h in report.hand_placed if not h["present"]]
    # OCR-VQA's images and TextVQA's OCR question file have direct sources (tests/test_download.py)
    assert {Path(h["path"]).name for h in missing} == {"val_expressions.json", "OCID-dataset"}
    assert all(h["get"] and str(tmp_path) in h["where"] for h in missing)
    assert sum("to place by hand" in p for p in report.problems) == 2


def test_placed_inputs_pass_and_the_grid_cost_is_stated(tmp_path):
    res = tmp_path / "resources"
    for item in PAPER["placed_by_hand"]:
        target = res / item["path"]
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}")
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "x.jpg").write_bytes(b"x")
    report = run_preflight(paper(), res)
    assert not [p for p in report.problems if "by hand" in p]
    train = PAPER["train_resources"]
    assert report.jobs["train"] == 105 and report.jobs["evaluate"] == 210  # 99 rows + 6 stage-ablation cells
    assert report.gpu_hours >= 105 * train["gpus_per_node"] * train["runtime_min"] / 60
    assert report.download_gb > 100  # the image archives alone (size_gb in the config)


def test_disk_and_gated_repositories_are_checked(tmp_path, monkeypatch):
    data = copy.deepcopy(PAPER)
    data["placed_by_hand"] = []
    data["llm"]["source"] = {"hub": "meta-llama/Llama-2-7b-hf", "gated": True, "size_gb": 10**6}
    study = study_from_dict(data, "experiments.yaml")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-token-here"))
    report = run_preflight(study, tmp_path / "resources")
    assert any(p.startswith("disk: the downloads need") for p in report.problems)
    assert any("meta-llama/Llama-2-7b-hf" in p and "HF_TOKEN" in p for p in report.problems)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert not any("HF_TOKEN" in p for p in run_preflight(study, tmp_path / "resources").problems)


def test_the_command_exits_non_zero_and_writes_no_report_on_a_problem(tmp_path, capsys):
    out = tmp_path / "preflight.json"
    with pytest.raises(SystemExit) as stop:
        main(["preflight", "--config", str(ROOT / "config" / "experiments.yaml"),
              "--resources", str(tmp_path / "resources"), "--out", str(out)])
    assert stop.value.code == 1 and not out.exists()
    text = capsys.readouterr().out
    assert "MISSING" in text and "val_expressions.json" in text and "preflight: " in text


def test_the_mini_study_needs_nothing_by_hand(tmp_path):
    out = tmp_path / "preflight.json"
    main(["preflight", "--config", str(ROOT / "config" / "mini.yaml"), "--resources", str(tmp_path), "--out", str(out)])
    assert out.is_file()
