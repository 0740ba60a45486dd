"""GQA testdev-balanced: loading the questions dict, punctuation-stripping exact match."""

import random

import pytest
from .official_formats import gqa_question, write_gqa

from vlmswap.evaluate.gqa import GQA, clean_prediction
from vlmswap.evaluate.records import AnnotationFileError, Example


@pytest.mark.parametrize("raw,clean", [
    ("Yes", "yes"),
    ("Yes.", "yes"),
    ("t-shirt", "tshirt"),          # deleted, not turned into a space (unlike VQA)
    ("Coffee table!", "coffee table"),
    ("don't", "dont"),
    ("a dog", "a dog"),             # no article dropping
    ("two", "two"),                 # no number mapping
    (" left ", " left "),           # no whitespace strip
])
def test_clean_prediction(raw, clean):
    assert clean_prediction(raw) == clean


@pytest.fixture
def gqa_root(tmp_path):
    return write_gqa(tmp_path / "g", {
        "201": gqa_question("n1", "Is the sky blue?", "yes", structural="verify", semantic="attr"),
        "202": gqa_question("n1", "What color is the car?", "red", structural="query", semantic="attr"),
        "203": gqa_question("n2", "What is on the table?", "coffee table", structural="query", semantic="rel"),
        "204": gqa_question("n2", "Who is it?", "man", balanced=False),
    })


def test_load_keeps_balanced_questions(gqa_root):
    examples, skipped = GQA().load(gqa_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["201", "202", "203"]  # 204 is not balanced
    e = by_id["202"]
    assert e.prompt == "What color is the car?\nAnswer the question using a single word or phrase."
    assert e.target == "red"
    assert e.image == (gqa_root / "images" / "n1.jpg").absolute()


def test_unbalanced_questions_still_take_their_place_in_the_shuffle(tmp_path):
    questions = {str(i): gqa_question("n1", "q?", "a", balanced=i % 2 == 0) for i in range(10)}
    root = write_gqa(tmp_path / "g", questions)
    order = [str(i) for i in range(10)]
    random.Random(21).shuffle(order)
    examples, _ = GQA().load(root, "slim-4")
    assert [e.id for e in examples] == [i for i in order[:4] if int(i) % 2 == 0]


def test_faults_are_skipped_and_missing_file_is_an_error(tmp_path):
    no_answer = gqa_question("n1", "q?", "a")
    del no_answer["answer"]
    odd_balance = gqa_question("n1", "q?", "a")
    odd_balance["isBalanced"] = "true"
    no_flag = gqa_question("n1", "q?", "a")
    del no_flag["isBalanced"]
    root = write_gqa(tmp_path / "g", {"1": gqa_question("n1", "q?", "a"), "2": gqa_question("gone", "q?", "a"),
                                      "3": no_answer, "4": odd_balance, "5": [], "6": no_flag},
                     missing_images=("gone",))
    examples, skipped = GQA().load(root)
    assert sorted(e.id for e in examples) == ["1", "6"]  # no isBalanced field: counted
    reasons = {s.id: (s.path, s.reason) for s in skipped}
    questions = str((root / "testdev_balanced_questions.json").absolute())
    assert reasons["2"] == (str((root / "images" / "gone.jpg").absolute()), "image file not found")
    assert reasons["3"][0] == questions and "answer" in reasons["3"][1]
    assert "isBalanced" in reasons["4"][1]
    assert reasons["5"][0] == questions

    (root / "testdev_balanced_questions.json").write_text("[]")
    with pytest.raises(AnnotationFileError, match="expected a JSON object"):
        GQA().load(root)
    (root / "testdev_balanced_questions.json").unlink()
    with pytest.raises(AnnotationFileError, match=r"testdev_balanced_questions\.json"):
        GQA().load(root)


def test_score_exact_match_with_binary_open_split(gqa_root):
    examples, _ = GQA().load(gqa_root)
    score = GQA().score(examples, {"201": "Yes.", "202": "Red car", "203": "Coffee table"})
    assert score.columns == {"gqa": pytest.approx(66.67)}
    assert score.metrics["binary"] == 100.0
    assert score.metrics["open"] == 50.0
    assert score.metrics["semantic:rel"] == 100.0
    assert score.per_example["202"] == {"prediction": "Red car", "parsed": "red car", "correct": False,
                                        "target": "red"}
    assert score.n_samples == 3


def test_score_rounds_like_the_official_script():
    examples = [Example(str(i), None, "", "a", {}) for i in range(3)]
    assert GQA().score(examples, {"0": "a", "1": "b", "2": "b"}).columns["gqa"] == 33.33
