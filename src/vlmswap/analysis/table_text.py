"""A built table (`tables.build_table`) as text: CSV at full precision, the Markdown the paper's tables
look like, and a LaTeX (booktabs) copy. Scores print with 2 decimals, "–" where missing, "stale" where
the result belongs to an older model, a dagger where the benchmark skipped examples, the bootstrap
interval in brackets and the delta to the paper where the row has a paper number."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd

from vlmswap.analysis.tables import (ALL_COLUMNS, COLUMN_BENCHMARK, COLUMN_TITLES, DAGGER, INTERVAL_ENDS,
                                     WEIGHTED_COLUMNS)
from vlmswap.atomic import atomic_path, write_text

__all__ = ["MISSING", "STALE", "to_latex", "to_markdown", "write_table"]

MISSING = "–"  # en dash, as the paper prints a missing entry
STALE = "stale"  # a result that belongs to an older model of the cell: shown, never aggregated
INTERVAL_NOTE = ("In brackets: the bootstrap 95% interval of the score (1,000 resamples of the benchmark's "
                 "examples; evaluate/intervals.py). Differences between rows inside each other's intervals "
                 "are not evidence of a difference.")




def _score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c in ALL_COLUMNS or c in WEIGHTED_COLUMNS]


def _label_columns(table: pd.DataFrame) -> list[str]:
    scores = set(_score_columns(table))
    return [c for c in table.columns
            if c not in scores and not str(c).startswith("skipped:")
            and not str(c).endswith((":paper", ":delta", *(f":{end}" for end in INTERVAL_ENDS)))]


def _has_intervals(table: pd.DataFrame) -> bool:
    return any(f"{c}:lo" in table.columns and table[f"{c}:lo"].notna().any() for c in _score_columns(table))


def _interval(table: pd.DataFrame, row: pd.Series, c: str) -> tuple[float, float] | None:
    """The score's bootstrap interval where it has one and the score is shown, else None."""
    if f"{c}:lo" not in table.columns or pd.isna(row[f"{c}:lo"]) or pd.isna(row[c]):
        return None
    return float(row[f"{c}:lo"]), float(row[f"{c}:hi"])


def _cell_text(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _has_paper(table: pd.DataFrame) -> bool:
    return any(table[f"{c}:paper"].notna().any() for c in _score_columns(table) if f"{c}:paper" in table.columns)


class _Entry(NamedTuple):
    """What one score cell shows, before it is written as Markdown or LaTeX."""
    text: str  # ours: 2 decimals, MISSING or STALE
    skipped: bool  # the benchmark skipped examples (a dagger)
    interval: tuple[float, float] | None  # shown only with a current score
    delta: float  # ours minus the paper's, NaN where either is missing
    paper: float  # the paper's number, NaN where the row has none


class _Style(NamedTuple):
    """How a format writes the parts of an entry; each template takes the numbers by name."""
    text: Callable[[str], str]  # the score's text -> the format's text
    dagger: str
    interval: str  # {lo}, {hi}
    delta: str  # {delta}
    paper: str  # {paper}


def _score_entry(table: pd.DataFrame, cell_id: str, row: pd.Series, c: str) -> _Entry:
    value = row[c]
    text = MISSING if pd.isna(value) else f"{value:.2f}"
    if COLUMN_BENCHMARK.get(c) in table.attrs.get("stale", {}).get(cell_id, ()):
        text = STALE
    skip_column = f"skipped:{COLUMN_BENCHMARK.get(c, '')}"
    skipped = bool(skip_column in table.columns and pd.notna(row[skip_column]) and row[skip_column] > 0)
    interval = _interval(table, row, c) if text not in (MISSING, STALE) else None
    return _Entry(text, skipped, interval, float(row.get(f"{c}:delta", np.nan)), float(row.get(f"{c}:paper", np.nan)))


def _render(entry: _Entry, style: _Style) -> str:
    """ours, dagger, [interval], then (delta) where the paper has the row, else (paper N) if only it has a number."""
    out = style.text(entry.text) + (style.dagger if entry.skipped else "")
    if entry.interval:
        out += style.interval.format(lo=entry.interval[0], hi=entry.interval[1])
    if not math.isnan(entry.delta):
        out += style.delta.format(delta=entry.delta)
    elif not math.isnan(entry.paper):
        out += style.paper.format(paper=entry.paper)
    return out


def to_markdown(table: pd.DataFrame, title: str, notes: list[str] | tuple[str, ...] = ()) -> str:
    """The Markdown `write_table` writes: a title, the table (scores to 2 decimals), then notes.

    Where the row has the paper's number a score reads `ours (±delta)`; a missing or stale score of
    a row the paper has reads `– (paper 59.86)`, so the paper's value is never hidden.
    """
    score_columns = _score_columns(table)
    label_columns = _label_columns(table)
    header = [*label_columns, *(COLUMN_TITLES[c] for c in score_columns)]
    lines = [
        "| " + " | ".join(_cell_text(h) for h in header) + " |",
        "|" + "|".join([" --- "] * len(label_columns) + [" ---: "] * len(score_columns)) + "|",
    ]
    for cell_id, row in table.iterrows():
        cells = [_cell_text(row[c]) for c in label_columns]
        cells += [_render(_score_entry(table, cell_id, row, c), _MARKDOWN) for c in score_columns]
        lines.append("| " + " | ".join(cells) + " |")
    parts = [f"## {title}", "\n".join(lines)]
    if _has_paper(table):
        parts.append("In parentheses: ours minus the paper's number (the CSV has both, as `<column>:paper` and "
                     "`<column>:delta`); a row without one is not in the paper.")
    if _has_intervals(table):
        parts.append(INTERVAL_NOTE)
    parts += [str(n) for n in notes]
    parts += list(table.attrs.get("footnotes", []))
    return "\n\n".join(parts) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_text(text: Any) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace(MISSING, "--").replace(DAGGER, r"$^\dagger$").replace("≥", r"$\geq$").replace("−", "-")


# a no-break space keeps a score, its interval and its delta on one line in narrow (HTML) views
_MARKDOWN = _Style(text=str, dagger=DAGGER, interval="\u00a0[{lo:.1f},\u00a0{hi:.1f}]", delta="\u00a0({delta:+.2f})",
                   paper="\u00a0(paper\u00a0{paper:.2f})")
_LATEX = _Style(text=_latex_text, dagger=r"$^\dagger$", interval=r" {{\tiny [{lo:.1f}, {hi:.1f}]}}",
                delta=r" {{\tiny ({delta:+.2f})}}", paper=r" {{\tiny (paper {paper:.2f})}}")


def to_latex(table: pd.DataFrame, title: str, notes: list[str] | tuple[str, ...] = ()) -> str:
    r"""A booktabs table in the paper's column order: labels, then each score with its delta to the
    paper in small type; `\midrule` between row groups (backbone families) as the paper separates
    them; notes and footnotes under the tabular. Needs `\usepackage{booktabs}`."""
    score_columns = _score_columns(table)
    label_columns = _label_columns(table)
    groups = table.attrs.get("groups") or [""] * len(table)
    header = [*(_latex_text(c) for c in label_columns), *(_latex_text(COLUMN_TITLES[c]) for c in score_columns)]
    lines = [
        r"% Written by vlmswap (analysis/table_text.py::to_latex); needs \usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        rf"\caption{{{_latex_text(title)}}}",
        rf"\begin{{tabular}}{{{'l' * len(label_columns)}{'r' * len(score_columns)}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for i, (cell_id, row) in enumerate(table.iterrows()):
        if i > 0 and groups[i] != groups[i - 1]:
            lines.append(r"\midrule")
        cells = [_latex_text(row[c]) for c in label_columns]
        cells += [_render(_score_entry(table, cell_id, row, c), _LATEX) for c in score_columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    remarks = ["Small type: ours minus the paper's number."] if _has_paper(table) else []
    remarks += [INTERVAL_NOTE] if _has_intervals(table) else []
    remarks += [str(n) for n in notes] + list(table.attrs.get("footnotes", []))
    if remarks:
        lines.append(r"\par\smallskip")
        lines += [rf"{{\tiny {_latex_text(r)}}}\par" for r in remarks]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, out_csv: Path, out_md: Path, title: str, notes: list[str],
                out_tex: Path | None = None) -> None:
    """Write `table` (from `build_table`) as CSV (full precision, empty where missing), Markdown and,
    when `out_tex` is given, LaTeX (`to_latex`).

    The Markdown shows labels then scores with 2 decimals, "–" for a missing score, a dagger on a
    benchmark that skipped examples, the delta to the paper where the row has a paper number, then
    `notes` and the table's own footnotes.
    """
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=True, index_label="cell_id", na_rep="", lineterminator="\n")
    write_text(out_md, to_markdown(table, title, notes))
    if out_tex is not None:
        write_text(out_tex, to_latex(table, title, notes))
