"""TallyQA: the 16-choice prompt, loading test.json with its splits, and micro-averaged scoring."""

import json
import random

import pytest
from .official_formats import tally_record, write_tallyqa

from vlmswap.evaluate.records import AnnotationFileError, Example
from vlmswap.evaluate.prompts import tally_prompt
from vlmswap.evaluate.tallyqa import TallyQA


def one_hot(index: int, n: int = 16) -> str:
    probs = [0.0] * n
    probs[index] = 1.0
    return json.dumps(probs)


def test_choices_are_the_letters_a_to_p():
    assert TallyQA.choices == tuple("ABCDEFGHIJKLMNOP")
    assert TallyQA.mode == "choice"


def test_prompt_lists_counts_0_to_15_as_a_to_p():
    prompt = tally_prompt("How many dogs are there?")
    lines = prompt.split("\n")
    assert lines[0] == "How many dogs are there?"
    assert lines[1] == "A. 0" and lines[2] == "B. 1" and lines[16] == "P. 15"
    assert len(lines) == 18
    assert lines[-1] == "Answer with the option's letter from the given choices directly."


@pytest.fixture
def tally_root(tmp_path):
    return write_tallyqa(tmp_path / "t", [
        tally_record(1, "VG_100K/1.jpg", "How many dogs?", 2, True),
        tally_record(2, "VG_100K_2/2.jpg", "How many red cars?", 0, False),
        tally_record(3, "VG_100K/3.jpg", "How many birds?", 15, True),
        tally_record(4, "VG_100K/4.jpg", "How many grains of sand?", 40, True),
    ])


def test_load_one_example_per_question_with_split(tally_root):
    examples, skipped = TallyQA().load(tally_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["1", "2", "3", "4"]
    assert by_id["2"].meta["split"] == "complex" and by_id["1"].meta["split"] == "simple"
    assert by_id["2"].image == (tally_root / "VG_100K_2" / "2.jpg").absolute()
    assert by_id["1"].prompt == tally_prompt("How many dogs?")
    assert by_id["4"].target == 40  # kept, though no option can name it


def test_faults_are_skipped_and_missing_file_is_an_error(tmp_path):
    bad_split = tally_record(3, "VG_100K/3.jpg", "q?", 1, True)
    bad_split["issimple"] = "yes"
    root = write_tallyqa(tmp_path / "t", [
        tally_record(1, "VG_100K/1.jpg", "q?", 1, True),
        tally_record(2, "VG_100K/2.jpg", "q?", 1, True),
        bad_split,
        tally_record(4, "VG_100K/4.jpg", "q?", -1, False),
        tally_record(5, "VG_100K/5.jpg", "q?", 1.0, False),
        "not a record",
        tally_record(1, "VG_100K/1.jpg", "again?", 3, True),
    ], missing_images=("VG_100K/2.jpg",))
    examples, skipped = TallyQA().load(root)
    assert [e.id for e in examples] == ["1"]
    reasons = {s.id: (s.path, s.reason) for s in skipped if s.id != "1"}
    assert reasons["2"] == (str((root / "VG_100K" / "2.jpg").absolute()), "image file not found")
    assert "issimple" in reasons["3"][1]
    assert "answer" in reasons["4"][1] and "answer" in reasons["5"][1]
    assert reasons["questions[5]"][0] == str((root / "test.json").absolute())
    assert any(s.id == "1" and "duplicate" in s.reason for s in skipped)

    (root / "test.json").unlink()
    with pytest.raises(AnnotationFileError, match=r"test\.json"):
        TallyQA().load(root)


def test_slim_takes_n_per_split_along_one_shuffle(tmp_path):
    records = [tally_record(i, f"VG_100K/{i}.jpg", "q?", 1, i % 3 == 0) for i in range(30)]
    root = write_tallyqa(tmp_path / "t", records)
    order = list(range(30))
    random.Random(21).shuffle(order)
    simple = [str(i) for i in order if i % 3 == 0][:2]
    complex_ = [str(i) for i in order if i % 3 != 0][:2]
    examples, _ = TallyQA().load(root, "slim-2")
    assert sorted(e.id for e in examples) == sorted(simple + complex_)


def test_score_is_micro_averaged_and_counts_above_15_are_wrong(tally_root):
    examples, _ = TallyQA().load(tally_root)
    preds = {"1": one_hot(2), "2": one_hot(1), "3": one_hot(15), "4": one_hot(15)}
    score = TallyQA().score(examples, preds)
    # simple: 1 right (C = 2), 3 right (P = 15), 4 wrong (answer 40) -> 2/3; complex: 0/1
    # micro: 2/4 = 50 (the macro mean would be 33.3)
    assert score.columns == {"tallyqa": 50.0}
    assert score.metrics["simple:accuracy"] == pytest.approx(200 / 3)
    assert score.metrics["complex:accuracy"] == 0.0
    assert score.metrics["unpredictable"] == 25.0
    assert score.n_samples == 4
    assert score.per_example["3"] == {"prediction": one_hot(15), "parsed": 15, "letter": "P", "correct": True,
                                      "target": 15}


def test_argmax_picks_the_first_on_a_tie():
    e = Example("1", None, "", 0, {"split": "simple"})
    payload = json.dumps([0.5, 0.5] + [0.0] * 14)
    assert TallyQA().score([e], {"1": payload}).per_example["1"]["parsed"] == 0


@pytest.mark.parametrize("payload", ["[0.5, 0.5]", "C", json.dumps([1 / 17] * 17), json.dumps([0.1] * 16)])
def test_invalid_payload_is_an_error(tally_root, payload):
    examples, _ = TallyQA().load(tally_root)
    preds = {e.id: one_hot(0) for e in examples}
    preds["2"] = payload
    with pytest.raises(ValueError, match="example 2"):
        TallyQA().score(examples, preds)
