"""Benchmark x benchmark Pearson correlation over runs, as CSV and an annotated heatmap.

Each run (cell) is one observation; a correlation between two benchmarks says whether backbones
that do well on one tend to do well on the other. Only cells with every requested column enter,
so all entries of one matrix are computed over the same runs (the count is stated in the title).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vlmswap.atomic import atomic_path

__all__ = ["correlation_matrix", "write_correlation"]


class TooFewRuns(ValueError):
    """Fewer finished runs than a correlation needs; the message says how many and which are missing."""


def correlation_matrix(scores: pd.DataFrame, columns: list[str], min_runs: int = 3) -> pd.DataFrame:
    """Pearson r between `columns`, over the rows (cells) of `scores` that have all of them.

    Fewer than `min_runs` such rows raise TooFewRuns. A column that is constant over those rows
    has no defined correlation: its row and column are NaN (its diagonal too) and a line about it
    is listed in `attrs["warnings"]`. `attrs["n_runs"]` and `attrs["cells"]` say which rows entered.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("correlation_matrix needs at least one column")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"column(s) listed more than once: {duplicated}")
    absent = [c for c in columns if c not in scores.columns]
    if absent:
        raise ValueError(f"scores have no column(s) {absent} (have: {', '.join(map(str, scores.columns))})")
    if min_runs < 2:
        raise ValueError(f"min_runs must be at least 2 (a correlation needs two runs), got {min_runs}")

    complete = scores[columns].astype(float).dropna(how="any")
    n = len(complete)
    if n < min_runs:
        incomplete = [str(i) for i in scores.index if i not in complete.index]
        shown = ", ".join(incomplete[:5]) + (f", ... ({len(incomplete)} in all)" if len(incomplete) > 5 else "")
        raise TooFewRuns(
            f"a correlation over {columns} needs at least {min_runs} runs that have all of them; "
            f"only {n} of {len(scores)} do" + (f" (missing some: {shown})" if incomplete else "")
        )

    x = complete.to_numpy(dtype=float)
    centered = x - x.mean(axis=0)
    norms = np.sqrt((centered**2).sum(axis=0))
    # Constant up to float noise: relative to the scale of the values, as scores are in percent.
    scale = np.maximum(np.abs(x).max(axis=0), 1.0)
    constant = norms <= 1e-12 * scale * np.sqrt(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (centered.T @ centered) / np.outer(norms, norms)
    r = np.clip(r, -1.0, 1.0)
    r[constant, :] = np.nan
    r[:, constant] = np.nan
    np.fill_diagonal(r, np.where(constant, np.nan, 1.0))

    matrix = pd.DataFrame(r, index=pd.Index(columns), columns=pd.Index(columns))
    matrix.attrs["warnings"] = [
        f"{c} is constant ({x[0, i]:g}) over the {n} runs, so its correlations are undefined (NaN)"
        for i, c in enumerate(columns)
        if constant[i]
    ]
    matrix.attrs["n_runs"] = n
    matrix.attrs["cells"] = [str(i) for i in complete.index]
    return matrix


def write_correlation(matrix: pd.DataFrame, out_csv: Path, out_png: Path, title: str, n_runs: int) -> None:
    """Write `matrix` as CSV (full precision, empty for NaN) and as an annotated PNG heatmap.

    The colormap is diverging and fixed to [-1, 1], so colors compare across figures; NaN entries
    are grey and annotated "–"; the title states the number of runs on a line of its own (it used to
    run past the figure's edge and be cut at "(n =").
    """
    from vlmswap.analysis.figures import correlation_figure

    with atomic_path(out_csv) as tmp:
        matrix.to_csv(tmp, na_rep="", lineterminator="\n")
    correlation_figure(matrix, title, n_runs, out_png, pdf=False)
