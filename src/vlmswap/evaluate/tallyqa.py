"""TallyQA test (simple + complex): counting questions asked as a 16-way multiple choice, scored
from the first-token probabilities of the letters A..P.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (TallyQA) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/tallyqa.py`: one example per question of
`test.json`; the split is "simple" when `issimple` is true, else "complex"; the answers 0..15 are
offered as options A..P; the prediction is the argmax of the renormalized probabilities over the
16 letters (first on a tie) and that index is the count; the headline is micro-averaged over both
splits (total correct / total). Answers above 15 stay in the set and can never be right, as in
the harness. Slim subsets take the first N of each split along one Random(21) shuffle.

Expected layout under `root` (tallyqa.zip and the Visual Genome image zips, unpacked together):

    root/test.json        # [{"image", "question", "answer", "issimple", "question_id", ...}, ...]
    root/VG_100K/...      # the `image` field is relative to root, e.g. "VG_100K_2/2410573.jpg"
    root/VG_100K_2/...

The harness's one-vs-one multiclass ROC-AUC / PR-AUC are not computed here (not reported in the
paper's tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.metrics import argmax, draw_subset_per_split, parse_choice_probabilities
from vlmswap.evaluate.prompts import TALLY_LETTERS, tally_prompt
from vlmswap.evaluate.records import (
    AnnotationFileError, BenchmarkScore, Example, Skipped, is_int, read_json_file, require_predictions, skipper,
    split_records,
)

QUESTIONS_FILE = "test.json"
SPLITS: tuple[str, ...] = ("simple", "complex")


class TallyQA:
    name = "tallyqa"
    mode = "choice"
    columns = ("tallyqa",)
    annotation_files = (QUESTIONS_FILE,)
    choices: tuple[str, ...] = TALLY_LETTERS  # A..P <-> counts 0..15

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        path = root / QUESTIONS_FILE
        data = read_json_file(path, 'the TallyQA test questions: [{"image", "question", "answer", "issimple", '
                                    '"question_id"}, ...]')
        if not isinstance(data, list):
            raise AnnotationFileError(f"{path}: expected a JSON list of questions, got a {type(data).__name__}")
        records: list[Example | Skipped] = []
        splits: list[str | None] = []
        seen: set[str] = set()
        for i, q in enumerate(data):
            record = self._example(root, i, q, path)
            if isinstance(record, Example):
                if record.id in seen:
                    record = Skipped(record.id, str(path), "duplicate question_id")
                seen.add(record.id)
            records.append(record)
            splits.append(_split_of(q))
        return split_records(draw_subset_per_split(records, splits, subset, SPLITS))

    def _example(self, root: Path, i: int, q: Any, path: Path) -> Example | Skipped:
        where = f"questions[{i}]"
        if not isinstance(q, dict):
            return Skipped(where, str(path), "question record is not a JSON object")
        qid = q.get("question_id")
        if not is_int(qid):
            return Skipped(where, str(path), f"question_id is not an integer: {qid!r}")
        sid = str(qid)
        bad = skipper(sid, path)
        split = _split_of(q)
        if split is None:
            return bad(f"issimple is not a boolean: {q.get('issimple')!r}")
        answer = q.get("answer")
        if not is_int(answer) or answer < 0:
            return bad(f"answer is not a non-negative integer: {answer!r}")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            return bad("question text is missing or empty")
        if not isinstance(q.get("image"), str) or not q["image"]:
            return bad("image path is missing")
        image = root / q["image"]
        if not image.is_file():
            return bad("image file not found", image)
        return Example(
            id=sid, image=image, prompt=tally_prompt(q["question"]), target=answer,
            meta={"split": split, "question_id": qid, "question": q["question"], "image_name": q["image"],
                  "data_source": q.get("data_source")},
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Exact-match accuracy per split and micro-averaged over both (the headline), in percent;
        `metrics["unpredictable"]` is the share of examples whose answer is above 15."""
        require_predictions(self.name, examples, predictions)
        per_example: dict[str, dict] = {}
        correct_by_split: dict[str, list[bool]] = {}
        for e in examples:
            raw = predictions[e.id]
            count = argmax(parse_choice_probabilities(raw, len(self.choices), e.id))
            correct = count == e.target
            per_example[e.id] = {"prediction": raw, "parsed": count, "letter": self.choices[count],
                                 "correct": correct, "target": e.target}
            correct_by_split.setdefault(e.meta["split"], []).append(correct)
        n = len(examples)
        final = 100.0 * sum(p["correct"] for p in per_example.values()) / n
        metrics = {"accuracy": final}
        for split in SPLITS:
            if correct_by_split.get(split):
                values = correct_by_split[split]
                metrics[f"{split}:accuracy"] = 100.0 * sum(values) / len(values)
        metrics["unpredictable"] = 100.0 * sum(e.target >= len(self.choices) for e in examples) / n
        return BenchmarkScore(columns={"tallyqa": final}, metrics=metrics, n_samples=n, per_example=per_example)


def _split_of(q: Any) -> str | None:
    """"simple" / "complex" from `issimple` (a JSON boolean); None when it is missing or not a boolean."""
    if isinstance(q, dict) and isinstance(q.get("issimple"), bool):
        return "simple" if q["issimple"] else "complex"
    return None
