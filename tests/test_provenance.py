"""Provenance: what determines a model, a prediction file and a result, and tables that never
aggregate a result that belongs to another model than the cell's current one."""

import json
from pathlib import Path

import pytest

from vlmswap.analysis.report import write_study_table
from vlmswap.provenance import (differences, eval_settings, model_spec, move_aside, result_record,
                                result_staleness, sealed)
from vlmswap.study import load_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mini():
    return load_study(ROOT / "config" / "mini.yaml")


def test_a_fingerprint_covers_the_record_and_nothing_else():
    a = sealed({"kind": "model", "spec": {"lr": 1}})
    assert sealed(a) == a  # sealing twice changes nothing
    assert sealed({"kind": "model", "spec": {"lr": 2}})["fingerprint"] != a["fingerprint"]
    assert sealed({"spec": {"lr": 1}, "kind": "model"})["fingerprint"] == a["fingerprint"]  # key order
    assert differences(a, sealed({"kind": "model", "spec": {"lr": 2}})) == ["spec.lr"]
    assert differences(None, a) == ["<no record>"]


def test_the_model_spec_holds_what_determines_a_cell_and_not_how_it_runs(mini):
    cell = mini.cell("vmamba-mini@seg@64@stage3-outnorm@mlp2")
    spec = model_spec(mini, cell)
    assert spec["backbone"]["family"] == "vmamba" and spec["backbone"]["arch"]["dims"] == 32
    assert spec["backbone"]["checkpoint"] == {"seg": {"mini": {}}}
    assert (spec["tap"], spec["geometry"], spec["connector"]) == ("stage3-outnorm", "64", "mlp2")
    assert spec["recipe"]["lr"] == 1e-3 and "checkpoint_every" not in spec["recipe"]
    text = json.dumps(spec)
    assert "train_resources" not in text and "python" not in text and "gpus" not in text
    fused = model_spec(mini, mini.cell("dino-mini+vit-mini@fused@64@block-2@mlp3"))
    assert set(fused["backbone"]["members"]) == {"dino-mini", "vit-mini"}
    assert eval_settings(mini) == {"batch_size": 16, "max_new_tokens": 48}


def test_stale_state_is_moved_aside_with_one_line_naming_the_difference(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "latest").write_text("step-1")
    said = []
    moved = move_aside(folder, ["spec.recipe.lr"], said.append)
    assert not folder.exists() and (moved / "latest").read_text() == "step-1"
    assert len(said) == 1 and "spec.recipe.lr" in said[0] and moved.name in said[0]


def _model(lr):
    return sealed({"kind": "model", "spec": {"recipe": {"lr": lr}}})


def _result(model, weights):
    pred = sealed({"kind": "predictions", "model": model["fingerprint"], "weights_sha256": weights})
    return {"provenance": result_record(pred, "scorer")}


def test_a_result_is_current_only_for_the_model_and_weights_train_json_records():
    model = _model(1e-3)
    summary = {"provenance": model, "model_sha256": "a" * 64}
    assert result_staleness(_result(model, "a" * 64), summary) is None
    assert "another config" in result_staleness(_result(_model(2e-3), "a" * 64), summary)
    assert "replaced" in result_staleness(_result(model, "b" * 64), summary)
    assert "no provenance" in result_staleness({"columns": {}}, summary)
    assert "no trained model" in result_staleness(_result(model, "a" * 64), None)


def _write_cell(results, cell_id, model, weights, scores):
    (results / "models" / cell_id).mkdir(parents=True)
    (results / "models" / cell_id / "train.json").write_text(json.dumps(
        {"provenance": model, "model_sha256": "a" * 64, "visual_tokens": 36}))
    (results / "evals" / cell_id).mkdir(parents=True)
    for bench, score in scores.items():
        (results / "evals" / cell_id / f"{bench}.json").write_text(json.dumps(
            {"cell": cell_id, "benchmark": bench, "columns": {bench: score}, "n_samples": 100, "n_skipped": 0,
             **_result(model if weights == "a" * 64 else _model(9.0), weights)}))


def test_a_table_names_a_stale_result_and_leaves_it_out_of_every_average(mini, tmp_path):
    fresh, stale = "vmamba-mini@cls@64@stage3@mlp2", "vmamba-mini@seg@64@stage3-outnorm@mlp2"
    _write_cell(tmp_path, fresh, _model(1e-3), "a" * 64, {"vqa-v2": 50.0, "refcoco": 10.0})
    _write_cell(tmp_path, stale, _model(1e-3), "b" * 64, {"vqa-v2": 53.85, "refcoco": 12.0})
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    write_study_table(mini, "mini-objective", tmp_path, csv, md, log=lambda m: None)
    text = md.read_text()
    stale_row = next(line for line in text.splitlines() if line.startswith("| MINI-SEG"))
    assert "53.85" not in text and "stale" in stale_row
    assert f"Stale: {stale}: the vqa-v2 result is left out" in text and f"Stale: {stale}: the refcoco result is left out" in text
    fresh_row = next(line for line in text.splitlines() if line.startswith("| MINI-CLS"))
    assert "50.00" in fresh_row and "stale" not in fresh_row
    import pandas as pd

    frame = pd.read_csv(csv, index_col="cell_id")  # vqa-v2, refcoco and their averages empty
    assert frame.loc[stale, ["vqa-v2", "refcoco", "vqa-weighted", "loc-weighted", "overall-weighted"]].isna().all()


def test_status_tells_current_stale_and_missing_results(tmp_path, capsys):
    from vlmswap.cli import main

    fresh, stale = "vmamba-mini@cls@64@stage3@mlp2", "vmamba-mini@seg@64@stage3-outnorm@mlp2"
    _write_cell(tmp_path, fresh, _model(1e-3), "a" * 64, {"vqa-v2": 50.0, "refcoco": 10.0})
    _write_cell(tmp_path, stale, _model(1e-3), "b" * 64, {"vqa-v2": 53.85})
    main(["status", "--config", str(ROOT / "config" / "mini.yaml"), "--results", str(tmp_path), "--json",
          "--workdir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    cells = {c["cell"]: {s["stage"]: s for s in c["stages"]} for c in report["cells"]}
    assert cells[fresh]["evaluate:vqa-v2"]["state"] == "done"
    assert cells[stale]["evaluate:vqa-v2"]["state"] == "stale" and "another config" in cells[stale]["evaluate:vqa-v2"]["why"]
    assert cells[stale]["evaluate:refcoco"]["state"] == "missing"
    assert cells["vit-mini@cls@64@block-2@mlp2"]["train"]["state"] == "missing"
    evals = [s["state"] for c in cells.values() for name, s in c.items() if name.startswith("evaluate:")]
    assert (evals.count("done"), evals.count("stale"), evals.count("missing")) == (2, 1, 15)  # 9 cells (7 + 2 stage-ablation) x 2 benchmarks
    main(["status", "--config", str(ROOT / "config" / "mini.yaml"), "--results", str(tmp_path)])
    text = capsys.readouterr().out
    assert f"stale: {stale} evaluate:vqa-v2:" in text and "1 stale" in text
