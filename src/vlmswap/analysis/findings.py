"""The paper's observations as computed checks on a study's results.

Each check takes one statement of the paper (cited by its line in ../shared/paper/paper.md),
computes the same quantity on this study's finished cells and says whether the study agrees:

- benchmark x benchmark Pearson: localization correlates 0.65-0.80 with VQA-v2/GQA/POPE/TallyQA and
  0.23-0.50 with TextVQA/VizWiz (paper.md l. 84); matrices over all cells and per table group;
- IN1K accuracy is an unreliable predictor of VLM quality (l. 94-96): Pearson and Spearman with
  p-values (scipy) between the checkpoints' IN1K accuracy and each weighted score;
- naive scaling is unreliable (l. 94-99): within each family (same objective and interface), is the
  largest encoder the best?
- under matched IN1K/224 swaps VMamba is strongest overall (l. 69, 154);
- localization collapse (l. 100-101, 141-148): a cell whose Weighted Loc. falls more than
  `collapse_margin` points below the median of its family and objective is flagged, and each
  stabilized variant (same backbone and objective, another connector or geometry) is checked for
  recovery.

The data flow is `cell_frame` (results -> one row per cell with its labels and scores), then
`compute_findings` (a pure function of that frame, tested on a synthetic grid), then
`write_findings` (`findings.md` + `findings.json`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlmswap.analysis.correlation import correlation_matrix
from vlmswap.analysis.tables import COLUMN_BENCHMARK, COLUMN_TITLES, WEIGHTED_COLUMNS, collect, weighted_mean
from vlmswap.atomic import write_text
from vlmswap.study import LOC_COLUMNS, Study

__all__ = ["DEFAULT_COLLAPSE_MARGIN", "Finding", "Findings", "cell_frame", "compute_findings", "encoder_millions",
           "table_groups", "to_markdown", "write_findings", "write_study_findings"]

DEFAULT_COLLAPSE_MARGIN = 10.0  # points of Weighted Loc.; config `findings.collapse_margin`
AGREES, DISAGREES, PARTLY, UNTESTABLE = "agrees", "disagrees", "partly", "not testable"

# paper.md l. 84: "VQA-v2, GQA, POPE, and TallyQA correlate moderately to strongly with localization
# (from 0.65 to 0.80), while TextVQA and VizWiz correlate weakly (from 0.23 to 0.50)".
PERCEPTION_COLUMNS = ("vqa-v2", "gqa", "pope", "tallyqa")
TEXT_COLUMNS = ("vizwiz", "textvqa-ocr", "textvqa-pure")
PAPER_PERCEPTION_RANGE = (0.65, 0.80)
PAPER_TEXT_RANGE = (0.23, 0.50)
SCORES = ("vqa-weighted", "loc-weighted", "overall-weighted")


@dataclass
class Finding:
    """One of the paper's observations, computed on this study: `numbers` is machine-readable."""

    id: str
    title: str
    paper: str  # the paper's statement, with its paper.md line
    verdict: str  # agrees | disagrees | partly | not testable
    summary: str  # one sentence with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # a table of the details, if any


@dataclass
class Findings:
    study: str
    n_cells: int
    n_scored: int
    collapse_margin: float
    findings: list[Finding]
    correlations: dict[str, dict[str, Any]]  # group -> {"cells": [...], "n_runs": n, "matrix": {...}}


# ----------------------------------------------------------------------------------------------
# Results -> one row per cell


def encoder_millions(params: str) -> float:
    """The paper's "Encoder Size" text in millions: "22M" -> 22, "5.7M" -> 5.7, "304M/428M" -> 732
    (a fused pair counts both towers); NaN where the config gives no size."""
    total = 0.0
    for part in str(params).split("/"):
        part = part.strip().upper()
        if not part:
            return math.nan
        scale = {"K": 1e-3, "M": 1.0, "B": 1e3}.get(part[-1])
        try:
            total += float(part[:-1]) * scale if scale else float(part) / 1e6
        except ValueError:
            return math.nan
    return total


def cell_frame(study: Study, results_dir: Path) -> pd.DataFrame:
    """One row per cell (index: cell id): backbone, family, objective, objective kind, display,
    params (millions), in1k_acc, geometry, connector, then every score column the study has and the
    three weighted averages (missing where any of their columns is missing, stale, or skipped
    examples, as in the tables)."""
    from vlmswap.analysis.report import in1k_accuracy, staleness_against

    scores = collect(results_dir, study.cell_ids, study.benchmarks, staleness_against(results_dir))
    for name, members in WEIGHTED_COLUMNS.items():
        columns = [c for c in study.columns if c in members]
        if not columns:
            scores[name] = np.nan
            continue
        mean = weighted_mean(scores, columns)
        skipped = scores[[f"skipped:{b}" for b in dict.fromkeys(COLUMN_BENCHMARK[c] for c in columns)]].fillna(0) > 0
        mean[skipped.any(axis=1)] = np.nan
        scores[name] = mean
    records = []
    for cell in study.cells:
        backbone = study.backbones[cell.backbone]
        acc = in1k_accuracy(study, cell)
        records.append({
            "cell_id": cell.id, "backbone": cell.backbone, "family": backbone.family, "objective": cell.objective,
            "kind": study.objectives[cell.objective].kind, "display": backbone.display,
            "params": encoder_millions(backbone.params), "in1k_acc": np.nan if acc is None else acc,
            "geometry": str(cell.geometry), "connector": cell.connector,
        })
    frame = pd.DataFrame.from_records(records).set_index("cell_id")
    return frame.join(scores[[*study.columns, *SCORES]])


# ----------------------------------------------------------------------------------------------
# The checks


def _label(frame: pd.DataFrame, cell_id: str) -> str:
    row = frame.loc[cell_id]
    return f"{row['display']}{'(f)' if row['connector'] == 'mlp3' else ''} {row['objective']}@{row['geometry']}"


def _correlation(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame | None:
    try:
        return correlation_matrix(frame, columns)
    except ValueError:  # fewer than 3 cells with every column
        return None


def _check_correlation(frame: pd.DataFrame, columns: list[str]) -> Finding:
    paper = ("Localization correlates 0.65-0.80 with VQA-v2, GQA, POPE and TallyQA, and 0.23-0.50 with "
             "TextVQA and VizWiz (paper.md l. 84).")
    matrix = _correlation(frame, columns)
    loc = [c for c in columns if c in LOC_COLUMNS]
    perception = [c for c in columns if c in PERCEPTION_COLUMNS]
    text = [c for c in columns if c in TEXT_COLUMNS]
    title = "Localization correlates with perception VQA, less with text-heavy VQA"
    if matrix is None:
        return Finding("benchmark-correlation", title, paper, UNTESTABLE,
                       f"fewer than 3 cells have every benchmark ({len(frame)} cells in the study).")
    n = matrix.attrs["n_runs"]

    def values(group: list[str]) -> list[float]:
        return [float(matrix.loc[a, b]) for a in loc for b in group if not np.isnan(matrix.loc[a, b])]

    with_perception, with_text = values(perception), values(text)
    numbers = {"n_runs": n,
               "loc_vs_perception": [min(with_perception), max(with_perception)] if with_perception else None,
               "loc_vs_text": [min(with_text), max(with_text)] if with_text else None,
               "paper_loc_vs_perception": list(PAPER_PERCEPTION_RANGE), "paper_loc_vs_text": list(PAPER_TEXT_RANGE)}
    if not with_perception or not with_text:
        if loc and perception and text:
            why = f"the scores are constant over the {n} cells, so their correlations are undefined."
        else:
            missing = "a localization benchmark" if not loc else (
                "a perception VQA benchmark (VQA-v2, GQA, POPE, TallyQA)" if not perception
                else "a text-heavy VQA benchmark (TextVQA, VizWiz)")
            why = f"this study lacks {missing}."
        return Finding("benchmark-correlation", title, paper, UNTESTABLE, why, numbers)
    p_lo, p_hi = numbers["loc_vs_perception"]
    t_lo, t_hi = numbers["loc_vs_text"]
    ordered = float(np.mean(with_perception)) > float(np.mean(with_text))
    verdict = AGREES if ordered and p_lo > t_hi else PARTLY if ordered else DISAGREES
    summary = (f"over {n} cells, localization vs perception VQA r = {p_lo:.2f} to {p_hi:.2f} (paper 0.65-0.80), "
               f"vs text-heavy VQA r = {t_lo:.2f} to {t_hi:.2f} (paper 0.23-0.50).")
    return Finding("benchmark-correlation", title, paper, verdict, summary, numbers)


def _check_in1k(frame: pd.DataFrame) -> Finding:
    from scipy import stats

    paper = ("ImageNet top-1 accuracy is an unreliable predictor of downstream VLM quality "
             "(paper.md l. 94-96: MaxViT-L has the highest IN1K accuracy of its family and much worse localization).")
    title = "IN1K accuracy does not predict the VLM's scores"
    rows, numbers = [], {}
    for score in SCORES:
        data = frame[["in1k_acc", score]].dropna()
        if len(data) < 3 or data["in1k_acc"].nunique() < 2 or data[score].nunique() < 2:
            continue
        pearson = stats.pearsonr(data["in1k_acc"], data[score])
        spearman = stats.spearmanr(data["in1k_acc"], data[score])
        row = {"score": score, "n": len(data), "pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
               "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}
        rows.append(row)
        numbers[score] = row
    if not rows:
        return Finding("in1k-vs-vlm", title, paper, UNTESTABLE,
                       "fewer than 3 scored cells have an IN1K accuracy (`in1k_acc` of their checkpoint).")
    # "Unreliable": no weighted score rises significantly (p < 0.05) with IN1K accuracy.
    predictive = [r["score"] for r in rows if r["pearson_r"] > 0 and r["pearson_p"] < 0.05]
    verdict = DISAGREES if predictive else AGREES
    overall = numbers.get("overall-weighted", rows[-1])
    summary = (f"over {overall['n']} cells, IN1K accuracy vs {COLUMN_TITLES[overall['score']]}: Pearson r = "
               f"{overall['pearson_r']:.2f} (p = {overall['pearson_p']:.3f}), Spearman rho = "
               f"{overall['spearman_rho']:.2f} (p = {overall['spearman_p']:.3f})"
               + (f"; significantly positive for {', '.join(predictive)}." if predictive
                  else "; no weighted score rises significantly with it."))
    return Finding("in1k-vs-vlm", title, paper, verdict, summary, numbers, rows)


def _check_scaling(frame: pd.DataFrame) -> Finding:
    from scipy import stats

    paper = ("Naive backbone scaling is an unreliable predictor of VLM quality: within a family the largest "
             "encoder is often not the best (paper.md l. 94-99: MaxViT-L vs T/S/B; VMamba-B vs T/S).")
    title = "Within a family, a larger encoder is not a better VLM encoder"
    rows = []
    data = frame.dropna(subset=["params", "overall-weighted"])
    for (family, objective, geometry, connector), group in data.groupby(
            ["family", "objective", "geometry", "connector"], sort=False):
        if group["params"].nunique() < 2:
            continue
        largest = group["params"].idxmax()
        best = group["overall-weighted"].idxmax()
        rho = (float(stats.spearmanr(group["params"], group["overall-weighted"]).statistic)
               if len(group) >= 3 and group["overall-weighted"].nunique() > 1 else math.nan)
        rows.append({"family": family, "objective": objective, "geometry": geometry, "connector": connector,
                     "sizes": [f"{p:g}M" for p in sorted(group["params"])], "n": len(group),
                     "best": _label(frame, best), "largest": _label(frame, largest),
                     "largest_is_best": bool(group.loc[largest, "overall-weighted"] >= group["overall-weighted"].max()),
                     "spearman_size_vs_overall": rho})
    if not rows:
        return Finding("size-vs-score", title, paper, UNTESTABLE,
                       "no family has two encoder sizes under one objective and interface in this study.")
    # "Unreliable": scaling up fails to give the best encoder in most groups (the paper's counterexamples
    # are the MaxViT, MambaVision and VMamba rows of Tables 1-2); never failing would contradict it.
    scaled = [r for r in rows if r["largest_is_best"]]
    verdict = AGREES if len(scaled) < len(rows) / 2 else DISAGREES if len(scaled) == len(rows) else PARTLY
    summary = (f"in {len(rows) - len(scaled)} of {len(rows)} family groups the largest encoder is not the best "
               f"(Weighted Overall)" + (f"; it is in: {', '.join(r['best'] for r in scaled)}." if scaled else "."))
    return Finding("size-vs-score", title, paper, verdict, summary, {"groups": len(rows), "largest_best": len(scaled)},
                   rows)


def _matched(frame: pd.DataFrame) -> tuple[tuple[str, str, str] | None, pd.DataFrame]:
    """The matched setting: the classification (objective, geometry, connector) shared by the most
    families (the paper's IN1K/224/2-layer swaps, Tables 1-2)."""
    data = frame[frame["kind"] == "classification"]
    best, cells = None, frame.iloc[:0]
    for key, group in data.groupby(["objective", "geometry", "connector"], sort=False):
        if best is None or group["family"].nunique() > cells["family"].nunique():
            best, cells = key, group
    return best, cells


def _check_matched(frame: pd.DataFrame) -> Finding:
    paper = ("Under matched IN1K/224 swaps VMamba is the strongest overall, and VMamba-T/S lead localization "
             "(paper.md l. 69, 154).")
    title = "Best backbone under the matched classification setting"
    key, cells = _matched(frame)
    scored = cells.dropna(subset=["overall-weighted"])
    if key is None or scored["family"].nunique() < 2:
        return Finding("best-matched", title, paper, UNTESTABLE,
                       "fewer than two families are scored under one classification objective, geometry and connector.")
    rows = []
    for score in SCORES:
        column = scored[score].dropna()
        if column.empty:
            continue
        best = column.idxmax()
        tied = sorted(set(frame.loc[column.index[column == column.max()], "family"]))
        rows.append({"score": score, "best": _label(frame, best), "family": frame.loc[best, "family"],
                     "value": float(column.max()), "n": len(column), "tied_families": tied if len(tied) > 1 else []})
    overall = next(r for r in rows if r["score"] == "overall-weighted")
    loc = next((r for r in rows if r["score"] == "loc-weighted"), None)
    if overall["tied_families"]:
        return Finding("best-matched", title, paper, UNTESTABLE,
                       f"the best Weighted Overall ({overall['value']:.2f}) is shared by "
                       f"{', '.join(overall['tied_families'])}: no family is strongest.",
                       {"setting": dict(zip(("objective", "geometry", "connector"), key))}, rows)
    wins = [overall["family"] == "vmamba", loc is None or loc["family"] == "vmamba"]
    verdict = AGREES if all(wins) else PARTLY if any(wins) else DISAGREES
    objective, geometry, connector = key
    summary = (f"matched setting {objective}@{geometry}, {connector} ({len(scored)} cells, "
               f"{scored['family'].nunique()} families): best Weighted Overall {overall['best']} "
               f"({overall['value']:.2f})" + (f", best Weighted Loc. {loc['best']} ({loc['value']:.2f})." if loc else "."))
    return Finding("best-matched", title, paper, verdict, summary,
                   {"setting": {"objective": objective, "geometry": geometry, "connector": connector}}, rows)


def _check_collapse(frame: pd.DataFrame, margin: float) -> Finding:
    paper = ("Some dense-objective checkpoints collapse on localization (ViTDet-L/H, VMamba-T/B detection) while "
             "siblings of the same family and objective are strong; a 3-layer connector and a square geometry "
             "recover them (paper.md l. 101, 142-148).")
    title = f"Localization collapse (more than {margin:g} points of Weighted Loc. below its family's median)"
    data = frame.dropna(subset=["loc-weighted"])
    flagged, groups, dense = [], 0, 0
    for (family, objective), group in data.groupby(["family", "objective"], sort=False):
        if len(group) < 2:
            continue
        groups += 1
        dense += bool(group["kind"].isin(["detection", "segmentation"]).any())
        median = float(group["loc-weighted"].median())
        for cell_id, row in group.iterrows():
            if row["loc-weighted"] >= median - margin:
                continue
            variants = group[(group["backbone"] == row["backbone"]) & (group.index != cell_id)
                             & ((group["connector"] != row["connector"]) | (group["geometry"] != row["geometry"]))]
            flagged.append({
                "cell": cell_id, "label": _label(frame, cell_id), "family": family, "objective": objective,
                "loc_weighted": float(row["loc-weighted"]), "group_median": median, "group_size": len(group),
                "stabilized": [{"cell": v, "label": _label(frame, v), "loc_weighted": float(r["loc-weighted"]),
                                "recovers": bool(r["loc-weighted"] >= median - margin)}
                               for v, r in variants.iterrows()],
            })
    numbers = {"margin": margin, "groups": groups, "dense_groups": dense, "flagged": len(flagged),
               "recovered": sum(any(s["recovers"] for s in f["stabilized"]) for f in flagged)}
    if groups == 0:
        return Finding("localization-collapse", title, paper, UNTESTABLE,
                       "no family has two scored cells under one objective in this study.", numbers)
    if dense == 0 and not flagged:  # the paper's statement is about dense-objective checkpoints
        return Finding("localization-collapse", title, paper, UNTESTABLE,
                       f"no cell is flagged in {groups} family/objective group(s), none of them with a detection or "
                       "segmentation checkpoint and two scored cells.", numbers)
    recovered = numbers["recovered"]
    with_variants = sum(bool(f["stabilized"]) for f in flagged)
    if not flagged:
        verdict, summary = DISAGREES, f"no cell is flagged in {groups} family/objective groups."
    else:
        verdict = AGREES if recovered else PARTLY
        summary = (f"{len(flagged)} cell(s) flagged in {groups} family/objective groups: "
                   + "; ".join(f"{f['label']} {f['loc_weighted']:.2f} (median {f['group_median']:.2f})" for f in flagged)
                   + f". {recovered} of {with_variants} with a stabilized variant recover.")
    return Finding("localization-collapse", title, paper, verdict, summary, numbers, flagged)


def compute_findings(frame: pd.DataFrame, columns: list[str], study_name: str, *,
                     collapse_margin: float = DEFAULT_COLLAPSE_MARGIN,
                     table_groups: dict[str, list[str]] | None = None) -> Findings:
    """Every check on `frame` (from `cell_frame`); `columns` are the study's score columns;
    `table_groups` names sets of cells (one per distinct table row set) for per-group correlations."""
    if collapse_margin < 0:
        raise ValueError(f"collapse_margin must be >= 0 points, got {collapse_margin}")
    correlations: dict[str, dict[str, Any]] = {}
    for name, cells in {"all cells": list(frame.index), **(table_groups or {})}.items():
        matrix = _correlation(frame.loc[[c for c in cells if c in frame.index]], columns)
        if matrix is not None:
            correlations[name] = {
                "n_runs": matrix.attrs["n_runs"], "cells": matrix.attrs["cells"],
                "matrix": {a: {b: (None if np.isnan(v) else float(v)) for b, v in row.items()}
                           for a, row in matrix.iterrows()},
            }
    findings = [
        _check_correlation(frame, columns),
        _check_in1k(frame),
        _check_scaling(frame),
        _check_matched(frame),
        _check_collapse(frame, collapse_margin),
    ]
    return Findings(study_name, len(frame), int(frame["overall-weighted"].notna().sum()), collapse_margin,
                    findings, correlations)


def table_groups(study: Study) -> dict[str, list[str]]:
    """One group per distinct set of table cells (a VQA table and its localization twin are one)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for table_id, table in study.tables.items():
        groups.setdefault(tuple(table.cells), []).append(table_id)
    return {"/".join(ids): list(cells) for cells, ids in groups.items()}


# ----------------------------------------------------------------------------------------------
# Writing


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(_number(v) for v in value) if value and not isinstance(value[0], dict) else (
            "; ".join(f"{v['label']} {v['loc_weighted']:.2f}{' (recovers)' if v['recovers'] else ''}" for v in value)
            or "none")
    return str(value).replace("|", "\\|")


def to_markdown(result: Findings) -> str:
    """`findings.md`: a summary table of verdicts, one section per check, then the Pearson matrices."""
    lines = [f"# Findings: the paper's observations on study `{result.study}`", "",
             f"{result.n_scored} of {result.n_cells} cells have every score; each check cites the paper's "
             f"statement (../shared/paper/paper.md) and says whether this study agrees.", "",
             "| check | verdict | this study |", "| --- | --- | --- |"]
    lines += [f"| {f.title} | **{f.verdict}** | {_number(f.summary)} |" for f in result.findings]
    for f in result.findings:
        lines += ["", f"## {f.title}", "", f"*Paper:* {f.paper}", "", f"*This study ({f.verdict}):* {f.summary}"]
        if f.rows:
            keys = [k for k in f.rows[0] if k not in ("cell",)]
            lines += ["", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
            lines += ["| " + " | ".join(_number(r.get(k, "")) for k in keys) + " |" for r in f.rows]
    lines += ["", "## Benchmark x benchmark Pearson r"]
    if not result.correlations:
        lines += ["", "No group of at least 3 cells has every benchmark."]
    for name, corr in result.correlations.items():
        matrix = corr["matrix"]
        columns = list(matrix)
        lines += ["", f"**{name}** (n = {corr['n_runs']} cells)", "",
                  "| | " + " | ".join(COLUMN_TITLES.get(c, c) for c in columns) + " |",
                  "| --- |" + " ---: |" * len(columns)]
        lines += [f"| {COLUMN_TITLES.get(a, a)} | " + " | ".join(
            "–" if matrix[a][b] is None else f"{matrix[a][b]:.2f}" for b in columns) + " |" for a in columns]
    return "\n".join(lines) + "\n"


def write_findings(result: Findings, out_md: Path, out_json: Path) -> None:
    """`findings.md` for people, `findings.json` (the same numbers, NaN as null) for scripts."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    write_text(out_json, json.dumps(clean(asdict(result)), indent=2, ensure_ascii=False) + "\n")
    write_text(out_md, to_markdown(result))


def write_study_findings(study: Study, results_dir: Path, out_md: Path, out_json: Path,
                         log=print) -> Findings:
    margin = float(study.raw.get("findings", {}).get("collapse_margin", DEFAULT_COLLAPSE_MARGIN))
    frame = cell_frame(study, results_dir)
    result = compute_findings(frame, study.columns, study.name, collapse_margin=margin,
                              table_groups=table_groups(study))
    write_findings(result, out_md, out_json)
    log("findings: " + ", ".join(f"{f.id} {f.verdict}" for f in result.findings) + f" -> {out_md}")
    return result
