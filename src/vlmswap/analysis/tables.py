"""Paper-style result tables: read the per-benchmark JSONs, weight by sample count, write CSV + Markdown.

Data flow: `evaluate` leaves one JSON per (cell, benchmark) at
`{results}/evals/{cell_id}/{benchmark}.json`; `collect` reads them into one frame of scores
(percent) and sample counts; `build_table` picks a column group, adds the sample-weighted
averages, the display labels and, where a row has the paper's numbers, the paper's value and the
difference beside each score; `table_text.write_table` writes a machine-readable CSV, the Markdown the
paper's tables look like and a LaTeX (booktabs) copy in the paper's column order and row groups.

Honesty rules, all tested:
- a missing result is missing ("–" in Markdown, empty in CSV), never zero;
- a weighted average is over exactly the columns the study configured for its group; if one of
  them is missing for a cell, that cell's average is missing, never taken over a partial set;
- a benchmark that skipped examples is flagged with a dagger and a footnote giving the count, and
  enters an average only when the caller says so (`allow_skipped=True`);
- the delta beside a score is ours as printed (2 decimals) minus the paper's printed number, so a
  reproduction that matches the paper shows 0.00 everywhere; a row without a paper number has no delta.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from vlmswap.study import BENCHMARK_COLUMNS, LOC_COLUMNS, VQA_COLUMNS

__all__ = [
    "COLUMN_TITLES",
    "GROUPS",
    "ResultFileError",
    "Row",
    "WEIGHTED_COLUMNS",
    "build_table",
    "collect",
    "weighted_mean",
]

ALL_COLUMNS: tuple[str, ...] = VQA_COLUMNS + LOC_COLUMNS
COLUMN_BENCHMARK: dict[str, str] = {c: b for b, cols in BENCHMARK_COLUMNS.items() for c in cols}

# Derived column -> the score columns it averages over (restricted to those the study configured).
WEIGHTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "vqa-weighted": VQA_COLUMNS,
    "loc-weighted": LOC_COLUMNS,
    "overall-weighted": ALL_COLUMNS,
}
# Table group -> (score columns shown, weighted columns shown), as in the paper: the VQA table ends
# with the weighted VQA score, the localization table with the weighted Loc. and Overall scores.
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vqa": (VQA_COLUMNS, ("vqa-weighted",)),
    "loc": (LOC_COLUMNS, ("loc-weighted", "overall-weighted")),
    "all": (ALL_COLUMNS, ("vqa-weighted", "loc-weighted", "overall-weighted")),
}
COLUMN_TITLES: dict[str, str] = {
    "vqa-v2": "VQA-v2",
    "gqa": "GQA",
    "vizwiz": "VizWiz",
    "textvqa-ocr": "TextVQA+OCR",
    "textvqa-pure": "TextVQA",
    "pope": "POPE",
    "tallyqa": "TallyQA",
    "refcoco": "RefCOCO",
    "refcoco+": "RefCOCO+",
    "refcocog": "RefCOCOg",
    "ocid-ref": "OCID-Ref",
    "vqa-weighted": "Weighted VQA",
    "loc-weighted": "Weighted Loc.",
    "overall-weighted": "Weighted Overall",
}
DAGGER = "†"
INTERVAL_ENDS = ("lo", "hi")


class ResultFileError(ValueError):
    """An evaluation result that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Row:
    """One cell as a table row: its id and the display columns shown before the scores.

    e.g. `Row("vmamba-t@in1k@224x224@stage3@mlp3", {"Pretrained": "IN1K", "Visual Encoder":
    "VMamba-T(f)", "Encoder Size": "30M", "Image Size": "224x224", "Vision Token #": "196"})`

    `paper` holds the paper's numbers for this cell (score and weighted columns, percent; empty for
    a cell the paper does not have); `group` names the row group (the backbone family) that the
    LaTeX copy separates with a rule, as the paper's tables do.
    """

    cell_id: str
    labels: dict[str, str]
    paper: Mapping[str, float] = field(default_factory=dict)
    group: str = ""


# ----------------------------------------------------------------------------------------------
# Reading results


def _benchmark_columns(benchmark: str) -> tuple[str, ...]:
    try:
        return BENCHMARK_COLUMNS[benchmark]
    except KeyError:
        raise ValueError(f"unknown benchmark {benchmark!r} (known: {', '.join(BENCHMARK_COLUMNS)})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_result(path: Path, cell_id: str, benchmark: str) -> dict[str, Any]:
    """Load and check one result JSON; every problem raises ResultFileError naming `path`."""

    def bad(problem: str) -> ResultFileError:
        return ResultFileError(f"{path}: {problem}; delete it and rerun the cell's evaluation (snakemake)")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text ({e})") from e
    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    for key, expected in (("cell", cell_id), ("benchmark", benchmark)):
        if key in data and data[key] != expected:
            raise bad(f"'{key}' is {data[key]!r} but the file's location says {expected!r}")

    columns = data.get("columns")
    if not isinstance(columns, dict):
        raise bad("'columns' must be an object mapping column name -> score in percent")
    wanted = _benchmark_columns(benchmark)
    if set(columns) != set(wanted):
        raise bad(f"'columns' has {sorted(columns)}; benchmark {benchmark!r} fills exactly {list(wanted)}")
    for name, score in columns.items():
        if not _is_number(score) or not math.isfinite(score):
            raise bad(f"score for {name!r} must be a finite number, got {score!r}")
        if not 0 <= score <= 100:
            raise bad(f"score for {name!r} is {score}, outside [0, 100]; scores are in percent")

    for key, minimum in (("n_samples", 1), ("n_skipped", 0)):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise bad(f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return data


def collect(results_dir: Path, cell_ids: list[str], benchmarks: list[str],
            staleness: Callable[[str, dict[str, Any]], str | None] | None = None) -> pd.DataFrame:
    """Read `{results_dir}/evals/{cell}/{benchmark}.json` for every cell x benchmark.

    Returns a frame indexed by cell id with, in this order: one column per score column the
    benchmarks fill (paper order, percent), `n:<column>` (that result's `n_samples`, the column's
    weight) and `skipped:<benchmark>` (`n_skipped`). A result that does not exist is NaN in all
    of its columns; a result that exists but is malformed raises ResultFileError naming the file.
    `attrs["subsets"]` maps cell -> benchmark -> the result's `subset` where it is not "full".

    `<column>:lo` / `<column>:hi` hold the result's bootstrap 95% interval (`evaluate/intervals.py`),
    NaN where it has none.

    `staleness(cell_id, result)` says why a result no longer belongs to its cell's current model
    (`provenance.result_staleness`), or None: a stale result is left out exactly like a missing
    one, and `attrs["stale"]` maps cell -> benchmark -> the reason, for the table to name.
    """
    results_dir = Path(results_dir)
    wanted = {c for b in benchmarks for c in _benchmark_columns(b)}
    columns = [c for c in ALL_COLUMNS if c in wanted]
    names = (columns + [f"n:{c}" for c in columns] + [f"skipped:{b}" for b in benchmarks]
             + [f"{c}:{end}" for c in columns for end in INTERVAL_ENDS])
    frame = pd.DataFrame(np.nan, index=pd.Index(list(cell_ids), name="cell_id"), columns=names, dtype=float)
    subsets: dict[str, dict[str, str]] = {}
    stale: dict[str, dict[str, str]] = {}
    for cell_id in cell_ids:
        for benchmark in benchmarks:
            path = results_dir / "evals" / cell_id / f"{benchmark}.json"
            if not path.is_file():
                continue
            data = _read_result(path, cell_id, benchmark)
            reason = staleness(cell_id, data) if staleness else None
            if reason:
                stale.setdefault(cell_id, {})[benchmark] = reason
                continue
            for column, score in data["columns"].items():
                frame.loc[cell_id, column] = float(score)
                frame.loc[cell_id, f"n:{column}"] = data["n_samples"]
                interval = (data.get("intervals") or {}).get(column)
                if interval is not None:  # results written before intervals existed have none
                    for end, value in zip(INTERVAL_ENDS, interval):
                        frame.loc[cell_id, f"{column}:{end}"] = float(value)
            frame.loc[cell_id, f"skipped:{benchmark}"] = data["n_skipped"]
            subset = data.get("subset", "full")
            if subset != "full":
                subsets.setdefault(cell_id, {})[benchmark] = str(subset)
    frame.attrs["subsets"] = subsets
    frame.attrs["stale"] = stale
    return frame


# ----------------------------------------------------------------------------------------------
# Building a table


def weighted_mean(scores: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Per row, the mean of `columns` weighted by `n:<column>`; NaN where any of them is missing."""
    if not columns:
        raise ValueError("a weighted mean needs at least one column")
    missing = [c for c in columns if c not in scores.columns or f"n:{c}" not in scores.columns]
    if missing:
        raise ValueError(f"scores lack column(s) or their 'n:' weights: {missing}")
    values = scores[columns].to_numpy(dtype=float)
    weights = scores[[f"n:{c}" for c in columns]].to_numpy(dtype=float)
    complete = ~(np.isnan(values) | np.isnan(weights)).any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (values * weights).sum(axis=1) / weights.sum(axis=1)
    return pd.Series(np.where(complete, mean, np.nan), index=scores.index, dtype=float)


def _ordered(configured_columns: list[str]) -> list[str]:
    unknown = [c for c in configured_columns if c not in ALL_COLUMNS]
    if unknown:
        raise ValueError(f"unknown score column(s) {unknown} (known: {', '.join(ALL_COLUMNS)})")
    return [c for c in ALL_COLUMNS if c in set(configured_columns)]


def build_table(
    rows: list[Row],
    scores: pd.DataFrame,
    group: str,
    configured_columns: list[str],
    *,
    allow_skipped: bool = False,
) -> pd.DataFrame:
    """One paper-style table: the rows' labels, the group's scores, then its weighted averages.

    `group` is "vqa", "loc" or "all"; `configured_columns` are the score columns the study
    configured (e.g. `Study.columns`); the table shows those of the group, and each weighted
    average runs over the configured columns of its own group (so the loc table's overall average
    still covers the VQA columns). A cell missing any of those columns gets a missing average.

    A benchmark with skipped examples (`skipped:<benchmark>` > 0) is flagged (a dagger and a
    footnote in `write_table`); the averages that include it are left missing unless
    `allow_skipped`. The returned frame is indexed by cell id, has the label columns, then per
    score and weighted column `<column>`, `<column>:paper` (the row's paper number) and
    `<column>:delta` (ours rounded to 2 decimals minus the paper's, NaN where either is missing),
    `<column>:lo` / `<column>:hi` (the bootstrap 95% interval of a score column, NaN without one),
    and `skipped:<benchmark>` for each benchmark shown; `attrs["footnotes"]` holds the footnotes
    `write_table` prints and `attrs["groups"]` each row's group.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown table group {group!r} (allowed: {', '.join(GROUPS)})")
    configured = _ordered(configured_columns)
    if not configured:
        raise ValueError("configured_columns is empty: the study configures no score column")
    ids = [r.cell_id for r in rows]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"cell(s) listed more than once in the table: {duplicated}")

    group_columns, group_weighted = GROUPS[group]
    shown = [c for c in configured if c in group_columns]
    weighted = [w for w in group_weighted if any(c in configured for c in WEIGHTED_COLUMNS[w])]
    benchmarks = list(dict.fromkeys(COLUMN_BENCHMARK[c] for c in configured))
    shown_benchmarks = list(dict.fromkeys(COLUMN_BENCHMARK[c] for c in shown))

    # Everything the table needs, one row per table row; absent cells / columns are NaN.
    needed = configured + [f"n:{c}" for c in configured] + [f"skipped:{b}" for b in benchmarks]
    data = scores.reindex(index=ids, columns=needed).astype(float)
    for c in configured:
        unweighted = data[c].notna() & data[f"n:{c}"].isna()
        if unweighted.any():
            raise ValueError(f"column {c!r} has scores but no 'n:{c}' sample count for {list(data.index[unweighted])}")

    label_names = list(dict.fromkeys(name for r in rows for name in r.labels))
    table = pd.DataFrame(index=pd.Index(ids, name="cell_id"))
    for name in label_names:
        table[name] = [r.labels.get(name, "") for r in rows]
    for c in shown:
        table[c] = data[c]

    skipped = data[[f"skipped:{b}" for b in benchmarks]].fillna(0) > 0
    footnotes: list[str] = []
    for w in weighted:
        columns = [c for c in configured if c in WEIGHTED_COLUMNS[w]]
        mean = weighted_mean(data, columns)
        if not allow_skipped:
            flagged = skipped[[f"skipped:{b}" for b in dict.fromkeys(COLUMN_BENCHMARK[c] for c in columns)]]
            mean[flagged.any(axis=1)] = np.nan
        table[w] = mean

    # Footnote the skips that touch this table: a shown benchmark, or one inside a shown average.
    averaged = {c for w in weighted for c in WEIGHTED_COLUMNS[w]}
    relevant = [b for b in benchmarks if any(c in averaged or c in shown for c in BENCHMARK_COLUMNS[b])]
    for cell_id in ids:
        for b in relevant:
            n = data.loc[cell_id, f"skipped:{b}"]
            if not n > 0:
                continue
            scored = int(data.loc[cell_id, f"n:{BENCHMARK_COLUMNS[b][0]}"])
            verdict = (
                "it is included in the weighted averages (allow_skipped)"
                if allow_skipped
                else "the weighted averages that include it are left missing"
            )
            where = "" if b in shown_benchmarks else " (not shown in this table)"
            footnotes.append(
                f"{DAGGER} {cell_id}: {b}{where} skipped {int(n)} example(s), scored on {scored}; {verdict}."
            )
    # Subset runs are not comparable to the paper's full-benchmark numbers: say so, once per subset.
    by_subset: dict[tuple[str, str], list[str]] = {}
    for cell_id in ids:
        for b, subset in scores.attrs.get("subsets", {}).get(cell_id, {}).items():
            if b in relevant:
                by_subset.setdefault((b, subset), []).append(cell_id)
    for (b, subset), cells in by_subset.items():
        who = "every row" if len(cells) == len(ids) else ", ".join(cells)
        footnotes.append(f"{b} was evaluated on subset {subset!r}, not the full benchmark ({who}).")

    # A stale result is not a score of this cell: its column stays empty and the table says why.
    stale = scores.attrs.get("stale", {})
    for cell_id in ids:
        for b, reason in stale.get(cell_id, {}).items():
            if b in relevant:
                footnotes.append(f"Stale: {cell_id}: the {b} result is left out ({reason}).")

    # The paper beside ours: compare what is printed (2 decimals) with what the paper printed.
    ordered = list(label_names)
    for c in shown + weighted:
        paper = pd.Series([r.paper.get(c, np.nan) for r in rows], index=table.index, dtype=float)
        table[f"{c}:paper"] = paper
        table[f"{c}:delta"] = (table[c].round(2) - paper).round(2)
        ordered += [c, f"{c}:paper", f"{c}:delta"]
        if c in shown:
            for end in INTERVAL_ENDS:
                table[f"{c}:{end}"] = scores[f"{c}:{end}"].reindex(ids).astype(float) \
                    if f"{c}:{end}" in scores.columns else np.nan
            ordered += [f"{c}:{end}" for end in INTERVAL_ENDS]
    table = table[ordered].copy()

    for b in shown_benchmarks:
        table[f"skipped:{b}"] = data[f"skipped:{b}"].astype("Int64")
    table.attrs["footnotes"] = footnotes
    table.attrs["stale"] = {c: sorted(b for b in stale.get(c, {}) if b in shown_benchmarks) for c in ids}
    table.attrs["groups"] = [r.group for r in rows]
    return table
