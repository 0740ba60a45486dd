"""The study's figures: every declared figure is written as PNG + PDF, with data or with a note
saying why it is empty, and titles stay inside the figure (the heatmap used to cut its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from tests.analysis.test_report import BENCHMARK_COLUMNS, PAPER_CONFIG, write_model, write_result
from vlmswap.analysis.correlation import write_correlation
from vlmswap.analysis.figures import correlation_figure, figure_names, write_study_figures
from vlmswap.study import load_study, study_from_dict

REPO = Path(__file__).resolve().parents[2]


def ink_at_the_edges(png: Path, top_fraction: float = 0.2) -> bool:
    """Whether anything is drawn in the outermost pixel columns of the figure's top part (where a
    title that runs past the figure's width would be cut)."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    top = pixels[: int(len(pixels) * top_fraction)]
    return bool((top[:, :2] < 250).any() or (top[:, -2:] < 250).any())


def test_every_declared_figure_is_written_as_png_and_pdf(tmp_path):
    raw = yaml.safe_load(PAPER_CONFIG.read_text())  # the paper grid with three of its tables (speed)
    raw["tables"] = {t: raw["tables"][t] for t in ("table-1", "table-2", "table-5")}
    study = study_from_dict(raw, PAPER_CONFIG)
    results = tmp_path / "results"
    for cell in study.cells[:30]:  # a third of the grid finished: figures of a study in progress
        write_model(results, cell.id)
        (results / "models" / cell.id / "loss.jsonl").write_text(
            "".join(f'{{"step": {i}, "loss": {3 / i:.4f}, "lr": 0.001, "seconds": 0.1}}\n' for i in range(1, 40)))
        for benchmark in study.benchmarks:
            write_result(results, cell.id, benchmark, {c: cell.paper[c] for c in BENCHMARK_COLUMNS[benchmark]})
    out = tmp_path / "figures"
    write_study_figures(study, results, out, log=lambda _: None)
    names = figure_names(study)
    # the study figures, the correlation over all cells, and one figure per table
    assert {"loss.png", "ours-vs-paper.png", "correlation-all.png"} <= set(names)
    assert {f"tables/{t}.png" for t in study.tables} <= set(names)
    for name in names:
        png, pdf = out / name, (out / name).with_suffix(".pdf")
        assert png.read_bytes()[:4] == b"\x89PNG", name
        assert pdf.read_bytes()[:4] == b"%PDF", name
        assert not ink_at_the_edges(png), f"{name}: something runs past the figure's edge"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(names)


def test_a_study_without_results_still_gets_every_figure(tmp_path):
    study = load_study(REPO / "config" / "mini.yaml")
    write_study_figures(study, tmp_path / "nothing", tmp_path / "figures", log=lambda _: None)
    for name in figure_names(study):
        assert (tmp_path / "figures" / name).stat().st_size > 0, name


def test_the_heatmap_title_is_never_clipped(tmp_path):
    columns = ["vqa-v2", "refcoco"]
    matrix = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=columns, columns=columns)
    title = "Pearson r between benchmarks (a study name long enough to overflow a two-column heatmap)"
    write_correlation(matrix, tmp_path / "c.csv", tmp_path / "c.png", title, 7)
    assert not ink_at_the_edges(tmp_path / "c.png")
    correlation_figure(matrix, title, 7, tmp_path / "d.png")
    assert (tmp_path / "d.pdf").read_bytes()[:4] == b"%PDF"
