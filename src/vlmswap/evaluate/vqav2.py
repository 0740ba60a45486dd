"""VQA-v2 val2014: read the official question/annotation files, prompt, and score with soft accuracy.

Facts from /work/shared/reference/prismatic_spec.md 3.1 (prompt, slim subsets) and 3.2 (VQA-v2):
one example per annotation, in the annotation file's order; the prompt is the question plus the
"single word or phrase" instruction; the score is the official leave-one-out soft accuracy, in
percent rounded to 2 decimals, broken down by answer type and question type.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.metrics import draw_subset, mean_percent, soft_accuracy
from vlmswap.evaluate.prompts import vqa_prompt
from vlmswap.evaluate.records import (
    AnnotationFileError, BenchmarkScore, Example, Skipped, is_int, read_json_file, require_predictions, skipper,
    split_records,
)
from vlmswap.evaluate.vqa_normalize import normalize_answer, normalize_prediction

QUESTIONS_FILE = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS_FILE = "v2_mscoco_val2014_annotations.json"
IMAGE_DIR = "val2014"
N_ANSWERS = 10  # every VQA-v2 question has 10 human answers


def image_path(root: Path, image_id: int) -> Path:
    return root / IMAGE_DIR / f"COCO_val2014_{image_id:012d}.jpg"


class VQAv2:
    name = "vqa-v2"
    mode = "generate"
    columns = ("vqa-v2",)
    annotation_files = (QUESTIONS_FILE, ANNOTATIONS_FILE)

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        q_path, a_path = root / QUESTIONS_FILE, root / ANNOTATIONS_FILE
        questions = read_json_file(q_path, 'the VQA-v2 val2014 questions: {"questions": [{"image_id", "question", '
                                           '"question_id"}, ...]}')
        annotations = read_json_file(a_path, 'the VQA-v2 val2014 annotations: {"annotations": [{"question_id", '
                                             '"image_id", "question_type", "answer_type", '
                                             '"answers": [10 x {"answer"}]}, ...]}')
        if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
            raise AnnotationFileError(f"{q_path}: expected a JSON object with a 'questions' list")
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise AnnotationFileError(f"{a_path}: expected a JSON object with an 'annotations' list")

        by_qid: dict[int, Any] = {}
        for q in questions["questions"]:
            if isinstance(q, dict) and is_int(q.get("question_id")):
                by_qid.setdefault(q["question_id"], q)

        records: list[Example | Skipped] = []
        seen: set[str] = set()
        for i, ann in enumerate(annotations["annotations"]):
            record = self._example(root, i, ann, by_qid, q_path, a_path)
            if isinstance(record, Example):
                if record.id in seen:
                    record = Skipped(record.id, str(a_path), "duplicate question_id in the annotations")
                seen.add(record.id)
            records.append(record)
        return split_records(draw_subset(records, subset))

    def _example(self, root: Path, i: int, ann: Any, by_qid: dict[int, Any], q_path: Path,
                 a_path: Path) -> Example | Skipped:
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            return Skipped(where, str(a_path), "annotation record is not a JSON object")
        qid = ann.get("question_id")
        if not is_int(qid):
            return Skipped(where, str(a_path), f"question_id is not an integer: {qid!r}")
        sid = str(qid)

        bad = skipper(sid, a_path)

        image_id = ann.get("image_id")
        if not is_int(image_id) or image_id < 0:
            return bad(f"image_id is not a non-negative integer: {image_id!r}")
        for key in ("question_type", "answer_type"):
            if not isinstance(ann.get(key), str):
                return bad(f"{key} is missing or not a string")
        answers = ann.get("answers")
        if not isinstance(answers, list) or len(answers) != N_ANSWERS:
            return bad(f"expected a list of {N_ANSWERS} answers, got {type(answers).__name__}"
                       + (f" of length {len(answers)}" if isinstance(answers, list) else ""))
        if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
            return bad("an answer is not an object with a string 'answer'")
        q = by_qid.get(qid)
        if q is None:
            return bad("no question with this question_id in the questions file", q_path)
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            return bad("question text is missing or empty", q_path)
        image = image_path(root, image_id)
        if not image.is_file():
            return bad("image file not found", image)
        return Example(
            id=sid, image=image, prompt=vqa_prompt(q["question"]),
            target=[a["answer"] for a in answers],
            meta={"question_id": qid, "image_id": image_id, "question": q["question"],
                  "question_type": ann["question_type"], "answer_type": ann["answer_type"],
                  "multiple_choice_answer": ann.get("multiple_choice_answer"), "split": "val2014"},
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Soft accuracy; `per_example[id]["score"]` is the example's credit in [0, 1]."""
        require_predictions(self.name, examples, predictions)
        per_example: dict[str, dict] = {}
        by_answer_type: dict[str, list[float]] = defaultdict(list)
        by_question_type: dict[str, list[float]] = defaultdict(list)
        for e in examples:
            raw = predictions[e.id]
            parsed = normalize_prediction(raw)
            credit = soft_accuracy(parsed, [normalize_answer(a) for a in e.target])
            per_example[e.id] = {"prediction": raw, "parsed": parsed, "score": credit}
            by_answer_type[e.meta["answer_type"]].append(credit)
            by_question_type[e.meta["question_type"]].append(credit)

        overall = mean_percent([p["score"] for p in per_example.values()])
        metrics = {"accuracy": overall}
        metrics |= {f"answer_type:{t}": mean_percent(v) for t, v in sorted(by_answer_type.items())}
        metrics |= {f"question_type:{t}": mean_percent(v) for t, v in sorted(by_question_type.items())}
        return BenchmarkScore(columns={"vqa-v2": overall}, metrics=metrics, n_samples=len(examples),
                              per_example=per_example)
