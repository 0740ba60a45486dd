"""The study's figures, one style, each as PNG + PDF: training loss per cell, ours vs the paper per
table, score vs encoder size per family, score vs IN1K accuracy, ours vs paper per benchmark, and
the benchmark correlation heatmaps (all cells and per table group).

Every figure states its units and how many runs it shows; titles are wrapped to the figure's width
and laid out by matplotlib's constrained layout, so nothing is clipped. A figure with nothing to
show (no cell has a paper row, no checkpoint has an IN1K accuracy, ...) is still written and says
why, so a report never silently lacks one.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from vlmswap.atomic import atomic_path
from vlmswap.study import Study

__all__ = ["correlation_figure", "figure_names", "group_slug", "write_study_figures"]

FAMILY_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                 "#7f7f7f", "#bcbd22"]
OURS, PAPER = "#1f77b4", "#bbbbbb"
SCORE_LABEL = "score (%)"


def _figure(width: float, height: float):
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(fig, text: str, fontsize: float = 11) -> None:
    """A suptitle wrapped to the figure's width (about 0.55 em per character), never clipped."""
    chars = max(20, int(fig.get_figwidth() * 72 / (fontsize * 0.55)))
    fig.suptitle("\n".join(textwrap.wrap(text, chars)), fontsize=fontsize)


def _save(fig, out_png: Path) -> None:
    """PNG (150 dpi) and a PDF beside it, both written atomically."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    with atomic_path(out_png.with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf")


def _empty(out_png: Path, title: str, why: str) -> None:
    fig = _figure(6.4, 3.2)
    _title(fig, title)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(why, 60)), ha="center", va="center", fontsize=10, color="0.3")
    _save(fig, out_png)


def _colors(families: list[str]) -> dict[str, str]:
    return {f: FAMILY_COLORS[i % len(FAMILY_COLORS)] for i, f in enumerate(dict.fromkeys(families))}


def group_slug(name: str) -> str:
    """A correlation group's file name: "all cells" -> "all", "table-1/table-2" -> "table-1+table-2"."""
    return "all" if name == "all cells" else re.sub(r"[^A-Za-z0-9.+-]+", "+", name)


def _cell_label(row: pd.Series) -> str:
    return f"{row['display']}{'(f)' if row['connector'] == 'mlp3' else ''} {row['objective']}@{row['geometry']}"


# ----------------------------------------------------------------------------------------------
# One figure each


def loss_figure(study: Study, results_dir: Path, out_png: Path) -> None:
    """Training loss per cell against the optimizer step (raw, faint; a running mean, solid)."""
    curves = {}
    for cell in study.cells:
        path = results_dir / "models" / cell.id / "loss.jsonl"
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if records:
                curves[cell.id] = pd.DataFrame.from_records(records)
    title = f"Training loss per cell ({len(curves)} of {len(study.cells)} cells, study {study.name})"
    if not curves:
        _empty(out_png, title, "No cell has a loss.jsonl yet (results/<study>/models/<cell>/loss.jsonl).")
        return
    fig = _figure(8.0, 4.8)
    _title(fig, title)
    ax = fig.add_subplot()
    colors = FAMILY_COLORS * (1 + len(curves) // len(FAMILY_COLORS))
    for color, (cell_id, data) in zip(colors, curves.items()):
        window = max(1, len(data) // 25)
        ax.plot(data["step"], data["loss"], color=color, alpha=0.25, linewidth=0.8)
        ax.plot(data["step"], data["loss"].rolling(window, min_periods=1).mean(), color=color, linewidth=1.6,
                label=cell_id)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy, nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if len(curves) <= 12 else 5, loc="upper right", ncols=1 if len(curves) <= 12 else 2)
    _save(fig, out_png)


def table_figure(table: pd.DataFrame, title: str, out_png: Path) -> None:
    """Horizontal bars per table row for each weighted column shown: ours, and the paper beside it."""
    weighted = [c for c in ("vqa-weighted", "loc-weighted", "overall-weighted") if c in table.columns]
    if not weighted or table.empty:
        _empty(out_png, title, "This table has no weighted column to plot.")
        return
    from vlmswap.analysis.tables import COLUMN_TITLES

    labels = [" ".join(str(row.get(k, "")) for k in ("Pretrained", "Visual Encoder", "Image Size")).strip() or cid
              for cid, row in table.iterrows()]
    n_ours = int(table[weighted[0]].notna().sum())
    has_paper = any(table[f"{c}:paper"].notna().any() for c in weighted if f"{c}:paper" in table.columns)
    fig = _figure(3.4 * len(weighted) + 2.6, 1.8 + 0.32 * len(table))
    _title(fig, f"{title} (ours: {n_ours} of {len(table)} rows scored" + ("; grey: the paper)" if has_paper else ")"))
    y = np.arange(len(table))
    for i, column in enumerate(weighted):
        ax = fig.add_subplot(1, len(weighted), i + 1)
        ours = table[column].to_numpy(dtype=float)
        paper = table[f"{column}:paper"].to_numpy(dtype=float) if f"{column}:paper" in table.columns else None
        height = 0.4 if has_paper else 0.7
        ax.barh(y - (height / 2 if has_paper else 0), np.nan_to_num(ours), height, color=OURS, label="ours")
        if has_paper:
            ax.barh(y + height / 2, np.nan_to_num(paper), height, color=PAPER, label="paper")
        for j, value in enumerate(ours):
            if math.isnan(value):
                ax.text(0.3, y[j] - (height / 2 if has_paper else 0), "– (not scored)", va="center", fontsize=7)
        top = np.nanmax(np.concatenate([ours, paper if paper is not None else ours, [0.0]]))
        ax.set_xlim(0, max(10.0, 1.08 * top))  # percent from 0: bars compare by length
        ax.set_yticks(y, labels if i == 0 else [""] * len(y), fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{COLUMN_TITLES[column]} (%)")
        ax.grid(axis="x", alpha=0.3)
    if has_paper:  # outside the axes, so it never covers a bar
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    _save(fig, out_png)


def size_figure(frame: pd.DataFrame, out_png: Path) -> None:
    """Weighted scores against encoder size; one line per family, objective and interface."""
    data = frame.dropna(subset=["params", "overall-weighted"])
    title = f"VLM score vs encoder size, per family ({len(data)} scored cells with a size)"
    if data.empty:
        _empty(out_png, title, "No scored cell has an encoder size (backbones.<id>.params in the config, e.g. 22M).")
        return
    colors = _colors(list(data["family"]))
    fig = _figure(10.0, 4.4)
    _title(fig, title)
    for i, score in enumerate(("overall-weighted", "loc-weighted")):
        ax = fig.add_subplot(1, 2, i + 1)
        for (family, objective, geometry, connector), group in data.groupby(
                ["family", "objective", "geometry", "connector"], sort=False):
            group = group.sort_values("params")
            ax.plot(group["params"], group[score], marker="o", color=colors[family], linewidth=1,
                    linestyle="-" if connector == "mlp2" else "--", alpha=0.85)
        for family, color in colors.items():
            ax.plot([], [], marker="o", color=color, label=family)
        ax.set_xscale("log")
        ax.set_xlabel("encoder size (million parameters, log scale)")
        ax.set_ylabel({"overall-weighted": "Weighted Overall (%)", "loc-weighted": "Weighted Loc. (%)"}[score])
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, title="family (dashed: 3-layer connector)", title_fontsize=7)
    _save(fig, out_png)


def in1k_figure(frame: pd.DataFrame, out_png: Path) -> None:
    """Weighted scores against the checkpoints' IN1K top-1 accuracy."""
    data = frame.dropna(subset=["in1k_acc", "overall-weighted"])
    title = f"VLM score vs the checkpoint's IN1K top-1 accuracy ({len(data)} scored cells with one)"
    if data.empty:
        _empty(out_png, title, "No scored cell's checkpoint has an IN1K accuracy (checkpoints.<objective>.in1k_acc).")
        return
    colors = _colors(list(data["family"]))
    fig = _figure(10.0, 4.2)
    _title(fig, title)
    for i, score in enumerate(("overall-weighted", "loc-weighted")):
        ax = fig.add_subplot(1, 2, i + 1)
        for family, group in data.groupby("family", sort=False):
            ax.scatter(group["in1k_acc"], group[score], color=colors[family], label=family, s=22)
        ax.set_xlabel("IN1K top-1 accuracy of the checkpoint (%)")
        ax.set_ylabel({"overall-weighted": "Weighted Overall (%)", "loc-weighted": "Weighted Loc. (%)"}[score])
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    _save(fig, out_png)


def ours_vs_paper_figure(frame: pd.DataFrame, paper: pd.DataFrame, columns: list[str], out_png: Path) -> None:
    """Ours against the paper's number, one panel per score column, with the identity line."""
    from vlmswap.analysis.tables import COLUMN_TITLES

    shown = [c for c in [*columns, "vqa-weighted", "loc-weighted", "overall-weighted"]
             if c in paper.columns and (frame[c].notna() & paper[c].notna()).any()]
    title = "Ours vs the paper, per benchmark (each point one cell; the line is ours = paper)"
    if not shown:
        _empty(out_png, title, "No scored cell has the paper's number for it (cells' `paper:` in the config): "
                               "a cell the paper does not have is never compared.")
        return
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = _figure(3.0 * ncols + 0.4, 2.9 * nrows + 0.6)
    _title(fig, title)
    for i, column in enumerate(shown):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        both = pd.DataFrame({"ours": frame[column], "paper": paper[column]}).dropna()
        ax.scatter(both["paper"], both["ours"], s=14, color=OURS)
        low, high = float(both.min().min()), float(both.max().max())
        pad = max(1.0, 0.05 * (high - low))
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.5", linewidth=0.8)
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_title(f"{COLUMN_TITLES.get(column, column)} (n = {len(both)})", fontsize=9)
        ax.set_xlabel("paper (%)", fontsize=8)
        ax.set_ylabel("ours (%)", fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, out_png)


def correlation_figure(matrix: pd.DataFrame, title: str, n_runs: int, out_png: Path, pdf: bool = True) -> None:
    """An annotated Pearson heatmap: diverging colormap fixed to [-1, 1], NaN grey and "–", the title
    (wrapped, with the run count on its own line) never clipped."""
    import matplotlib

    from vlmswap.analysis.tables import COLUMN_TITLES

    values = matrix.to_numpy(dtype=float)
    rows = [COLUMN_TITLES.get(str(c), str(c)) for c in matrix.index]
    cols = [COLUMN_TITLES.get(str(c), str(c)) for c in matrix.columns]
    size = 1.2 + 0.75 * max(len(cols), 2)
    fig = _figure(max(size + 1.5, 5.0), size + 0.6)
    _title(fig, f"{title}\n(n = {n_runs} run{'s' if n_runs != 1 else ''})", fontsize=10)
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
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if not np.isnan(v) and abs(v) > 0.6 else "black")
    if pdf:
        _save(fig, out_png)
    else:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=150)


# ----------------------------------------------------------------------------------------------
# A study's figures


def figure_names(study: Study) -> list[str]:
    """The PNG names `write_study_figures` writes (each with a PDF beside it), known before any run:
    the workflow declares them as outputs."""
    from vlmswap.analysis.findings import table_groups

    names = ["loss.png", "size-vs-score.png", "in1k-vs-score.png", "ours-vs-paper.png", "correlation-all.png"]
    names += [f"correlation-{group_slug(g)}.png" for g in table_groups(study)]
    names += [f"tables/{t}.png" for t in study.tables]
    return list(dict.fromkeys(names))


def write_study_figures(study: Study, results_dir: Path, out_dir: Path, log: Callable[[str], None] = print) -> None:
    from vlmswap.analysis.correlation import correlation_matrix
    from vlmswap.analysis.findings import cell_frame, table_groups
    from vlmswap.analysis.report import study_table

    out_dir = Path(out_dir)
    frame = cell_frame(study, results_dir)
    loss_figure(study, results_dir, out_dir / "loss.png")
    size_figure(frame, out_dir / "size-vs-score.png")
    in1k_figure(frame, out_dir / "in1k-vs-score.png")
    paper = pd.DataFrame.from_dict({c.id: dict(c.paper) for c in study.cells}, orient="index").reindex(frame.index)
    ours_vs_paper_figure(frame, paper, study.columns, out_dir / "ours-vs-paper.png")
    for name, cells in {"all cells": study.cell_ids, **table_groups(study)}.items():
        out = out_dir / f"correlation-{group_slug(name)}.png"
        title = f"Pearson r between benchmarks, {name} ({study.name} study)"
        try:
            matrix = correlation_matrix(frame.loc[cells], study.columns)
        except ValueError as e:
            _empty(out, title, f"Not enough finished cells: {e}")
            continue
        correlation_figure(matrix, title, matrix.attrs["n_runs"], out)
    for table_id in study.tables:
        table, title, _ = study_table(study, table_id, results_dir)
        table_figure(table, title, out_dir / "tables" / f"{table_id}.png")
    log(f"figures: {len(figure_names(study))} PNG + PDF -> {out_dir}")
