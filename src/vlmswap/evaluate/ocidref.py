"""OCID-Ref val: referring-expression grounding on cluttered table-top scenes, Acc@IoU >= 0.25.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (OCID-Ref) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/ocidref.py`: `val_expressions.json` maps an
example id to {"sentence", "scene_path", "bbox", "take_id", ...}, one example per entry; every OCID
image is 640 x 480, so the xyxy pixel box is divided by (640, 480) and rounded to 2 decimals; the
clutter split comes from `take_id` (0-9 Minimum, 10-16 Medium, 17-20 Maximum); the prompt and the
strict box parsing are RefCOCO's (boxes.py); the score is Acc@IoU >= 0.25 (the harness credits the
OCID-Ref paper for this threshold) per clutter split and micro-averaged over all ("All", the
headline). Slim subsets take the first N of each clutter split along one Random(21) shuffle.

Expected layout under `root`:

    root/val_expressions.json     # {"<id>": {"sentence", "scene_path", "bbox": "[x1, y1, x2, y2]", "take_id", ...}}
    root/OCID-dataset/{scene_path}   # the OCID archive unpacked, e.g. ARID20/table/top/seq12/rgb/result_....png

`bbox` is a JSON string in the released file (the harness `json.loads` it); a plain list is
accepted too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from vlmswap.evaluate.boxes import Box, score_boxes
from vlmswap.evaluate.metrics import draw_subset_per_split
from vlmswap.evaluate.prompts import grounding_prompt
from vlmswap.evaluate.records import (
    AnnotationFileError, BenchmarkScore, Example, Skipped, read_json_file, skipper, split_records,
)

EXPRESSIONS_FILE = "val_expressions.json"
IMAGE_DIR = "OCID-dataset"
IMAGE_SIZE = (640, 480)  # every OCID image (width, height)
CLUTTER_SPLITS: tuple[str, ...] = ("Minimum", "Medium", "Maximum")
IOU_THRESHOLD = 0.25  # OCID-Ref scores at IoU >= 0.25, as vlm-evaluation does (RefCOCO uses 0.5)


def clutter_split(take_id: Any) -> str:
    """take_id 0-9 -> Minimum, 10-16 -> Medium, 17-20 -> Maximum (OCID's free / touching / stacked
    takes); anything else is a ValueError (the harness asserts 0 <= take_id <= 20)."""
    if not isinstance(take_id, int) or isinstance(take_id, bool) or not 0 <= take_id <= 20:
        raise ValueError(f"take_id is not an integer in [0, 20]: {take_id!r}")
    return "Minimum" if take_id <= 9 else "Medium" if take_id <= 16 else "Maximum"


def normalize_ocid_box(bbox: Any, size: tuple[int, int] = IMAGE_SIZE) -> Box:
    """An xyxy pixel box (a list, or the JSON string the file holds) -> divided by (640, 480) and
    rounded to 2 decimals, as the harness's `box_xyxy2normalized`. ValueError for a box that is
    not 4 finite numbers or that fails the harness's check x1 < x2 <= W and y1 < y2 <= H."""
    if isinstance(bbox, str):
        try:
            bbox = json.loads(bbox)
        except json.JSONDecodeError:
            raise ValueError(f"bbox string is not JSON: {bbox!r}") from None
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"bbox is not a list of 4 numbers: {bbox!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise ValueError(f"bbox is not 4 finite numbers: {bbox!r}")
    width, height = size
    x1, y1, x2, y2 = bbox
    if not (x1 < x2 <= width):
        raise ValueError(f"bbox x-range [{x1}, {x2}] is empty or leaves the {width}-pixel-wide image")
    if not (y1 < y2 <= height):
        raise ValueError(f"bbox y-range [{y1}, {y2}] is empty or leaves the {height}-pixel-high image")
    return [round(x1 / width, 2), round(y1 / height, 2), round(x2 / width, 2), round(y2 / height, 2)]


class OCIDRef:
    name = "ocid-ref"
    mode = "generate"
    columns = ("ocid-ref",)
    annotation_files = (EXPRESSIONS_FILE,)
    iou_threshold = IOU_THRESHOLD

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        path = root / EXPRESSIONS_FILE
        data = read_json_file(path, 'OCID-Ref val expressions: {"<example id>": {"sentence", "scene_path", '
                                    '"bbox", "take_id", ...}}')
        if not isinstance(data, dict):
            raise AnnotationFileError(f"{path}: expected a JSON object mapping example id -> expression, "
                                      f"got a {type(data).__name__}")
        records: list[Example | Skipped] = []
        splits: list[str | None] = []
        for key, entry in data.items():  # JSON object keys are unique, so ids are too
            record = self._example(root, key, entry, path)
            records.append(record)
            splits.append(record.meta["clutter_split"] if isinstance(record, Example) else _split_or_none(entry))
        return split_records(draw_subset_per_split(records, splits, subset, CLUTTER_SPLITS))

    def _example(self, root: Path, key: str, entry: Any, path: Path) -> Example | Skipped:
        bad = skipper(key, path)
        if not isinstance(entry, dict):
            return bad("expression entry is not a JSON object")
        try:
            split = clutter_split(entry.get("take_id"))
        except ValueError as e:
            return bad(str(e))
        try:
            box = normalize_ocid_box(entry.get("bbox"))
        except ValueError as e:
            return bad(str(e))
        if not isinstance(entry.get("sentence"), str) or not entry["sentence"].strip():
            return bad("sentence is missing or empty")
        if not isinstance(entry.get("scene_path"), str) or not entry["scene_path"]:
            return bad("scene_path is missing")
        image = root / IMAGE_DIR / entry["scene_path"]
        if not image.is_file():
            return bad("image file not found", image)
        return Example(
            id=key, image=image, prompt=grounding_prompt(entry["sentence"]), target=box,
            meta={"clutter_split": split, "split": "val", "take_id": entry["take_id"], "sentence": entry["sentence"],
                  "scene_path": entry["scene_path"]},
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Acc@IoU >= 0.25 in percent, micro-averaged over all examples (the headline) and per
        clutter split (`metrics["Minimum"]`, ...); `metrics["invalid_rate"]` as for RefCOCO."""
        overall = score_boxes(self.name, self.name, examples, predictions, self.iou_threshold)
        for split in CLUTTER_SPLITS:
            ids = [e.id for e in examples if e.meta["clutter_split"] == split]
            if ids:
                overall.metrics[split] = 100.0 * sum(overall.per_example[i]["correct"] for i in ids) / len(ids)
        for e in examples:
            overall.per_example[e.id]["clutter_split"] = e.meta["clutter_split"]
        return overall


def _split_or_none(entry: Any) -> str | None:
    try:
        return clutter_split(entry.get("take_id")) if isinstance(entry, dict) else None
    except ValueError:
        return None

