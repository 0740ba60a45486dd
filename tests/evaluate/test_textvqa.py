"""TextVQA: two examples per question (with / without OCR tokens), M4C answer processing and accuracy."""

import json
import random

import pytest
from .official_formats import textvqa_record, write_textvqa

from vlmswap.evaluate.records import AnnotationFileError
from vlmswap.evaluate.prompts import pure_question
from vlmswap.evaluate.textvqa import TextVQA, process_answer, textvqa_accuracy

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("raw,processed", [
    ("Sam's Cafe", "sam 's cafe"),     # "'s" split off its word
    ("Coca-Cola", "coca cola"),        # hyphen inside a word becomes a space
    ("coca - cola", "coca cola"),      # touching a space: deleted
    ("12,000", "12000"),               # commas deleted first
    ("Two dogs?", "2 dogs"),           # "?" deleted, number word mapped
    ("none", "0"),
    ("The Beatles", "beatles"),        # article dropped
    ("an apple a day", "apple day"),
    ("dont", "don't"),                 # the VQA contraction map (apostrophes)
    ("isnt it", "isn't it"),
    ("U.S.A.", "usa"),                 # periods not before a digit go
    ("3.5 km", "3.5 km"),
    ("  Stop!\n", "stop"),
    ("line\tbreak", "line break"),
])
def test_evalai_answer_processor(raw, processed):
    assert process_answer(raw) == processed


def test_accuracy_processes_both_sides_and_uses_leave_one_out():
    assert textvqa_accuracy("coca cola", ["Coca-Cola"] * 10) == 1.0  # ground truth is processed too
    # "yes" given by 2 of 10: those 2 see 1 other (1/3), the 8 others see 2 (2/3) -> 0.6
    assert textvqa_accuracy("Yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert textvqa_accuracy("Yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert textvqa_accuracy("maybe", ["yes"] * 10) == 0.0


def test_pure_question_cuts_at_the_ocr_marker():
    assert pure_question("what brand?\nReference OCR token: nikon, 35mm") == "what brand?"
    assert pure_question("what brand?") == "what brand?"


@pytest.fixture
def textvqa_root(tmp_path):
    return write_textvqa(tmp_path / "t", [
        textvqa_record(34602, "003a8ae2ef43b901", "what is the brand of this camera?", ["dakota", "digital"],
                       ["Dakota"] * 7 + ["dakota digital"] * 3),
        textvqa_record(34603, "004b", "what does the sign say?", ["stop"], ["stop"] * 10),
        textvqa_record(34604, "005c", "what year?", [], ["1999"] * 10),
    ])


def test_every_question_gives_an_ocr_and_a_pure_example(textvqa_root):
    examples, skipped = TextVQA().load(textvqa_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["34602", "34602:pure", "34603", "34603:pure", "34604", "34604:pure"]
    ocr, pure = by_id["34602"], by_id["34602:pure"]
    assert ocr.prompt == "what is the brand of this camera?\nReference OCR token: dakota, digital" + SUFFIX
    assert pure.prompt == "what is the brand of this camera?" + SUFFIX
    assert ocr.target == pure.target == ["Dakota"] * 7 + ["dakota digital"] * 3
    assert ocr.image == pure.image == (textvqa_root / "train_images" / "003a8ae2ef43b901.jpg").absolute()
    assert (ocr.meta["variant"], pure.meta["variant"]) == ("ocr", "pure")
    assert ocr.meta["text_has_instruction"] is False


def test_instruction_already_in_the_text_is_kept_twice_as_the_harness_does(tmp_path):
    line, ann = textvqa_record(1, "i1", "what?", ["a"], ["a"] * 10)
    line["text"] += SUFFIX
    root = write_textvqa(tmp_path / "t", [(line, ann)])
    examples, _ = TextVQA().load(root)
    ocr = next(e for e in examples if e.id == "1")
    assert ocr.prompt.count("Answer the question using a single word or phrase.") == 2
    assert ocr.meta["text_has_instruction"] is True


def test_slim_draws_questions_so_both_variants_cover_the_same_ones(tmp_path):
    records = [textvqa_record(100 + i, f"img{i}", f"q{i}?", ["t"], ["a"] * 10) for i in range(12)]
    root = write_textvqa(tmp_path / "t", records)
    order = [str(100 + i) for i in range(12)]
    random.Random(21).shuffle(order)
    examples, _ = TextVQA().load(root, "slim-5")
    assert [e.id for e in examples if e.meta["variant"] == "ocr"] == order[:5]
    assert [e.id for e in examples if e.meta["variant"] == "pure"] == [q + ":pure" for q in order[:5]]


def test_faults_are_skipped_per_question(tmp_path):
    good = textvqa_record(1, "i1", "q?", ["a"], ["a"] * 10)
    gone = textvqa_record(2, "gone", "q?", ["a"], ["a"] * 10)
    short = textvqa_record(3, "i3", "q?", ["a"], ["a"] * 9)
    out_of_step = textvqa_record(4, "i4", "q?", ["a"], ["a"] * 10)
    out_of_step[0]["question_id"] = 99
    no_text = textvqa_record(5, "i5", "q?", ["a"], ["a"] * 10)
    del no_text[0]["text"]
    root = write_textvqa(tmp_path / "t", [good, gone, short, out_of_step, no_text, good], missing_images=("gone",))
    examples, skipped = TextVQA().load(root)
    assert sorted(e.id for e in examples) == ["1", "1:pure"]
    reasons = {s.id: (s.path, s.reason) for s in skipped if "duplicate" not in s.reason}
    jsonl = str((root / "textvqa_val_v051_ocr.jsonl").absolute())
    answers = str((root / "TextVQA_0.5.1_val.json").absolute())
    assert reasons["2"] == (str((root / "train_images" / "gone.jpg").absolute()), "image file not found")
    assert reasons["3"][0] == answers and "10 answer" in reasons["3"][1]
    assert reasons["4"][0] == jsonl and "out of step" in reasons["4"][1]
    assert reasons["5"][0] == jsonl and "text" in reasons["5"][1]
    assert any(s.id == "1" and "duplicate" in s.reason for s in skipped)


def test_a_broken_jsonl_line_skips_only_its_question(tmp_path):
    records = [textvqa_record(i, f"i{i}", "q?", ["a"], ["a"] * 10) for i in range(3)]
    root = write_textvqa(tmp_path / "t", records)
    path = root / "textvqa_val_v051_ocr.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = "{not json"
    path.write_text("\n".join(lines) + "\n\n")
    examples, skipped = TextVQA().load(root)
    assert sorted(e.id for e in examples) == ["0", "0:pure", "2", "2:pure"]
    assert [(s.id, "not JSON" in s.reason) for s in skipped] == [("1", True)]


def test_misaligned_or_missing_files_are_errors(textvqa_root):
    jsonl = textvqa_root / "textvqa_val_v051_ocr.jsonl"
    jsonl.write_text(jsonl.read_text() + json.dumps({"question_id": 1, "text": "extra?"}) + "\n")
    with pytest.raises(AnnotationFileError, match="matched by position"):
        TextVQA().load(textvqa_root)
    jsonl.unlink()
    with pytest.raises(AnnotationFileError, match=r"textvqa_val_v051_ocr\.jsonl"):
        TextVQA().load(textvqa_root)
    (textvqa_root / "TextVQA_0.5.1_val.json").unlink()
    jsonl.write_text("")
    with pytest.raises(AnnotationFileError, match=r"TextVQA_0\.5\.1_val\.json"):
        TextVQA().load(textvqa_root)


def test_score_fills_both_columns_over_the_question_count(textvqa_root):
    examples, _ = TextVQA().load(textvqa_root)
    preds = {"34602": "Dakota", "34602:pure": "Nikon",
             "34603": "STOP", "34603:pure": "stop.",
             "34604": "1999", "34604:pure": "nineteen ninety-nine"}
    score = TextVQA().score(examples, preds)
    # OCR: 1, 1, 1 -> 100; pure: 0, 1, 0 -> 33.3
    assert score.columns == {"textvqa-ocr": pytest.approx(100.0), "textvqa-pure": pytest.approx(100 / 3)}
    assert score.n_samples == 3  # questions, not prompts
    assert score.per_example["34602:pure"]["score"] == 0.0
    assert score.per_example["34602"]["parsed"] == "dakota"


def test_score_needs_both_variants_of_every_question(textvqa_root):
    examples, _ = TextVQA().load(textvqa_root)
    ocr_only = [e for e in examples if e.meta["variant"] == "ocr"]
    with pytest.raises(ValueError, match="one variant only"):
        TextVQA().score(ocr_only, {e.id: "x" for e in ocr_only})
