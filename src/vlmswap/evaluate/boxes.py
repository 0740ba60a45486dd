"""Boxes for the grounding benchmarks (RefCOCO family now, OCID-Ref later): the strict parser of a
model's `[x1, y1, x2, y2]` answer, IoU, the COCO-box normalization and Acc@IoU scoring.

Rules from /work/shared/reference/prismatic_spec.md 3.2 (RefCOCO, OCID-Ref) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/refcoco.py` (`parse_bbox`, `compute_iou`,
`box_xywh2xyxy`): the WHOLE output must be a Python list literal of 4 numbers in [0, 1] with
x1 < x2 and y1 < y2; anything else is invalid and counts as wrong. Only `ast.literal_eval` ever
sees the text.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from numbers import Real

from vlmswap.evaluate.metrics import iou
from vlmswap.evaluate.records import BenchmarkScore, Example, require_predictions

Box = list[float]  # [x1, y1, x2, y2]


def parse_box(text: str) -> Box | None:
    """The box a model wrote, or None if the output is not exactly a valid normalized xyxy list.

    As in vlm-evaluation, the literal must be a *list*: "0.1, 0.2, 0.3, 0.4" and "(0.1, ...)"
    evaluate to tuples and are invalid there, so they are invalid here. Booleans are not numbers
    here (the harness would accept `[False, False, True, True]`; no model writes that).
    """
    if not isinstance(text, str):
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        return None
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):  # NaN fails this too
        return None
    if not (x1 < x2 and y1 < y2):
        return None
    return [x1, y1, x2, y2]


def normalize_coco_box(bbox_xywh: Sequence[float], width: float, height: float) -> Box:
    """COCO [x, y, w, h] in pixels -> xyxy normalized by the original image size, rounded to 2
    decimals, as vlm-evaluation's `box_xywh2xyxy` does. Raises ValueError for a box that is empty
    or leaves the image (the harness asserts x1 < x2 <= width and y1 < y2 <= height)."""
    if len(bbox_xywh) != 4 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox_xywh):
        raise ValueError(f"bbox is not 4 numbers: {bbox_xywh!r}")
    if not all(math.isfinite(v) for v in bbox_xywh):
        raise ValueError(f"bbox has a non-finite value: {bbox_xywh!r}")
    if not (isinstance(width, Real) and isinstance(height, Real) and width > 0 and height > 0):
        raise ValueError(f"image size is not positive: {width!r} x {height!r}")
    x, y, w, h = bbox_xywh
    x1, y1, x2, y2 = x, y, x + w, y + h
    if not (x1 < x2 <= width):
        raise ValueError(f"bbox x-range [{x1}, {x2}] is empty or leaves the image (width {width})")
    if not (y1 < y2 <= height):
        raise ValueError(f"bbox y-range [{y1}, {y2}] is empty or leaves the image (height {height})")
    return [round(x1 / width, 2), round(y1 / height, 2), round(x2 / width, 2), round(y2 / height, 2)]


def score_boxes(name: str, column: str, examples: Sequence[Example], predictions: Mapping[str, str],
                threshold: float) -> BenchmarkScore:
    """Acc@IoU >= threshold in percent; an invalid output counts as wrong and is reported in
    `metrics["invalid_rate"]`. Each example's `target` is its normalized xyxy box."""
    require_predictions(name, examples, predictions)
    per_example: dict[str, dict] = {}
    n_correct = n_invalid = 0
    for e in examples:
        raw = predictions[e.id]
        box = parse_box(raw)
        overlap = iou(box, e.target) if box is not None else None
        correct = overlap is not None and overlap >= threshold
        n_correct += correct
        n_invalid += box is None
        per_example[e.id] = {"prediction": raw, "parsed": box, "iou": overlap, "correct": correct,
                             "target": list(e.target)}
    n = len(examples)
    accuracy = 100 * n_correct / n
    return BenchmarkScore(
        columns={column: accuracy},
        metrics={"accuracy": accuracy, "invalid_rate": 100 * n_invalid / n},
        n_samples=n,
        per_example=per_example,
    )
