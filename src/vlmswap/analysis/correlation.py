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


def correlation_matrix(scores: pd.DataFrame, columns: list[str], min_runs: int = 3) -> pd.DataFrame:
    """Pearson r between `columns`, over the rows (cells) of `scores` that have all of them.

    Fewer than `min_runs` such rows raise ValueError. A column that is constant over those rows
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
        raise ValueError(
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
    are grey and annotated "–"; the title states the number of runs.
    """
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vlmswap.analysis.tables import COLUMN_TITLES

    with atomic_path(out_csv) as tmp:
        matrix.to_csv(tmp, na_rep="", lineterminator="\n")

    values = matrix.to_numpy(dtype=float)
    rows = [COLUMN_TITLES.get(str(c), str(c)) for c in matrix.index]
    cols = [COLUMN_TITLES.get(str(c), str(c)) for c in matrix.columns]
    size = 1.2 + 0.75 * max(len(cols), 2)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="Pearson r")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), rows)
    fontsize = 9 if len(cols) <= 8 else 7
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if np.isnan(v) else f"{v:.2f}"
            color = "white" if not np.isnan(v) and abs(v) > 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_title(f"{title} (n = {n_runs} run{'s' if n_runs != 1 else ''})")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
