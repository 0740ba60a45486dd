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

The per-split slim draw, the choice payload and the ranking metrics live in metrics.py (TallyQA,
OCID-Ref and VizWiz use them too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.metrics import (
    argmax, average_precision, draw_subset_per_split, parse_choice_probabilities, percent, roc_auc,
)
from vlmswap.evaluate.prompts import vqa_prompt
from vlmswap.evaluate.records import (
    BenchmarkScore, Example, Skipped, is_int, read_json_lines, require_predictions, skipper, split_records,
)

SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")  # the harness reads them in this order
IMAGE_DIR = "val2014"
LABELS = ("yes", "no")  # aligned with POPE.choices


def split_file(split: str) -> str:
    return f"coco_pope_{split}.json"


# -- POPE ---------------------------------------------------------------------------------------


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
        if not is_int(qid):
            return Skipped(where, str(path), f"question_id is not an integer: {qid!r}")
        sid = f"{split}-{qid}"  # question ids repeat across splits (the harness hashes this string)
        bad = skipper(sid, path)
        if not isinstance(value.get("text"), str) or not value["text"].strip():
            return bad("question text ('text') is missing or empty")
        if value.get("label") not in LABELS:
            return bad(f"label is not 'yes' or 'no': {value.get('label')!r}")
        if not isinstance(value.get("image"), str) or not value["image"]:
            return bad("image file name is missing")
        image = root / IMAGE_DIR / value["image"]
        if not image.is_file():
            return bad("image file not found", image)
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
