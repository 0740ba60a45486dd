"""POPE, plus what the choice and per-split benchmarks share: the per-split slim draw, the choice
payload, and the ranking metrics (checked against values worked out by hand)."""

import json
import random

import pytest
from .official_formats import pope_record, write_pope

from vlmswap.evaluate.metrics import (
    average_precision, draw_subset_per_split, f1, parse_choice_probabilities, roc_auc,
)
from vlmswap.evaluate.pope import POPE
from vlmswap.evaluate.records import AnnotationFileError, Example

PROMPT = "{}\nAnswer the question using a single word or phrase."

# -- ranking metrics ---------------------------------------------------------------------------


def test_roc_auc_and_average_precision_by_hand():
    labels, scores = [1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]
    # positive-over-negative pairs: 0.9 beats both, 0.4 beats 0.1 only -> 3 of 4
    assert roc_auc(labels, scores) == pytest.approx(0.75)
    # thresholds 0.9 (P 1, R 1/2), 0.8 (P 1/2, R 1/2), 0.4 (P 2/3, R 1), 0.1 (P 1/2, R 1)
    # AP = 1/2 * 1 + 0 + 1/2 * 2/3 = 5/6
    assert average_precision(labels, scores) == pytest.approx(5 / 6)


def test_ties_count_half_for_roc_and_share_one_threshold_for_ap():
    labels, scores = [1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]
    # 0.9 beats both negatives (2), 0.5 ties 0.5 (1/2) and beats 0.1 (1) -> 3.5 / 4
    assert roc_auc(labels, scores) == pytest.approx(0.875)
    # thresholds 0.9 (P 1, R 1/2), 0.5 (P 2/3, R 1) -> 1/2 + 1/2 * 2/3
    assert average_precision(labels, scores) == pytest.approx(5 / 6)
    assert roc_auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert average_precision([1, 0], [0.3, 0.3]) == pytest.approx(0.5)


def test_perfect_and_inverted_rankings():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    # inverted: positives found last -> thresholds 0.2 (P 1/3, R 1/2) and 0.1 (P 1/2, R 1)
    assert average_precision([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.5 * 1 / 3 + 0.5 * 0.5)


def test_metrics_undefined_for_one_class():
    assert roc_auc([1, 1], [0.2, 0.9]) is None
    assert roc_auc([0, 0], [0.2, 0.9]) is None
    assert average_precision([0, 0], [0.2, 0.9]) is None


def test_f1():
    assert f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert f1([1, 0, 0], [1, 0, 0]) == 1.0
    assert f1([0, 0], [0, 0]) == 0.0  # nothing positive anywhere
    assert f1([1, 1], [0, 0]) == 0.0


# -- choice payload ----------------------------------------------------------------------------


def test_choice_payload_round_trip():
    assert parse_choice_probabilities("[0.8, 0.2]", 2, "x") == [0.8, 0.2]
    assert parse_choice_probabilities(json.dumps([0.25] * 4), 4, "x") == [0.25] * 4
    assert parse_choice_probabilities("[1, 0]", 2, "x") == [1.0, 0.0]
    # the runner rounds to 6 decimals, so the sum may miss 1 by a little
    assert parse_choice_probabilities(json.dumps([0.333333, 0.333333, 0.333333]), 3, "x")


@pytest.mark.parametrize("payload,why", [
    ("[0.8, 0.1, 0.1]", "3 values"),
    ("[1.0]", "1 values"),
    ("Yes", "not JSON"),
    ('{"Yes": 0.8, "No": 0.2}', "not a list"),
    ("0.8", "not a list"),
    ('["0.8", "0.2"]', "non-number"),
    ("[true, false]", "non-number"),
    ("[null, 1.0]", "non-number"),
    ("[NaN, 1.0]", "outside"),
    ("[Infinity, 0]", "outside"),
    ("[1.2, -0.2]", "outside"),
    ("[0.3, 0.3]", "not renormalized"),
    ("[0.0, 0.0]", "not renormalized"),
    ("", "not JSON"),
])
def test_invalid_choice_payload_is_an_error_naming_the_example(payload, why):
    with pytest.raises(ValueError, match=why) as err:
        parse_choice_probabilities(payload, 2, "adversarial-7")
    assert "adversarial-7" in str(err.value)


def test_non_string_payload_is_an_error():
    with pytest.raises(ValueError, match="not a string"):
        parse_choice_probabilities([0.5, 0.5], 2, "x")


# -- per-split slim draw -----------------------------------------------------------------------


def test_per_split_draw_walks_one_shuffle_of_everything():
    splits = ["a"] * 6 + ["b"] * 3 + ["c"] * 11
    records = [f"{s}{i}" for i, s in enumerate(splits)]
    order = list(range(len(records)))
    random.Random(21).shuffle(order)
    expected, counts = [], {"a": 0, "b": 0, "c": 0}
    for i in order:
        if counts[splits[i]] < 2:
            expected.append(records[i])
            counts[splits[i]] += 1
    got = draw_subset_per_split(records, splits, "slim-2", ("a", "b", "c"))
    assert got == expected
    assert sorted(r[0] for r in got) == ["a", "a", "b", "b", "c", "c"]
    # a small split gives what it has; full is the whole shuffled order
    assert sorted(r[0] for r in draw_subset_per_split(records, splits, "slim-5", ("a", "b", "c"))) == \
        ["a"] * 5 + ["b"] * 3 + ["c"] * 5
    assert draw_subset_per_split(records, splits, "full", ("a", "b", "c")) == [records[i] for i in order]
    # slim sets nest: each split's first 2 are its first 2 of slim-4
    four = draw_subset_per_split(records, splits, "slim-4", ("a", "b", "c"))
    for s in "abc":
        assert [r for r in four if r[0] == s][:2] == [r for r in got if r[0] == s]


def test_per_split_draw_keeps_unattributable_records_met_on_the_way_and_checks_splits():
    splits = ["a", None, "a", "b", "b", None]
    records = list(range(6))
    got = draw_subset_per_split(records, splits, "slim-1", ("a", "b"))
    order = list(range(6))
    random.Random(21).shuffle(order)
    walk, counts = [], {"a": 0, "b": 0}
    for i in order:
        if all(c >= 1 for c in counts.values()):
            break
        if splits[i] is None or counts[splits[i]] < 1:
            walk.append(i)
            if splits[i] is not None:
                counts[splits[i]] += 1
    assert got == walk
    with pytest.raises(ValueError, match="unknown split"):
        draw_subset_per_split([1], ["z"], "full", ("a",))
    with pytest.raises(ValueError, match="slim-N"):
        draw_subset_per_split([1], ["a"], "slim", ("a",))


# -- POPE loading --------------------------------------------------------------------------------


@pytest.fixture
def pope_root(tmp_path):
    return write_pope(tmp_path / "pope", {
        "adversarial": [pope_record(1, 11, "Is there a dog in the image?", "yes"),
                        pope_record(2, 11, "Is there a cat in the image?", "no")],
        "popular": [pope_record(1, 12, "Is there a car in the image?", "yes")],
        "random": [pope_record(1, 13, "Is there a cup in the image?", "no"),
                   pope_record(2, 13, "Is there a bowl in the image?", "yes"),
                   pope_record(3, 14, "Is there a fork in the image?", "no"),
                   pope_record(4, 14, "Is there a tie in the image?", "yes")],
    })


def test_load_reads_the_three_splits(pope_root):
    examples, skipped = POPE().load(pope_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["adversarial-1", "adversarial-2", "popular-1", "random-1", "random-2", "random-3",
                             "random-4"]
    e = by_id["popular-1"]
    assert e.prompt == PROMPT.format("Is there a car in the image?")
    assert e.target == "yes"
    assert e.image == (pope_root / "val2014" / "COCO_val2014_000000000012.jpg").absolute()
    assert e.meta["split"] == "popular" and e.meta["split_question_id"] == 1


def test_faults_are_skipped_and_missing_file_is_an_error(tmp_path):
    root = write_pope(tmp_path / "p", {
        "adversarial": [pope_record(1, 1, "q?", "yes"), pope_record(2, 2, "q?", "yes"), "{broken",
                        pope_record(3, 1, "q?", "maybe"), pope_record(1, 1, "again?", "no"),
                        {"question_id": "4", "image": "x.jpg", "text": "q?", "label": "no"}],
        "popular": [pope_record(1, 1, "q?", "no")],
        "random": [pope_record(1, 1, "q?", "no")],
    }, missing_images=(2,))
    examples, skipped = POPE().load(root)
    assert sorted(e.id for e in examples) == ["adversarial-1", "popular-1", "random-1"]
    reasons = {s.id: (s.path, s.reason) for s in skipped}
    adv = str((root / "coco_pope_adversarial.json").absolute())
    assert reasons["adversarial-2"] == (str((root / "val2014" / "COCO_val2014_000000000002.jpg").absolute()),
                                        "image file not found")
    assert reasons["adversarial:line3"][0] == adv and "not JSON" in reasons["adversarial:line3"][1]
    assert "label" in reasons["adversarial-3"][1]
    assert "question_id" in reasons["adversarial:line6"][1]
    assert any(s.id == "adversarial-1" and "duplicate" in s.reason for s in skipped)

    (root / "coco_pope_random.json").unlink()
    with pytest.raises(AnnotationFileError, match=r"coco_pope_random\.json"):
        POPE().load(root)


def test_slim_takes_n_per_split(pope_root):
    examples, _ = POPE().load(pope_root, "slim-1")
    assert sorted(e.meta["split"] for e in examples) == ["adversarial", "popular", "random"]
    examples, _ = POPE().load(pope_root, "slim-2")
    assert sorted(e.meta["split"] for e in examples) == ["adversarial"] * 2 + ["popular"] + ["random"] * 2


# -- POPE scoring --------------------------------------------------------------------------------


def test_headline_is_the_unweighted_mean_of_split_accuracies(pope_root):
    examples, _ = POPE().load(pope_root)
    preds = {
        "adversarial-1": "[0.9, 0.1]",  # yes, right
        "adversarial-2": "[0.6, 0.4]",  # yes, wrong
        "popular-1": "[0.7, 0.3]",      # yes, right
        "random-1": "[0.2, 0.8]",       # no, right
        "random-2": "[0.4, 0.6]",       # no, wrong
        "random-3": "[0.55, 0.45]",     # yes, wrong
        "random-4": "[0.45, 0.55]",     # no, wrong
    }
    score = POPE().score(examples, preds)
    # adversarial 1/2, popular 1/1, random 1/4 -> (50 + 100 + 25) / 3, not 3/7 pooled
    assert score.columns == {"pope": pytest.approx(175 / 3)}
    assert score.metrics["adversarial:accuracy"] == 50.0
    assert score.metrics["popular:accuracy"] == 100.0
    assert score.metrics["random:accuracy"] == 25.0
    assert score.n_samples == 7
    # random: yes-labels at P(yes) 0.4 and 0.45, no-labels at 0.2 and 0.55 -> pairs won: 0.4>0.2,
    # 0.45>0.2 -> 2 of 4; AP: thresholds 0.55 (P 0), 0.45 (P 1/2, R 1/2), 0.4 (P 2/3, R 1)
    assert score.metrics["random:roc_auc"] == pytest.approx(50.0)
    assert score.metrics["random:pr_auc"] == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 2 / 3))
    assert score.metrics["adversarial:roc_auc"] == pytest.approx(100.0)
    assert "popular:roc_auc" not in score.metrics  # one label only
    assert "roc_auc" in score.metrics and "pr_auc" in score.metrics  # pooled
    assert score.per_example["random-3"] == {"prediction": "[0.55, 0.45]", "parsed": "yes", "p_yes": 0.55,
                                             "correct": False, "target": "no"}


def test_a_tie_predicts_yes():
    e = Example("adversarial-1", None, "", "yes", {"split": "adversarial"})
    assert POPE().score([e], {"adversarial-1": "[0.5, 0.5]"}).per_example["adversarial-1"]["parsed"] == "yes"


def test_bad_payload_or_missing_prediction_is_an_error(pope_root):
    examples, _ = POPE().load(pope_root)
    preds = {e.id: "[0.5, 0.5]" for e in examples}
    preds["popular-1"] = "Yes"
    with pytest.raises(ValueError, match="popular-1"):
        POPE().score(examples, preds)
    del preds["popular-1"]
    with pytest.raises(ValueError, match="no prediction"):
        POPE().score(examples, preds)
