"""Linear probing: C is chosen on a validation split of the training set, the mini world's split
is read as written, and the summary answers with a rank correlation against the VLM scores."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlmswap.diagnostics.probes import C_GRID, _load_split, fit_linear_probe, spearman, write_probe_summary


def test_the_probe_learns_a_separable_set_and_reports_the_chosen_c():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 600)
    x = centers[y] + rng.normal(size=(600, 16))
    result = fit_linear_probe(x[:450], y[:450], x[450:], y[450:])
    assert result["accuracy"] > 95 and result["C"] in C_GRID
    assert set(result["val_accuracy"]) == {str(c) for c in C_GRID} and result["n_test"] == 150
    noise = fit_linear_probe(rng.normal(size=(450, 16)), y[:450], rng.normal(size=(150, 16)), y[450:])
    assert noise["accuracy"] < 50  # chance is 33%


def test_the_mini_classification_set_is_read_train_and_val(tmp_path):
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "label": i % 2}) + "\n"
                                                  for i in range(3)))
    (tmp_path / "val.jsonl").write_text(json.dumps({"image": "3.png", "label": 1}) + "\n")
    train = _load_split("mini-classify", tmp_path, "train", 10, seed=0)
    test = _load_split("mini-classify", tmp_path, "test", 10, seed=0)
    assert sorted(label for _, label in train) == [0, 0, 1] and [label for _, label in test] == [1]
    assert train[0][0]().size == (8, 8) and len(_load_split("mini-classify", tmp_path, "train", 2, seed=0)) == 2


def test_spearman_is_a_rank_correlation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))


def test_the_summary_correlates_mean_probe_accuracy_with_each_score(tmp_path):
    files = []
    for i, cell in enumerate(["a@x@1@t@mlp2", "b@x@1@t@mlp2", "c@x@1@t@mlp2"]):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps({"cell": cell, "datasets": {"d": {"accuracy": 50.0 + i, "C": 1.0}}}))
        files.append(path)
        (tmp_path / "evals" / cell).mkdir(parents=True)
        (tmp_path / "evals" / cell / "vqa-v2.json").write_text(json.dumps({"columns": {"vqa-v2": 40.0 - i}}))
    study = SimpleNamespace(benchmarks=["vqa-v2", "refcoco"])
    out = write_probe_summary(study, files, tmp_path, tmp_path / "p.csv", tmp_path / "p.md", tmp_path / "p.png")
    assert out["correlations"]["vqa-v2"] == (pytest.approx(-1.0), 3)
    assert "| vqa-v2 | -1.000 | 3 |" in (tmp_path / "p.md").read_text()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
