"""Trivial baselines are scored by the benchmarks' own scorers."""

from pathlib import Path

from vlmswap.evaluate.baselines import CENTRAL_BOX, baseline_predictions
from vlmswap.evaluate.records import Example
from vlmswap.evaluate.registry import get_benchmark


def ex(i, target, **meta):
    return Example(id=str(i), image=Path("x.jpg"), prompt="q", target=target, meta=meta)


def test_majority_answer_per_answer_type():
    qt = {"question_type": "is there"}
    examples = [ex(1, ["yes"] * 10, answer_type="yes/no", multiple_choice_answer="yes", **qt),
                ex(2, ["yes"] * 10, answer_type="yes/no", multiple_choice_answer="yes", **qt),
                ex(3, ["no"] * 10, answer_type="yes/no", multiple_choice_answer="no", **qt),
                ex(4, ["2"] * 10, answer_type="number", multiple_choice_answer="2", question_type="how many")]
    name, preds = baseline_predictions("vqa-v2", examples)
    assert preds == {"1": "yes", "2": "yes", "3": "yes", "4": "2"}
    assert get_benchmark("vqa-v2").score(examples, preds).columns["vqa-v2"] == 75.0


def test_central_box_for_grounding():
    examples = [ex(1, [0.25, 0.25, 0.75, 0.75]), ex(2, [0.0, 0.0, 0.2, 0.2])]
    _, preds = baseline_predictions("refcoco", examples)
    assert set(preds.values()) == {CENTRAL_BOX}
    assert get_benchmark("refcoco").score(examples, preds).columns["refcoco"] == 50.0


def test_most_frequent_choice():
    _, preds = baseline_predictions("tallyqa", [ex(1, 2), ex(2, 2), ex(3, 5)])
    assert preds["1"] == "[" + ", ".join("1.0" if i == 2 else "0.0" for i in range(16)) + "]"
    _, preds = baseline_predictions("pope", [ex(1, "no"), ex(2, "no"), ex(3, "yes")])
    assert preds["3"] == "[0.0, 1.0]"


def test_majority_of_single_answers_is_a_whole_answer():
    """GQA's target is one answer string: the majority is the most frequent answer, not a letter of it."""
    examples = [ex(1, "yes"), ex(2, "yes"), ex(3, "no")]
    _, preds = baseline_predictions("gqa", examples)
    assert set(preds.values()) == {"yes"}
