"""GQA testdev-balanced: compositional questions scored by exact match on the short answer.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (GQA) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/gqa.py` with its copy of the official GQA
`eval.py`: one example per entry of `testdev_balanced_questions.json` (a dict keyed by question
id), in file order; the prompt is the VQA prompt; the model output loses every
`string.punctuation` character and is lowercased (no whitespace strip; generation output was
already stripped); a question is right when that equals `answer` exactly; accuracy is taken over
the questions whose `isBalanced` is true and reported, as the official script prints it, in
percent with 2 decimals. Binary/open and per-type accuracies follow the official script's
grouping (`types.structural == "query"` is open).

Expected layout under `root`:

    root/testdev_balanced_questions.json   # from questions1.2.zip
    root/images/{imageId}.jpg              # from images.zip

Questions with `isBalanced: false` (none in the released testdev_balanced file) take part in the
Random(21) shuffle, like every question the harness indexes, and are then left out of the
examples: the official metric never counts them.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.metrics import draw_subset, mean_percent
from vlmswap.evaluate.prompts import vqa_prompt
from vlmswap.evaluate.records import (
    AnnotationFileError, BenchmarkScore, Example, Skipped, read_json_file, require_predictions, skipper,
    split_records,
)

QUESTIONS_FILE = "testdev_balanced_questions.json"
IMAGE_DIR = "images"
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_prediction(text: str) -> str:
    """The harness's GQA post-processing: delete string.punctuation characters, then lowercase."""
    return text.translate(_DROP_PUNCTUATION).lower()


class GQA:
    name = "gqa"
    mode = "generate"
    columns = ("gqa",)
    annotation_files = (QUESTIONS_FILE,)

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        path = root / QUESTIONS_FILE
        data = read_json_file(path, 'GQA testdev-balanced questions: {"<question id>": {"imageId", "question", '
                                    '"answer", "isBalanced", ...}}')
        if not isinstance(data, dict):
            raise AnnotationFileError(f"{path}: expected a JSON object mapping question id -> question, "
                                      f"got a {type(data).__name__}")
        records = [self._example(root, qid, q, path) for qid, q in data.items()]
        examples, skipped = split_records(draw_subset(records, subset))
        return [e for e in examples if e.meta["is_balanced"]], skipped

    def _example(self, root: Path, qid: str, q: Any, path: Path) -> Example | Skipped:
        bad = skipper(qid, path)
        if not isinstance(q, dict):
            return bad("question record is not a JSON object")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            return bad("question text is missing or empty")
        if not isinstance(q.get("answer"), str):
            return bad("answer is missing or not a string")
        if "isBalanced" in q and not isinstance(q["isBalanced"], bool):
            return bad(f"isBalanced is not a boolean: {q['isBalanced']!r}")
        image_id = q.get("imageId")
        if not isinstance(image_id, str) or not image_id:
            return bad(f"imageId is missing or not a string: {image_id!r}")
        image = root / IMAGE_DIR / f"{image_id}.jpg"
        if not image.is_file():
            return bad("image file not found", image)
        types = q.get("types") if isinstance(q.get("types"), dict) else {}
        return Example(
            id=qid, image=image, prompt=vqa_prompt(q["question"]), target=q["answer"],
            meta={"question_id": qid, "image_id": image_id, "question": q["question"],
                  "full_answer": q.get("fullAnswer"), "is_balanced": q.get("isBalanced", True),
                  "structural_type": types.get("structural"), "semantic_type": types.get("semantic"),
                  "split": "testdev_balanced"},
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Exact-match accuracy in percent, rounded to 2 decimals as the official script prints it;
        `per_example[id]["correct"]` says whether the cleaned output equals the answer."""
        require_predictions(self.name, examples, predictions)
        per_example: dict[str, dict] = {}
        groups: dict[str, list[bool]] = defaultdict(list)
        for e in examples:
            raw = predictions[e.id]
            parsed = clean_prediction(raw)
            correct = parsed == e.target
            per_example[e.id] = {"prediction": raw, "parsed": parsed, "correct": correct, "target": e.target}
            structural, semantic = e.meta.get("structural_type"), e.meta.get("semantic_type")
            if structural is not None:
                groups["open" if structural == "query" else "binary"].append(correct)
                groups[f"structural:{structural}"].append(correct)
            if semantic is not None:
                groups[f"semantic:{semantic}"].append(correct)

        accuracy = mean_percent([p["correct"] for p in per_example.values()])
        metrics = {"accuracy": accuracy} | {k: mean_percent(v) for k, v in sorted(groups.items())}
        return BenchmarkScore(columns={"gqa": accuracy}, metrics=metrics, n_samples=len(examples),
                              per_example=per_example)
