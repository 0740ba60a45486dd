"""Paper-style tables: collecting result JSONs, sample-weighted averages, CSV + Markdown output."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import require_paper

from vlmswap.analysis.table_text import to_latex, to_markdown, write_table
from vlmswap.analysis.tables import ResultFileError, Row, build_table, collect

# Full benchmark sizes, as the paper weights them (one TextVQA run scored twice: 5000 each).
PAPER_SIZES = {
    "vqa-v2": 214354, "gqa": 12578, "vizwiz": 4319, "textvqa-ocr": 5000, "textvqa-pure": 5000,
    "pope": 8910, "tallyqa": 38589, "refcoco": 10834, "refcoco+": 10758, "refcocog": 4896,
    "ocid-ref": 18342,
}
ALL = list(PAPER_SIZES)
VQA, LOC = ALL[:7], ALL[7:]
PAPER_RESULTS = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "paper_results.csv"

A = "vit-s@in1k@224x224@block-2@mlp2"
B = "vmamba-t@in1k@224x224@stage3@mlp2"
C = "maxvit-t@in1k@224x224@stage3@mlp2"


def write_result(results, cell, benchmark, columns, n_samples=100, n_skipped=0, **extra):
    path = results / "evals" / cell / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"cell": cell, "benchmark": benchmark, "subset": "full", "columns": columns,
            "n_samples": n_samples, "n_skipped": n_skipped, "metrics": {},
            "predictions": f"{benchmark}.predictions.jsonl", **extra}
    path.write_text(json.dumps(data))
    return path


def rows(*cells):
    return [Row(c, {"Visual Encoder": c.split("@")[0].upper(), "Image Size": "224x224"}) for c in cells]


# ---------------------------------------------------------------------------------------------- collect


def test_collect_reads_scores_weights_and_skips_and_leaves_missing_as_nan(tmp_path):
    write_result(tmp_path, A, "textvqa", {"textvqa-ocr": 44.02, "textvqa-pure": 12.3}, 5000, 3)
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 59.86}, 214354)
    write_result(tmp_path, B, "vqa-v2", {"vqa-v2": 64.99}, 214354)

    scores = collect(tmp_path, [A, B], ["vqa-v2", "textvqa"])

    assert list(scores.index) == [A, B] and scores.index.name == "cell_id"
    assert list(scores.columns) == ["vqa-v2", "textvqa-ocr", "textvqa-pure", "n:vqa-v2", "n:textvqa-ocr",
                                    "n:textvqa-pure", "skipped:vqa-v2", "skipped:textvqa",
                                    "vqa-v2:lo", "vqa-v2:hi", "textvqa-ocr:lo", "textvqa-ocr:hi",
                                    "textvqa-pure:lo", "textvqa-pure:hi"]
    assert scores[[c for c in scores.columns if c.endswith((":lo", ":hi"))]].isna().all().all()  # none recorded
    assert scores.loc[A, "textvqa-ocr"] == 44.02 and scores.loc[A, "n:textvqa-pure"] == 5000
    assert scores.loc[A, "skipped:textvqa"] == 3 and scores.loc[A, "skipped:vqa-v2"] == 0
    assert scores.loc[B, ["textvqa-ocr", "textvqa-pure", "n:textvqa-ocr", "skipped:textvqa"]].isna().all()


def test_collect_of_nothing_is_all_missing(tmp_path):
    scores = collect(tmp_path, [A], ["refcoco"])
    assert scores.loc[A].isna().all()


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"columns": {"vqa-v2": 50.0}, "n_samples": 10}), "'n_skipped' must be an integer"),
        (json.dumps({"columns": {"vqa-v2": 50.0}, "n_samples": 0, "n_skipped": 0}), "'n_samples' must be"),
        (json.dumps({"columns": {"gqa": 50.0}, "n_samples": 10, "n_skipped": 0}), "fills exactly"),
        (json.dumps({"columns": {"vqa-v2": "50"}, "n_samples": 10, "n_skipped": 0}), "finite number"),
        (json.dumps({"columns": {"vqa-v2": 0.5986e3}, "n_samples": 10, "n_skipped": 0}), "in percent"),
        (json.dumps({"cell": B, "columns": {"vqa-v2": 50.0}, "n_samples": 10, "n_skipped": 0}), "location says"),
    ],
)
def test_collect_names_the_file_of_a_malformed_result(tmp_path, content, problem):
    path = tmp_path / "evals" / A / "vqa-v2.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ResultFileError, match=problem) as info:
        collect(tmp_path, [A], ["vqa-v2"])
    assert str(path) in str(info.value)


def test_collect_rejects_unknown_benchmark(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'vqa2'"):
        collect(tmp_path, [A], ["vqa2"])


# ---------------------------------------------------------------------------------------------- weights


def test_weighted_columns_are_sample_weighted_over_the_configured_columns(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 60.0}, 300)
    write_result(tmp_path, A, "gqa", {"gqa": 40.0}, 100)
    write_result(tmp_path, A, "refcoco", {"refcoco": 20.0}, 100)
    scores = collect(tmp_path, [A], ["vqa-v2", "gqa", "refcoco"])

    table = build_table(rows(A), scores, "all", ["vqa-v2", "gqa", "refcoco"])

    assert table.loc[A, "vqa-weighted"] == pytest.approx((60 * 300 + 40 * 100) / 400)
    assert table.loc[A, "loc-weighted"] == pytest.approx(20.0)
    assert table.loc[A, "overall-weighted"] == pytest.approx((60 * 300 + 40 * 100 + 20 * 100) / 500)
    scores = ["vqa-v2", "gqa", "refcoco", "vqa-weighted", "loc-weighted", "overall-weighted"]
    assert list(table.columns) == ["Visual Encoder", "Image Size",
                                   *(name for c in scores for name in (c, f"{c}:paper", f"{c}:delta", f"{c}:lo", f"{c}:hi")
                                     if not (name.endswith((":lo", ":hi")) and "weighted" in c)),
                                   "skipped:vqa-v2", "skipped:gqa", "skipped:refcoco"]
    assert table[[f"{c}:delta" for c in scores]].isna().all().all()  # these rows have no paper numbers


def test_mini_study_averages_over_its_two_columns_and_missing_stays_missing(tmp_path):
    # The mini study runs vqa-v2 and refcoco only; C has no refcoco result yet, and no results at all for B.
    configured = ["vqa-v2", "refcoco"]
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 50.0}, 30)
    write_result(tmp_path, A, "refcoco", {"refcoco": 20.0}, 10)
    write_result(tmp_path, C, "vqa-v2", {"vqa-v2": 70.0}, 30)
    scores = collect(tmp_path, [A, B, C], ["vqa-v2", "refcoco"])

    vqa = build_table(rows(A, B, C), scores, "vqa", configured)
    loc = build_table(rows(A, B, C), scores, "loc", configured)

    assert [c for c in vqa.columns if not c.startswith("skipped:") and ":" not in c][-2:] == ["vqa-v2", "vqa-weighted"]
    assert vqa.loc[A, "vqa-weighted"] == 50.0 and vqa.loc[C, "vqa-weighted"] == 70.0
    assert loc.loc[A, "loc-weighted"] == 20.0
    assert loc.loc[A, "overall-weighted"] == pytest.approx((50 * 30 + 20 * 10) / 40)
    # Never over a partial set, never zero.
    assert np.isnan(loc.loc[C, "loc-weighted"]) and np.isnan(loc.loc[C, "overall-weighted"])
    assert vqa.loc[B].drop(["Visual Encoder", "Image Size"]).isna().all()


def test_a_configured_column_missing_from_scores_makes_averages_missing(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 50.0}, 30)
    scores = collect(tmp_path, [A], ["vqa-v2"])  # gqa never collected
    table = build_table(rows(A), scores, "vqa", ["vqa-v2", "gqa"])
    assert np.isnan(table.loc[A, "gqa"]) and np.isnan(table.loc[A, "vqa-weighted"])


def test_build_table_rejects_bad_arguments(tmp_path):
    scores = collect(tmp_path, [A], ["vqa-v2"])
    with pytest.raises(ValueError, match="unknown table group 'ocr'"):
        build_table(rows(A), scores, "ocr", ["vqa-v2"])
    with pytest.raises(ValueError, match="unknown score column"):
        build_table(rows(A), scores, "vqa", ["vqa-v3"])
    with pytest.raises(ValueError, match="more than once"):
        build_table(rows(A, A), scores, "vqa", ["vqa-v2"])


def test_weighted_columns_reproduce_every_paper_row():
    require_paper()
    paper = pd.read_csv(PAPER_RESULTS)
    ids = [f"row{i}" for i in paper.index]
    scores = paper[ALL].set_axis(ids)
    for c in ALL:
        scores[f"n:{c}"] = PAPER_SIZES[c]
    table_rows = [Row(i, {"Visual Encoder": e}) for i, e in zip(ids, paper["encoder"])]

    table = build_table(table_rows, scores, "all", ALL)

    for column in ["vqa-weighted", "loc-weighted", "overall-weighted"]:
        diff = table[column].to_numpy() - paper[column].to_numpy()
        worst = int(np.nanargmax(np.abs(diff)))
        assert not np.isnan(diff).any(), column
        assert np.abs(diff).max() <= 0.01, f"{column}: row {worst} ({paper['encoder'][worst]}) off by {diff[worst]}"


# ---------------------------------------------------------------------------------------------- skips


def skipped_scores(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 60.0}, 300)
    write_result(tmp_path, A, "textvqa", {"textvqa-ocr": 40.0, "textvqa-pure": 10.0}, 100, n_skipped=7)
    write_result(tmp_path, A, "refcoco", {"refcoco": 20.0}, 100)
    return collect(tmp_path, [A], ["vqa-v2", "textvqa", "refcoco"])


def test_skipped_examples_flag_the_benchmark_and_leave_averages_missing_by_default(tmp_path):
    scores = skipped_scores(tmp_path)
    configured = ["vqa-v2", "textvqa-ocr", "textvqa-pure", "refcoco"]

    table = build_table(rows(A), scores, "all", configured)

    assert np.isnan(table.loc[A, "vqa-weighted"]) and np.isnan(table.loc[A, "overall-weighted"])
    assert table.loc[A, "loc-weighted"] == 20.0  # refcoco skipped nothing
    assert table.loc[A, "textvqa-ocr"] == 40.0  # the score itself is still shown
    (note,) = table.attrs["footnotes"]
    assert note.startswith("†") and A in note and "textvqa" in note and "skipped 7" in note
    assert "left missing" in note

    md = to_markdown(table, "T", [])
    assert "| 40.00† | 10.00† |" in md
    assert "60.00 |" in md and "60.00†" not in md


def test_allow_skipped_includes_the_flagged_benchmark_and_says_so(tmp_path):
    scores = skipped_scores(tmp_path)
    configured = ["vqa-v2", "textvqa-ocr", "textvqa-pure", "refcoco"]

    table = build_table(rows(A), scores, "vqa", configured, allow_skipped=True)

    assert table.loc[A, "vqa-weighted"] == pytest.approx((60 * 300 + 40 * 100 + 10 * 100) / 500)
    (note,) = table.attrs["footnotes"]
    assert "skipped 7" in note and "included" in note


def test_a_skip_outside_the_table_is_not_footnoted(tmp_path):
    scores = skipped_scores(tmp_path)
    table = build_table(rows(A), scores, "loc", ["refcoco"])
    assert table.attrs["footnotes"] == []


# ---------------------------------------------------------------------------------------------- writing


def test_write_table_markdown_and_csv(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 59.8612345}, 300)
    write_result(tmp_path, A, "gqa", {"gqa": 50.48}, 100)
    write_result(tmp_path, B, "vqa-v2", {"vqa-v2": 64.99}, 300)
    scores = collect(tmp_path, [A, B], ["vqa-v2", "gqa"])
    table = build_table(rows(A, B), scores, "vqa", ["vqa-v2", "gqa"])
    out_csv, out_md = tmp_path / "tables" / "t1.csv", tmp_path / "tables" / "t1.md"

    write_table(table, out_csv, out_md, "Table 1: IN1K backbones", ["Scores in percent."])

    md = out_md.read_text()
    header = "| Visual Encoder | Image Size | VQA-v2 | GQA | Weighted VQA |"
    assert md.startswith(f"## Table 1: IN1K backbones\n\n{header}\n")
    assert "| VIT-S | 224x224 | 59.86 | 50.48 | 57.52 |" in md
    assert "| VMAMBA-T | 224x224 | 64.99 | – | – |" in md
    assert "0.00" not in md and "nan" not in md.lower() and "skipped" not in md
    assert md.rstrip().endswith("Scores in percent.")

    csv = pd.read_csv(out_csv, index_col="cell_id", keep_default_na=False)
    assert csv.loc[A, "vqa-v2"] == 59.8612345  # full precision
    assert csv.loc[B, "gqa"] == "" and csv.loc[B, "vqa-weighted"] == ""  # missing is empty
    assert list(sorted(p.name for p in out_csv.parent.iterdir())) == ["t1.csv", "t1.md"]


def test_markdown_escapes_pipes_in_labels(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 50.0}, 3)
    scores = collect(tmp_path, [A], ["vqa-v2"])
    table = build_table([Row(A, {"Visual Encoder": "CLIP|SigLIP"})], scores, "vqa", ["vqa-v2"])
    assert "| CLIP\\|SigLIP | 50.00 | 50.00 |" in to_markdown(table, "T")


def test_subset_results_are_footnoted_once_per_subset(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 50.0}, 3, subset="slim-1000")
    write_result(tmp_path, B, "vqa-v2", {"vqa-v2": 50.0}, 3, subset="slim-1000")
    write_result(tmp_path, C, "vqa-v2", {"vqa-v2": 50.0}, 3)
    scores = collect(tmp_path, [A, B, C], ["vqa-v2"])
    table = build_table(rows(A, B, C), scores, "vqa", ["vqa-v2"])
    note = "vqa-v2 was evaluated on subset 'slim-1000', not the full benchmark"
    assert table.attrs["footnotes"] == [f"{note} ({A}, {B})."]
    assert build_table(rows(A), scores, "vqa", ["vqa-v2"]).attrs["footnotes"] == [f"{note} (every row)."]


def test_bootstrap_intervals_reach_the_table_and_the_markdown(tmp_path):
    write_result(tmp_path, A, "vqa-v2", {"vqa-v2": 59.86}, 600, intervals={"vqa-v2": [55.1, 64.32]})
    write_result(tmp_path, B, "vqa-v2", {"vqa-v2": 64.99}, 600)  # written before intervals existed
    table = build_table(rows(A, B), collect(tmp_path, [A, B], ["vqa-v2"]), "vqa", ["vqa-v2"])
    assert table.loc[A, "vqa-v2:lo"] == 55.1 and table.loc[A, "vqa-v2:hi"] == 64.32
    assert pd.isna(table.loc[B, "vqa-v2:lo"])
    md = to_markdown(table, "t")
    assert "59.86\u00a0[55.1,\u00a064.3]" in md and "64.99 |" in md.replace("\u00a0", " ") and "bootstrap 95% interval" in md
    assert "[55.1, 64.3]" in to_latex(table, "t")
