"""POPE (COCO adversarial / popular / random): yes/no object-hallucination probes scored from the
first-token probabilities of "Yes" and "No".

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (POPE) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/pope.py`: the three COCO POPE files are JSON
lines (`question_id`, `image`, `text`, `label`); the prompt is the VQA prompt; the prediction is
the argmax of the renormalized first-token probabilities over ("Yes", "No") (a tie goes to "Yes",
as `np.argmax` does); the headline is the UNWEIGHTED mean of the three split accuracies; ROC-AUC
and PR-AUC (average precision) are computed on P(Yes) per split and on the pooled examples.
Slim subsets take the first N of each split along ONE Random(21) shuffle of all examples.

Expected layout under `root`:

    root/coco_pope_adversarial.json    # AoiDragon/POPE output/coco, JSON lines
    root/coco_pope_popular.json
    root/coco_pope_random.json
    root/val2014/COCO_val2014_{image_id:012d}.jpg   # the `image` field, from COCO val2014.zip

This module also holds what the other choice and per-split benchmarks share (TallyQA, OCID-Ref,
VizWiz import it): the per-split slim draw, the choice-payload parser and the ranking metrics
(ROC-AUC, average precision, F1), written with numpy to match sklearn's definitions.

Choice benchmarks (`mode = "choice"`) declare `choices`; the runner stores each prediction as a
JSON list of the renormalized probabilities aligned with `choices`, e.g. '[0.8, 0.2]'.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vlmswap.evaluate.registry import (
    SLIM_SEED, AnnotationFileError, BenchmarkScore, Example, Skipped, require_predictions, split_records,
    subset_size,
)
from vlmswap.evaluate.vqav2 import vqa_prompt

SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")  # the harness reads them in this order
IMAGE_DIR = "val2014"
LABELS = ("yes", "no")  # aligned with POPE.choices
PROBABILITY_SUM_TOLERANCE = 1e-3  # the runner writes 6 decimals; a raw (unrenormalized) softmax fails this

_T = TypeVar("_T")


def split_file(split: str) -> str:
    return f"coco_pope_{split}.json"


# -- shared by the per-split benchmarks (POPE, TallyQA, OCID-Ref) ------------------------------


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


def percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


# -- POPE ---------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_json_lines(path: Path, expected: str) -> list[tuple[int, Any]]:
    """(line number, parsed value or the JSONDecodeError) for each non-blank line; a missing or
    unreadable file is an AnnotationFileError naming it."""
    if not path.is_file():
        raise AnnotationFileError(f"annotation file not found: {path} (expected {expected})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationFileError(f"cannot read annotation file {path}: {e} (expected {expected})") from e
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((number, e))
    return out


class POPE:
    name = "pope"
    mode = "choice"
    columns = ("pope",)
    annotation_files = tuple(split_file(s) for s in SPLITS)
    choices: tuple[str, ...] = ("Yes", "No")  # vlm-evaluation's return_string_probabilities

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        records: list[Example | Skipped] = []
        splits: list[str | None] = []
        seen: set[str] = set()
        for split in SPLITS:
            path = root / split_file(split)
            lines = read_json_lines(path, 'POPE JSON lines: {"question_id", "image", "text", "label": "yes"|"no"}')
            for number, value in lines:
                record = self._example(root, split, number, value, path)
                if isinstance(record, Example):
                    if record.id in seen:
                        record = Skipped(record.id, str(path), "duplicate question_id in this split")
                    seen.add(record.id)
                records.append(record)
                splits.append(split)  # every record, broken or not, belongs to its file's split
        return split_records(draw_subset_per_split(records, splits, subset, SPLITS))

    def _example(self, root: Path, split: str, number: int, value: Any, path: Path) -> Example | Skipped:
        where = f"{split}:line{number}"
        if isinstance(value, json.JSONDecodeError):
            return Skipped(where, str(path), f"line is not JSON: {value}")
        if not isinstance(value, dict):
            return Skipped(where, str(path), "line is not a JSON object")
        qid = value.get("question_id")
        if not _is_int(qid):
            return Skipped(where, str(path), f"question_id is not an integer: {qid!r}")
        sid = f"{split}-{qid}"  # question ids repeat across splits (the harness hashes this string)
        if not isinstance(value.get("text"), str) or not value["text"].strip():
            return Skipped(sid, str(path), "question text ('text') is missing or empty")
        if value.get("label") not in LABELS:
            return Skipped(sid, str(path), f"label is not 'yes' or 'no': {value.get('label')!r}")
        if not isinstance(value.get("image"), str) or not value["image"]:
            return Skipped(sid, str(path), "image file name is missing")
        image = root / IMAGE_DIR / value["image"]
        if not image.is_file():
            return Skipped(sid, str(image), "image file not found")
        return Example(
            id=sid, image=image, prompt=vqa_prompt(value["text"]), target=value["label"],
            meta={"split": split, "split_question_id": qid, "question": value["text"], "image_name": value["image"]},
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Accuracy per split and their unweighted mean (the headline), with ROC-AUC and PR-AUC of
        P(Yes), all in percent. An AUC is left out where its examples hold only one label."""
        require_predictions(self.name, examples, predictions)
        per_example: dict[str, dict] = {}
        by_split: dict[str, list[tuple[bool, float, bool]]] = {}  # split -> (gold yes, P(yes), correct)
        for e in examples:
            raw = predictions[e.id]
            probs = parse_choice_probabilities(raw, len(self.choices), e.id)
            parsed = LABELS[argmax(probs)]
            correct = parsed == e.target
            per_example[e.id] = {"prediction": raw, "parsed": parsed, "p_yes": probs[0], "correct": correct,
                                 "target": e.target}
            by_split.setdefault(e.meta["split"], []).append((e.target == "yes", probs[0], correct))

        metrics: dict[str, float] = {}
        accuracies = []
        pooled: list[tuple[bool, float, bool]] = []
        for split in SPLITS:
            rows = by_split.get(split)
            if not rows:
                continue
            accuracy = 100.0 * sum(r[2] for r in rows) / len(rows)
            accuracies.append(accuracy)
            metrics[f"{split}:accuracy"] = accuracy
            metrics |= _auc_metrics(f"{split}:", rows)
            pooled += rows
        final = sum(accuracies) / len(accuracies)  # unweighted over the splits, as the harness does
        metrics = {"accuracy": final, **_auc_metrics("", pooled), **metrics}
        return BenchmarkScore(columns={"pope": final}, metrics=metrics, n_samples=len(examples),
                              per_example=per_example)


def _auc_metrics(prefix: str, rows: list[tuple[bool, float, bool]]) -> dict[str, float]:
    gold = [r[0] for r in rows]
    p_yes = [r[1] for r in rows]
    out = {f"{prefix}roc_auc": percent(roc_auc(gold, p_yes)),
           f"{prefix}pr_auc": percent(average_precision(gold, p_yes))}
    return {k: v for k, v in out.items() if v is not None}
