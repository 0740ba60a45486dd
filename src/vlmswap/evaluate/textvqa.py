"""TextVQA val, asked twice per question: with the reference OCR tokens ("textvqa-ocr") and without
them ("textvqa-pure"); scored with the M4C / EvalAI TextVQA accuracy.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (TextVQA) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/textvqa.py`,
`.../util/evaluation/textvqa/m4c_evaluators.py`:
- the questions come from LLaVA's `textvqa_val_v051_ocr.jsonl`, whose `text` is the question plus
  "\\nReference OCR token: tok1, tok2, ..."; the answers from `TextVQA_0.5.1_val.json`; the two
  files are matched BY POSITION (line i <-> data[i]) and must be equally long;
- every question gives two examples: id "{qid}" prompts with the whole `text`, id "{qid}:pure"
  with `text` cut at "\\nReference OCR token:"; both get the VQA instruction appended;
- prediction AND ground truth go through the EvalAI answer processor (`process_answer`); the
  prediction earns the leave-one-out min(1, n/3) score of the ground-truth answer it equals
  (0 if none) averaged over the 10 answers;
- the harness reports each accuracy as a fraction; here it is percent (unrounded).

Expected layout under `root`:

    root/textvqa_val_v051_ocr.jsonl      # JSON lines: {"question_id", "image", "text", ...}
    root/TextVQA_0.5.1_val.json          # {"data": [{"question_id", "image_id", "question", "answers": [10]}]}
    root/train_images/{image_id}.jpg     # train_val_images.zip unpacked

Slim subsets draw QUESTIONS (Random(21), first N), so both columns cover the same N questions.
`n_samples` is the number of questions, and the table weights BOTH columns by it (each column is
an accuracy over that many questions; the model answered 2 x n_samples prompts).

Kept as the harness has it (spec: UNVERIFIED whether it happens with the pinned gist): if a `text`
already ends with the VQA instruction (LLaVA's own file does), the OCR prompt carries it twice;
`meta["text_has_instruction"]` records when that happens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.metrics import draw_subset, soft_accuracy
from vlmswap.evaluate.prompts import VQA_INSTRUCTION, pure_question, vqa_prompt
from vlmswap.evaluate.records import (
    AnnotationFileError, BenchmarkScore, Example, Skipped, is_int, read_json_file, read_json_lines,
    require_predictions, skipper,
)
from vlmswap.evaluate.vqa_normalize import process_digits_articles_contractions, process_punctuation

QUESTIONS_FILE = "textvqa_val_v051_ocr.jsonl"
ANSWERS_FILE = "TextVQA_0.5.1_val.json"
IMAGE_DIR = "train_images"
PURE_SUFFIX = ":pure"  # id of the question asked without OCR tokens
N_ANSWERS = 10  # the M4C evaluator asserts 10 answers per question


def process_answer(text: str) -> str:
    """The EvalAI answer processor of the M4C TextVQA evaluator, for predictions and answers alike:
    lowercase; delete "," and "?"; split "'s" off its word ("sam's" -> "sam 's"); strip; newlines and
    tabs to spaces; then the VQA punctuation step and the number-word / article / contraction step.

    The two VQA steps are reused from vqa_normalize because they are the same code: with every comma
    already deleted, neither version's digit,digit comma rule can fire, and the number map and the
    article test commute (their words are disjoint)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles_contractions(process_punctuation(text))


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """M4C TextVQA accuracy in [0, 1] of a raw prediction against the raw answers."""
    return soft_accuracy(process_answer(prediction), [process_answer(a) for a in answers])


def _read_question_lines(path: Path) -> list[Any]:
    """LLaVA's question file, one entry per non-blank line (a line that is not JSON keeps its place
    as the JSONDecodeError: the question at this index is skipped, the rest stay aligned)."""
    expected = 'JSON lines, one per question, in the order of the answers file: {"question_id", "text", ...}'
    return [value for _, value in read_json_lines(path, expected)]


class TextVQA:
    name = "textvqa"
    mode = "generate"
    columns = ("textvqa-ocr", "textvqa-pure")
    annotation_files = (QUESTIONS_FILE, ANSWERS_FILE)

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        q_path, a_path = root / QUESTIONS_FILE, root / ANSWERS_FILE
        lines = _read_question_lines(q_path)
        answers = read_json_file(a_path, 'the TextVQA 0.5.1 val annotations: {"data": [{"question_id", "image_id", '
                                         '"question", "answers": [10 strings]}, ...]}')
        if not isinstance(answers, dict) or not isinstance(answers.get("data"), list):
            raise AnnotationFileError(f"{a_path}: expected a JSON object with a 'data' list")
        data = answers["data"]
        if len(lines) != len(data):
            raise AnnotationFileError(
                f"{q_path} has {len(lines)} questions but {a_path} has {len(data)}: the files are matched by "
                f"position and must list the same questions in the same order")

        records: list[tuple[Example, Example] | Skipped] = []
        seen: set[int] = set()
        for i, (line, ann) in enumerate(zip(lines, data)):
            record = self._question(root, i, line, ann, q_path, a_path)
            if not isinstance(record, Skipped):
                qid = record[0].meta["question_id"]
                if qid in seen:
                    record = Skipped(str(qid), str(a_path), "duplicate question_id")
                seen.add(qid)
            records.append(record)
        examples: list[Example] = []
        skipped: list[Skipped] = []
        for record in draw_subset(records, subset):
            if isinstance(record, Skipped):
                skipped.append(record)
            else:
                examples.extend(record)
        return examples, skipped

    def _question(self, root: Path, i: int, line: Any, ann: Any, q_path: Path,
                  a_path: Path) -> tuple[Example, Example] | Skipped:
        where = f"data[{i}]"
        if not isinstance(ann, dict):
            return Skipped(where, str(a_path), "annotation record is not a JSON object")
        qid = ann.get("question_id")
        if not is_int(qid):
            return Skipped(where, str(a_path), f"question_id is not an integer: {qid!r}")
        sid = str(qid)
        bad = skipper(sid, a_path)
        if isinstance(line, json.JSONDecodeError):
            return bad(f"question line {i + 1} is not JSON: {line}", q_path)
        if not isinstance(line, dict) or not isinstance(line.get("text"), str) or not line["text"].strip():
            return bad(f"question line {i + 1} has no question 'text'", q_path)
        if "question_id" in line and line["question_id"] != qid:
            return bad(f"question line {i + 1} is question {line['question_id']!r}, the answers file's "
                       f"entry {i} is {qid}: the files are out of step", q_path)
        gt = ann.get("answers")
        if not isinstance(gt, list) or len(gt) != N_ANSWERS or not all(isinstance(a, str) for a in gt):
            return bad(f"expected a list of {N_ANSWERS} answer strings")
        image_id = ann.get("image_id")
        if not isinstance(image_id, str) or not image_id:
            return bad(f"image_id is missing or not a string: {image_id!r}")
        image = root / IMAGE_DIR / f"{image_id}.jpg"
        if not image.is_file():
            return bad("image file not found", image)
        text = line["text"]
        meta = {"question_id": qid, "image_id": image_id, "question": ann.get("question"), "text": text,
                "text_has_instruction": text.rstrip().endswith(VQA_INSTRUCTION), "split": "val"}
        return (
            Example(id=sid, image=image, prompt=vqa_prompt(text), target=list(gt), meta={**meta, "variant": "ocr"}),
            Example(id=sid + PURE_SUFFIX, image=image, prompt=vqa_prompt(pure_question(text)), target=list(gt),
                    meta={**meta, "variant": "pure"}),
        )

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """M4C accuracy in percent for each variant over the same questions; `n_samples` is the number
        of questions (each column's weight in the table)."""
        require_predictions(self.name, examples, predictions)
        by_variant: dict[str, dict[int, float]] = {"ocr": {}, "pure": {}}
        per_example: dict[str, dict] = {}
        for e in examples:
            raw = predictions[e.id]
            credit = textvqa_accuracy(raw, e.target)
            per_example[e.id] = {"prediction": raw, "parsed": process_answer(raw), "score": credit,
                                 "variant": e.meta["variant"]}
            by_variant[e.meta["variant"]][e.meta["question_id"]] = credit
        ocr, pure = by_variant["ocr"], by_variant["pure"]
        if set(ocr) != set(pure):
            lone = sorted(set(ocr) ^ set(pure))
            raise ValueError(f"{self.name}: {len(lone)} questions are asked in one variant only (first: "
                             f"{', '.join(map(str, lone[:5]))}); both columns must cover the same questions")
        ocr_accuracy = 100 * sum(ocr.values()) / len(ocr)
        pure_accuracy = 100 * sum(pure.values()) / len(pure)
        return BenchmarkScore(
            columns={"textvqa-ocr": ocr_accuracy, "textvqa-pure": pure_accuracy},
            metrics={"ocr:accuracy": ocr_accuracy, "pure:accuracy": pure_accuracy},
            n_samples=len(ocr), per_example=per_example,
        )
