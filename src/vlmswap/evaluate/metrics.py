"""How examples are drawn and scored, shared by every benchmark: the slim-subset draws (whole set
and per split), the VQA soft accuracy, box IoU, the choice payload and its argmax, the ranking
metrics (ROC-AUC, average precision, F1) and the percentages the tables report.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 and `TRI-ML/vlm-evaluation`'s harnesses;
the ranking metrics are written with numpy to match sklearn's definitions. Choice benchmarks
(`mode = "choice"`) declare `choices`; the runner stores each prediction as a JSON list of the
renormalized probabilities aligned with `choices`, e.g. '[0.8, 0.2]'. This module depends on
nothing else in the package.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from numbers import Real
from typing import TypeVar

import numpy as np

SLIM_SEED = 21  # vlm-evaluation shuffles example ids once with random.Random(21) (prismatic_spec.md 3.1)
PROBABILITY_SUM_TOLERANCE = 1e-3  # the runner writes 6 decimals; a raw (unrenormalized) softmax fails this

_T = TypeVar("_T")


# -- slim subsets ---------------------------------------------------------------------------------


def subset_size(subset: str) -> int | None:
    """None for "full", N for "slim-N"; anything else is a ValueError."""
    if subset == "full":
        return None
    m = re.fullmatch(r"slim-(\d+)", subset)
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"unknown subset {subset!r}: expected 'full' or 'slim-N' with N > 0 (e.g. 'slim-1024')")
    return int(m.group(1))


def draw_subset(records: Sequence[_T], subset: str) -> list[_T]:
    """Shuffle once with Random(21) and take the first N, as vlm-evaluation builds its slim sets
    (/work/shared/reference/prismatic_spec.md 3.1). The full set comes back in the same shuffled
    order. `records` (examples and skipped alike, so that a broken record does not move the
    others) are in the order the official files list them; the permutation depends only on
    their count, so membership matches the harness whenever that order does."""
    n = subset_size(subset)
    order = list(range(len(records)))
    random.Random(SLIM_SEED).shuffle(order)
    if n is not None:
        order = order[:n]
    return [records[i] for i in order]


def draw_subset_per_split(records: Sequence[_T], splits: Sequence[str | None], subset: str,
                          split_names: Sequence[str]) -> list[_T]:
    """vlm-evaluation's slim draw for POPE, TallyQA and OCID-Ref: shuffle ALL ids once with
    Random(21), then walk that order taking each record while its split has fewer than N
    (prismatic_spec.md 3.1). "full" is the whole shuffled order, as for `draw_subset`.

    `splits[i]` is record i's split, or None for a broken record whose split cannot be read; such a
    record is kept if the walk reaches it before every split is full, so it is reported in the
    subset it would have disturbed. Records are in the order the official files list them."""
    if len(records) != len(splits):
        raise ValueError(f"{len(records)} records but {len(splits)} split labels")
    unknown = {s for s in splits if s is not None} - set(split_names)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected one of {list(split_names)}")
    n = subset_size(subset)
    order = list(range(len(records)))
    random.Random(SLIM_SEED).shuffle(order)
    if n is None:
        return [records[i] for i in order]
    counts = dict.fromkeys(split_names, 0)
    out: list[_T] = []
    for i in order:
        if all(c >= n for c in counts.values()):
            break  # the harness stops here too
        s = splits[i]
        if s is None:
            out.append(records[i])
        elif counts[s] < n:
            out.append(records[i])
            counts[s] += 1
    return out


# -- free-form answers and boxes ------------------------------------------------------------------


def soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Leave-one-out VQA accuracy in [0, 1] for an already normalized prediction and answers.

    For each of the n human answers, count how many of the *other* n-1 equal the prediction and
    take min(1, count / 3); the score is the mean over the n answers ("10 choose 9" averaging).
    """
    if not answers:
        raise ValueError("soft_accuracy needs at least one ground-truth answer")
    total_matches = sum(1 for a in answers if a == prediction)
    credits = []
    for a in answers:
        others = total_matches - (1 if a == prediction else 0)
        credits.append(min(1.0, others / 3))
    return sum(credits) / len(credits)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (0 when they do not overlap or both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# -- choices ----------------------------------------------------------------------------------------


def parse_choice_probabilities(text: str, n_choices: int, example_id: str) -> list[float]:
    """The runner's choice payload: a JSON list of `n_choices` probabilities in [0, 1] summing to 1.

    A payload that is not exactly that is a broken run (the runner writes it from the model's
    logits, never from generated text), so it raises ValueError naming the example rather than
    being scored as a wrong answer."""
    def bad(why: str) -> ValueError:
        shown = text if not isinstance(text, str) or len(text) <= 80 else text[:77] + "..."
        return ValueError(f"example {example_id}: choice prediction {shown!r} {why}; expected a JSON "
                          f"list of {n_choices} probabilities aligned with the benchmark's choices")

    if not isinstance(text, str):
        raise bad("is not a string")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise bad("is not JSON") from None
    if not isinstance(value, list):
        raise bad("is not a list")
    if len(value) != n_choices:
        raise bad(f"has {len(value)} values")
    if not all(isinstance(p, Real) and not isinstance(p, bool) for p in value):
        raise bad("holds a non-number")
    probs = [float(p) for p in value]
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
        raise bad("holds a value outside [0, 1]")
    if abs(sum(probs) - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise bad(f"sums to {sum(probs):.6f}, not 1 (not renormalized over the choices)")
    return probs


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on a tie, as `np.argmax` does in the harness."""
    return int(np.argmax(np.asarray(values, dtype=float)))


# -- ranking metrics --------------------------------------------------------------------------------


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores), dtype=float)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve as sklearn's `roc_auc_score` computes it for binary labels (ties
    count one half: the Mann-Whitney statistic); None when only one class is present (sklearn
    raises there)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """sklearn's `average_precision_score`: sum over distinct score thresholds (high to low) of
    (recall gained) x (precision there). None when there is no positive label (sklearn warns and
    the value means nothing there)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if not y.any():
        return None
    order = np.argsort(-s, kind="mergesort")
    ordered, hits = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), len(s) - 1]  # last index of each threshold group
    tps = np.cumsum(hits)[last].astype(float)
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1(labels: Sequence[bool], predicted: Sequence[bool]) -> float:
    """Binary F1 of the positive class; 0 when there are no positives at all (sklearn's
    zero_division default)."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    tp = int((y & p).sum())
    denominator = 2 * tp + int((~y & p).sum()) + int((y & ~p).sum())
    return 2 * tp / denominator if denominator else 0.0


# -- percentages ----------------------------------------------------------------------------------


def percent(x: float | None) -> float | None:
    """A fraction as a percentage (None stays None: a metric that is not defined here)."""
    return None if x is None else 100.0 * x


def mean_percent(values: Sequence[float]) -> float:
    """The mean of per-example credits in percent, rounded to 2 decimals as the official VQA, GQA
    and VizWiz evaluators report it."""
    return round(100 * sum(values) / len(values), 2)
