"""Bootstrap 95% intervals of a benchmark's headline scores, so that a table shows which differences
between cells are larger than the noise of a finite benchmark.

A column's interval is the 2.5th and 97.5th percentile of its score over `RESAMPLES` resamples of
the scored examples drawn with replacement (the percentile bootstrap), from a fixed seed so that a
rerun writes the same bytes. It is computed only for a column that is the mean of one per-example
value (soft accuracy, TextVQA's credit per variant, a 0/1 correctness): the mean of those values is
checked against the scorer's own number first, and a column that is not such a mean (POPE's mean
over splits of unequal size) gets no interval rather than a wrong one.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 95.0
TOLERANCE = 0.006  # percent: a scorer may round its number to 2 decimals (VizWiz does)


def column_values(column: str, per_example: Mapping[str, Mapping]) -> list[float] | None:
    """The per-example values whose mean (in percent) is `column`, or None if there are none."""
    rows = list(per_example.values())
    if column in ("textvqa-ocr", "textvqa-pure"):
        variant = column.split("-")[1]
        rows = [r for r in rows if r.get("variant") == variant]
    for key in ("score", "correct"):
        if rows and all(key in r for r in rows):
            return [float(r[key]) for r in rows]
    return None


def percentile_interval(values: list[float], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The percentile bootstrap interval (in the values' unit) of the mean of `values`."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (100.0 - LEVEL) / 2
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_intervals(columns: Mapping[str, float], per_example: Mapping[str, Mapping]) -> dict[str, list[float]]:
    """column -> [low, high] in percent, rounded to 2 decimals, for each column that is a checked
    mean of per-example values (see the module docstring)."""
    out: dict[str, list[float]] = {}
    for column, score in columns.items():
        values = column_values(column, per_example)
        if not values or abs(100.0 * sum(values) / len(values) - score) > TOLERANCE:
            continue
        low, high = percentile_interval(values)
        out[column] = [round(100.0 * low, 2), round(100.0 * high, 2)]
    return out
