"""VizWiz val: questions from blind users, soft accuracy plus the "unanswerable" detection scores.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (VizWiz) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/vizwiz.py`, `.../util/evaluation/vizwiz/eval.py`:
one example per entry of `val.json`, its id the entry's index; the prompt adds the
"respond with 'Unanswerable'" instruction before the VQA one; the PREDICTION gets the full VQA
normalization while the 10 ground-truth answers are compared as written; the score is the
leave-one-out min(1, matches/3) averaged over the answers, in percent rounded to 2 decimals
(`VQAEval(n=2)`), overall and over the answerable / unanswerable ground-truth subsets; a prediction
says "unanswerable" when its normalized form equals `unanswerable`, and that binary call is
scored against `answerable == 0` with average precision and F1 (percent, 2 decimals).

Expected layout under `root`:

    root/val.json                     # from Annotations.zip: [{"image", "question", "answers": [10 x
                                      #   {"answer", "answer_confidence"}], "answerable", "answer_type"}]
    root/val/VizWiz_val_00000000.jpg  # from val.zip

One difference from the VQA-v2 normalization, kept on purpose: the VizWiz evaluator's contraction
map writes most expansions with a backtick ("dont" -> "don`t", "isnt" -> "isn`t"), and only a few
with an apostrophe; `VIZWIZ_CONTRACTIONS` reproduces the entries that can ever fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.metrics import average_precision, draw_subset, f1, mean_percent, soft_accuracy
from vlmswap.evaluate.prompts import vizwiz_prompt
from vlmswap.evaluate.records import (
    AnnotationFileError, BenchmarkScore, Example, Skipped, read_json_file, require_predictions, skipper,
    split_records,
)
from vlmswap.evaluate.vqa_normalize import ARTICLES, CONTRACTIONS, NUMBER_WORDS, process_punctuation

ANNOTATIONS_FILE = "val.json"
# Annotations.zip unpacks to an `Annotations/` folder; a flattened copy at the root works too
ANNOTATIONS_LOCATIONS = (f"Annotations/{ANNOTATIONS_FILE}", ANNOTATIONS_FILE)
IMAGE_DIR = "val"
N_ANSWERS = 10
UNANSWERABLE = "unanswerable"

# The VizWiz evaluator's map, restricted to the keys a normalized word can equal (a key with a
# backtick never can: "`" is punctuation and is gone by then). Its values use backticks where the
# VQA map has apostrophes, except for these eight, which it writes like the VQA map.
_APOSTROPHE_KEPT = ("aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove")
VIZWIZ_CONTRACTIONS: dict[str, str] = {
    **{k: v.replace("'", "`") for k, v in CONTRACTIONS.items() if "'" not in k},
    "couldn'tve": "couldn`t`ve",
    "hadn'tve": "hadn`t`ve",
    **{k: CONTRACTIONS[k] for k in _APOSTROPHE_KEPT},
}


def normalize_vizwiz_prediction(text: str) -> str:
    """The VizWiz evaluator's normalization of a model answer: whitespace, the VQA punctuation step,
    lowercase, number words -> digits, articles dropped, then its own contraction map."""
    text = process_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split() if w not in ARTICLES]
    return " ".join(VIZWIZ_CONTRACTIONS.get(w, w) for w in words)


class VizWiz:
    name = "vizwiz"
    mode = "generate"
    columns = ("vizwiz",)
    annotation_files = ANNOTATIONS_LOCATIONS  # whichever of them is there

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        path = next((root / p for p in ANNOTATIONS_LOCATIONS if (root / p).is_file()), root / ANNOTATIONS_FILE)
        data = read_json_file(path, 'the VizWiz val annotations: [{"image", "question", "answers": '
                                    '[10 x {"answer", "answer_confidence"}], "answerable"}, ...]')
        if not isinstance(data, list):
            raise AnnotationFileError(f"{path}: expected a JSON list of questions, got a {type(data).__name__}")
        records = [self._example(root, i, q, path) for i, q in enumerate(data)]
        return split_records(draw_subset(records, subset))

    def _example(self, root: Path, i: int, q: Any, path: Path) -> Example | Skipped:
        sid = str(i)  # the harness's question id is the index in val.json

        bad = skipper(sid, path)
        if not isinstance(q, dict):
            return bad("question record is not a JSON object")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            return bad("question text is missing or empty")
        answers = q.get("answers")
        if not isinstance(answers, list) or len(answers) != N_ANSWERS:
            return bad(f"expected a list of {N_ANSWERS} answers, got {type(answers).__name__}"
                       + (f" of length {len(answers)}" if isinstance(answers, list) else ""))
        if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
            return bad("an answer is not an object with a string 'answer'")
        answerable = q.get("answerable")
        if answerable not in (0, 1) or isinstance(answerable, float):
            return bad(f"answerable is not 0 or 1: {answerable!r}")
        if not isinstance(q.get("image"), str) or not q["image"]:
            return bad("image file name is missing")
        image = root / IMAGE_DIR / q["image"]
        if not image.is_file():
            return bad("image file not found", image)
        return Example(
            id=sid, image=image, prompt=vizwiz_prompt(q["question"]), target=[a["answer"] for a in answers],
            meta={"question_id": i, "question": q["question"], "image_name": q["image"],
                  "answerable": int(answerable), "answer_type": q.get("answer_type"), "split": "val"},
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Soft accuracy (overall = the headline, answerable, unanswerable) and the unanswerable
        detection's average precision and F1, all in percent rounded to 2 decimals. A subset
        metric is left out when its subset is empty; AP is left out without unanswerable ground truth."""
        require_predictions(self.name, examples, predictions)
        per_example: dict[str, dict] = {}
        for e in examples:
            raw = predictions[e.id]
            parsed = normalize_vizwiz_prediction(raw)
            per_example[e.id] = {"prediction": raw, "parsed": parsed,
                                 "score": soft_accuracy(parsed, e.target),  # ground truth as written
                                 "says_unanswerable": parsed == UNANSWERABLE,
                                 "answerable": e.meta["answerable"]}

        rows = list(per_example.values())
        overall = mean_percent([r["score"] for r in rows])
        metrics = {"accuracy": overall}
        for key, answerable in (("answerable", 1), ("unanswerable", 0)):
            subset = [r["score"] for r in rows if r["answerable"] == answerable]
            if subset:
                metrics[key] = mean_percent(subset)
        gold = [r["answerable"] == 0 for r in rows]
        said = [r["says_unanswerable"] for r in rows]
        ap = average_precision(gold, [float(s) for s in said])  # the harness scores the 0/1 call itself
        if ap is not None:
            metrics["unanswerable_avg_precision"] = round(100 * ap, 2)
        metrics["unanswerable_f1"] = round(100 * f1(gold, said), 2)
        return BenchmarkScore(columns={"vizwiz": overall}, metrics=metrics, n_samples=len(examples),
                              per_example=per_example)
