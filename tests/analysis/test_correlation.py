"""Benchmark x benchmark Pearson correlation over runs, and its CSV + heatmap output."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmswap.analysis.correlation import correlation_matrix, write_correlation

COLUMNS = ["vqa-v2", "gqa", "pope", "refcoco"]


def random_scores(n=12, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1))
    values = 50 + 10 * (base + rng.normal(scale=[0.3, 0.8, 1.5, 3.0], size=(n, 4)))
    return pd.DataFrame(values, index=[f"cell{i}" for i in range(n)], columns=COLUMNS)


def test_matches_numpy_corrcoef():
    scores = random_scores()
    matrix = correlation_matrix(scores, COLUMNS)
    expected = np.corrcoef(scores.to_numpy(), rowvar=False)
    np.testing.assert_allclose(matrix.to_numpy(), expected, atol=1e-12)
    assert list(matrix.index) == COLUMNS and list(matrix.columns) == COLUMNS
    assert matrix.attrs["n_runs"] == 12 and matrix.attrs["warnings"] == []


def test_uses_only_cells_with_all_columns():
    scores = random_scores()
    scores.loc["cell3", "gqa"] = np.nan
    scores["n:gqa"] = 1.0  # other columns of the frame are ignored
    matrix = correlation_matrix(scores, COLUMNS)
    complete = scores.drop(index="cell3")[COLUMNS].to_numpy()
    np.testing.assert_allclose(matrix.to_numpy(), np.corrcoef(complete, rowvar=False), atol=1e-12)
    assert matrix.attrs["n_runs"] == 11 and "cell3" not in matrix.attrs["cells"]


def test_too_few_runs_is_a_clear_error():
    scores = random_scores(n=4)
    scores.loc[["cell0", "cell1"], "refcoco"] = np.nan
    with pytest.raises(ValueError, match=r"at least 3 runs .* only 2 of 4 do .*cell0, cell1"):
        correlation_matrix(scores, COLUMNS, min_runs=3)
    assert correlation_matrix(scores, COLUMNS, min_runs=2).attrs["n_runs"] == 2


def test_unknown_column_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no column\(s\) \['ocid-ref'\]"):
        correlation_matrix(random_scores(), ["vqa-v2", "ocid-ref"])


def test_constant_column_gives_nan_and_a_warning():
    scores = random_scores()
    scores["pope"] = 80.0
    matrix = correlation_matrix(scores, COLUMNS)
    assert matrix.loc["pope"].isna().all() and matrix["pope"].isna().all()
    others = [c for c in COLUMNS if c != "pope"]
    np.testing.assert_allclose(
        matrix.loc[others, others].to_numpy(), np.corrcoef(scores[others].to_numpy(), rowvar=False), atol=1e-12
    )
    (warning,) = matrix.attrs["warnings"]
    assert "pope" in warning and "constant" in warning


def test_write_correlation_csv_and_png(tmp_path):
    scores = random_scores()
    scores["pope"] = 80.0
    matrix = correlation_matrix(scores, COLUMNS)
    out_csv, out_png = tmp_path / "corr" / "vqa.csv", tmp_path / "corr" / "vqa.png"

    write_correlation(matrix, out_csv, out_png, "Benchmark correlation", n_runs=matrix.attrs["n_runs"])

    back = pd.read_csv(out_csv, index_col=0)
    np.testing.assert_allclose(back.to_numpy(), matrix.to_numpy(), atol=1e-15)  # NaN round-trips as empty
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out_png) as image:
        image.verify()
    with Image.open(out_png) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["vqa.csv", "vqa.png"]
