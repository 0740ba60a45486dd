"""VQA-v2: loading the official files (with their faults) and scoring hand-made predictions."""

import json
import random

import pytest
from .official_formats import vqa_record, write_vqa

from vlmswap.evaluate.records import AnnotationFileError, Example
from vlmswap.evaluate.vqav2 import VQAv2

ANSWERS_TWO = ["2"] * 10
ANSWERS_YES3 = ["yes"] * 3 + ["no"] * 7
ANSWERS_RED = ["red"] * 10


@pytest.fixture
def vqa_root(tmp_path):
    return write_vqa(tmp_path / "vqa", [
        vqa_record(1001, 1, ANSWERS_TWO, "How many dogs?", "number", "how many"),
        vqa_record(1002, 1, ANSWERS_YES3, "Is it sunny?", "yes/no", "is it"),
        vqa_record(2001, 2, ANSWERS_RED, "What color is the car?", "other", "what color is the"),
    ])


def test_load_builds_one_example_per_question(vqa_root):
    examples, skipped = VQAv2().load(vqa_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["1001", "1002", "2001"]
    e = by_id["1001"]
    assert e.prompt == "How many dogs?\nAnswer the question using a single word or phrase."
    assert e.target == ANSWERS_TWO
    assert e.image == (vqa_root / "val2014" / "COCO_val2014_000000000001.jpg").absolute()
    assert e.image.is_absolute()
    assert e.meta["answer_type"] == "number" and e.meta["question_type"] == "how many"


def test_missing_image_is_skipped_with_its_path_and_loading_goes_on(tmp_path):
    root = write_vqa(tmp_path / "vqa", [vqa_record(1, 7, ANSWERS_RED), vqa_record(2, 8, ANSWERS_RED)],
                     missing_images=(8,))
    examples, skipped = VQAv2().load(root)
    assert [e.id for e in examples] == ["1"]
    assert len(skipped) == 1
    s = skipped[0]
    assert s.id == "2"
    assert s.path == str((root / "val2014" / "COCO_val2014_000000000008.jpg").absolute())
    assert "image" in s.reason


def test_malformed_records_are_skipped_with_the_file_at_fault(tmp_path):
    records = [
        vqa_record(1, 1, ANSWERS_RED),                 # fine
        vqa_record(2, 1, ["red"] * 9),                 # 9 answers
        ({"image_id": 1, "question": "q?", "question_id": 3}, "not a dict"),
        vqa_record(4, 1, ANSWERS_RED),                 # its question is removed below
        vqa_record(5, 1, ANSWERS_RED),                 # answer_type missing
        vqa_record(1, 1, ANSWERS_RED),                 # duplicate question_id
    ]
    del records[4][1]["answer_type"]
    records[3] = ({"image_id": 1, "question": "orphan", "question_id": 999}, records[3][1])
    root = write_vqa(tmp_path / "vqa", records)
    examples, skipped = VQAv2().load(root)
    assert [e.id for e in examples] == ["1"]
    reasons = {s.id: (s.path, s.reason) for s in skipped}
    ann_file = str((root / "v2_mscoco_val2014_annotations.json").absolute())
    q_file = str((root / "v2_OpenEnded_mscoco_val2014_questions.json").absolute())
    assert reasons["2"][0] == ann_file and "10 answers" in reasons["2"][1]
    assert reasons["annotations[2]"][0] == ann_file
    assert reasons["4"][0] == q_file and "no question" in reasons["4"][1]
    assert "answer_type" in reasons["5"][1]
    assert any("duplicate" in s.reason for s in skipped if s.id == "1")
    assert len(skipped) == 5


@pytest.mark.parametrize("missing", ["v2_OpenEnded_mscoco_val2014_questions.json",
                                     "v2_mscoco_val2014_annotations.json"])
def test_missing_annotation_file_is_a_clear_error(vqa_root, missing):
    (vqa_root / missing).unlink()
    with pytest.raises(AnnotationFileError, match=missing.replace(".", r"\.")) as err:
        VQAv2().load(vqa_root)
    assert "expected" in str(err.value)


def test_unparsable_or_misshapen_annotation_file_is_a_clear_error(vqa_root):
    path = vqa_root / "v2_mscoco_val2014_annotations.json"
    path.write_text('{"annotations": [')
    with pytest.raises(AnnotationFileError, match="v2_mscoco_val2014_annotations"):
        VQAv2().load(vqa_root)
    path.write_text(json.dumps({"questions": []}))
    with pytest.raises(AnnotationFileError, match="'annotations' list"):
        VQAv2().load(vqa_root)


def test_slim_subset_is_the_first_n_of_one_random_21_shuffle(tmp_path):
    qids = list(range(100, 120))
    root = write_vqa(tmp_path / "vqa", [vqa_record(q, 1, ANSWERS_RED) for q in qids])
    order = [str(q) for q in qids]
    random.Random(21).shuffle(order)
    examples, _ = VQAv2().load(root, "slim-5")
    assert [e.id for e in examples] == order[:5]
    full, _ = VQAv2().load(root, "full")
    assert [e.id for e in full] == order
    bigger, _ = VQAv2().load(root, "slim-1000")
    assert len(bigger) == 20
    with pytest.raises(ValueError, match="slim-N"):
        VQAv2().load(root, "slim")


def test_score_soft_accuracy_by_answer_type(vqa_root):
    examples, _ = VQAv2().load(vqa_root)
    predictions = {"1001": "Two.", "1002": "Yes", "2001": "blue"}
    score = VQAv2().score(examples, predictions)
    # 1.0, 0.9 (3 of 10 annotators say yes), 0.0 -> 63.333... -> 63.33
    assert score.columns == {"vqa-v2": 63.33}
    assert score.metrics["accuracy"] == 63.33
    assert score.metrics["answer_type:number"] == 100.0
    assert score.metrics["answer_type:yes/no"] == 90.0
    assert score.metrics["answer_type:other"] == 0.0
    assert score.metrics["question_type:how many"] == 100.0
    assert score.n_samples == 3
    assert score.per_example["1001"] == {"prediction": "Two.", "parsed": "2", "score": 1.0}
    assert score.per_example["1002"]["score"] == pytest.approx(0.9)


def test_ground_truth_gets_punctuation_but_not_lowercasing(tmp_path):
    root = write_vqa(tmp_path / "vqa", [
        vqa_record(1, 1, ["t-shirt"] * 10),
        vqa_record(2, 1, ["Red"] * 10),
    ])
    examples, _ = VQAv2().load(root)
    score = VQAv2().score(examples, {"1": "T-shirt", "2": "red"})
    assert score.per_example["1"]["score"] == 1.0  # both sides become "t shirt"
    assert score.per_example["2"]["score"] == 0.0  # GT "Red" is not lowercased
    assert score.columns["vqa-v2"] == 50.0


def test_score_rounds_to_two_decimals():
    examples = [Example(str(i), None, "", ["x"] * 10, {"answer_type": "other", "question_type": "what"})
                for i in range(3)]
    score = VQAv2().score(examples, {"0": "x", "1": "y", "2": "y"})
    assert score.columns["vqa-v2"] == 33.33


def test_missing_prediction_is_an_error(vqa_root):
    examples, _ = VQAv2().load(vqa_root)
    with pytest.raises(ValueError, match="no prediction"):
        VQAv2().score(examples, {"1001": "2"})
