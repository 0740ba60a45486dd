"""Study tables with the paper beside ours: every table of the paper config, fed the paper's own
numbers as results, shows a delta of 0.00 everywhere (CSV, Markdown and LaTeX)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from vlmswap.analysis.report import write_study_table
from vlmswap.study import BENCHMARK_COLUMNS, load_study, read_yaml, study_from_dict

REPO = Path(__file__).resolve().parents[2]
PAPER_CONFIG = REPO / "config" / "experiments.yaml"


def paper_grid():
    """The paper's own grid: experiments.yaml without the diagnostics' extra cells (the Appendix B
    stage-ablation cells have no row in the paper's tables, so no numbers to feed back)."""
    raw = read_yaml(PAPER_CONFIG)
    raw.get("diagnostics", {}).pop("stage_ablation", None)
    return study_from_dict(raw, PAPER_CONFIG)

# Full benchmark sizes, as the paper weights them (tests/analysis/test_tables.py::PAPER_SIZES).
BENCHMARK_SIZES = {"vqa-v2": 214354, "gqa": 12578, "vizwiz": 4319, "textvqa": 5000, "pope": 8910,
                   "tallyqa": 38589, "refcoco": 10834, "refcoco+": 10758, "refcocog": 4896, "ocid-ref": 18342}


def write_model(results: Path, cell_id: str) -> None:
    path = results / "models" / cell_id / "train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"visual_tokens": 196, "model_sha256": "w" * 64,
                                "provenance": {"fingerprint": f"model-of-{cell_id}"}}))


def write_result(results: Path, cell_id: str, benchmark: str, columns: dict[str, float]) -> None:
    path = results / "evals" / cell_id / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "cell": cell_id, "benchmark": benchmark, "subset": "full", "columns": columns,
        "n_samples": BENCHMARK_SIZES[benchmark], "n_skipped": 0,
        "provenance": {"model": f"model-of-{cell_id}", "weights_sha256": "w" * 64},
    }))


@pytest.fixture(scope="module")
def paper_as_results(tmp_path_factory):
    """The paper study's results folder where every cell scored exactly the paper's numbers."""
    study = paper_grid()
    results = tmp_path_factory.mktemp("results")
    for cell in study.cells:
        write_model(results, cell.id)
        for benchmark in study.benchmarks:
            write_result(results, cell.id, benchmark, {c: cell.paper[c] for c in BENCHMARK_COLUMNS[benchmark]})
    return study, results


def test_fed_the_paper_numbers_every_delta_of_every_table_is_zero(paper_as_results, tmp_path):
    study, results = paper_as_results
    assert len(study.tables) == 24
    for table_id, spec in study.tables.items():
        out = tmp_path / table_id
        write_study_table(study, table_id, results, out.with_suffix(".csv"), out.with_suffix(".md"),
                          log=lambda _: None, out_tex=out.with_suffix(".tex"))
        frame = pd.read_csv(out.with_suffix(".csv"), index_col="cell_id")
        deltas = [c for c in frame.columns if c.endswith(":delta")]
        weighted = ["vqa-weighted"] if spec.columns == "vqa" else ["loc-weighted", "overall-weighted"]
        assert {f"{w}:delta" for w in weighted} <= set(deltas), table_id
        assert len(frame) == len(spec.cells)
        assert frame[deltas].notna().all().all(), f"{table_id}: a delta is missing"
        assert (frame[deltas] == 0.0).all().all(), f"{table_id}: {frame[deltas][frame[deltas] != 0].stack()}"
        for column in deltas:  # the paper's number sits beside ours, and equals it
            name = column.removesuffix(":delta")
            assert (frame[f"{name}:paper"].round(2) == frame[name].round(2)).all(), (table_id, name)

        markdown = out.with_suffix(".md").read_text()
        shown = re.findall(r"\(([+-]\d+\.\d\d)\)", markdown)
        assert len(shown) == len(deltas) * len(frame) and set(shown) == {"+0.00"}, table_id
        latex = out.with_suffix(".tex").read_text()
        assert latex.count(r"\toprule") == 1 and latex.count(r"\bottomrule") == 1
        assert set(re.findall(r"\\tiny \(([+-]\d+\.\d\d)\)", latex)) == {"+0.00"}, table_id


def test_in1k_column_and_row_groups_follow_the_paper(paper_as_results, tmp_path):
    study, results = paper_as_results
    for table_id in ("table-1", "table-25"):
        out = tmp_path / table_id
        write_study_table(study, table_id, results, out.with_suffix(".csv"), out.with_suffix(".md"),
                          log=lambda _: None, out_tex=out.with_suffix(".tex"))
    table1 = pd.read_csv(tmp_path / "table-1.csv", index_col="cell_id")
    assert table1.loc["vit-s@in1k@224@block-2@mlp2", "IN1K Acc"] == 78.8  # paper.md Table 1, ViT-S
    assert "IN1K Acc" not in pd.read_csv(tmp_path / "table-25.csv").columns  # Table 25 does not print it
    header = (tmp_path / "table-1.md").read_text().split("\n")[2]
    assert header.startswith("| Pretrained | Visual Encoder | Encoder Size | IN1K Acc | Image Size |")
    # Table 1 groups ViT, MaxViT, MambaVision, VMamba: three rules between four groups (+1 under the header)
    body = (tmp_path / "table-1.tex").read_text().split(r"\toprule")[1]
    assert body.count(r"\midrule") == 1 + 3


def test_a_cell_the_paper_lacks_has_no_delta_and_a_missing_result_shows_the_paper(tmp_path):
    study = load_study(REPO / "config" / "mini.yaml")
    results = tmp_path / "results"
    table_id = "mini-objective"
    cell = study.tables[table_id].cells[0]
    write_model(results, cell)
    write_result(results, cell, "vqa-v2", {"vqa-v2": 50.0})
    out = tmp_path / "t"
    write_study_table(study, table_id, results, out.with_suffix(".csv"), out.with_suffix(".md"), log=lambda _: None)
    frame = pd.read_csv(out.with_suffix(".csv"), index_col="cell_id")
    assert frame["vqa-v2:paper"].isna().all() and frame["vqa-v2:delta"].isna().all()
    assert "(+" not in out.with_suffix(".md").read_text() and "paper " not in out.with_suffix(".md").read_text()

    paper = load_study(PAPER_CONFIG)
    results = tmp_path / "paper-results"
    first = paper.tables["table-1"].cells[0]
    write_model(results, first)
    write_result(results, first, "vqa-v2", {"vqa-v2": 61.0})
    write_study_table(paper, "table-1", results, out.with_suffix(".csv"), out.with_suffix(".md"), log=lambda _: None)
    row = next(line for line in out.with_suffix(".md").read_text().split("\n") if line.startswith("| IN1K | ViT-S |"))
    assert "61.00\u00a0(+1.14)" in row  # ours 61.00, the paper's ViT-S VQA-v2 59.86 (no-break space)
    assert "–\u00a0(paper\u00a050.48)" in row  # GQA not run: the paper's value still shown
