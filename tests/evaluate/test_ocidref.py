"""OCID-Ref: clutter splits from take_id, the 640x480 box normalization, Acc@IoU >= 0.25."""

import random

import pytest
from .official_formats import ocid_entry, write_ocidref

from vlmswap.evaluate.ocidref import OCIDRef, clutter_split, normalize_ocid_box
from vlmswap.evaluate.records import AnnotationFileError

PROMPT = 'Please provide the bounding box coordinate of the region this sentence describes: "{}"'
SCENE = "ARID20/table/top/seq{:02d}/rgb/result_{}.png"


@pytest.mark.parametrize("take_id,split", [(0, "Minimum"), (9, "Minimum"), (10, "Medium"), (16, "Medium"),
                                           (17, "Maximum"), (20, "Maximum")])
def test_clutter_split_boundaries(take_id, split):
    assert clutter_split(take_id) == split


@pytest.mark.parametrize("take_id", [-1, 21, "5", 5.0, True, None])
def test_clutter_split_rejects_anything_else(take_id):
    with pytest.raises(ValueError, match="take_id"):
        clutter_split(take_id)


def test_box_is_divided_by_640_480_and_rounded():
    assert normalize_ocid_box("[64, 48, 320, 240]") == [0.1, 0.1, 0.5, 0.5]
    assert normalize_ocid_box([0, 0, 640, 480]) == [0.0, 0.0, 1.0, 1.0]
    assert normalize_ocid_box([101, 97, 333, 401]) == [0.16, 0.2, 0.52, 0.84]  # 0.1578, 0.2021, 0.5203, 0.8354


@pytest.mark.parametrize("bbox", ["[0, 0, 641, 10]", "[0, 0, 10, 481]", "[10, 0, 10, 5]", "[0, 9, 5, 3]",
                                  "[0, 0, 10]", "not json", [0, 0, "5", 5], None, "[0, 0, Infinity, 5]"])
def test_bad_boxes(bbox):
    with pytest.raises(ValueError, match="bbox"):
        normalize_ocid_box(bbox)


@pytest.fixture
def ocid_root(tmp_path):
    return write_ocidref(tmp_path / "o", {
        "0": ocid_entry("the red mug on the left", SCENE.format(1, "a"), [0, 0, 320, 240], 3),
        "1": ocid_entry("the blue bowl", SCENE.format(1, "b"), [0, 0, 320, 240], 5),
        "2": ocid_entry("the banana", SCENE.format(2, "a"), [0, 0, 320, 240], 8),
        "3": ocid_entry("the cereal box", SCENE.format(3, "a"), [320, 240, 640, 480], 12),
        "4": ocid_entry("the apple behind the box", SCENE.format(4, "a"), [320, 240, 640, 480], 19),
    })


def test_load_examples_with_box_split_and_prompt(ocid_root):
    examples, skipped = OCIDRef().load(ocid_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["0", "1", "2", "3", "4"]
    e = by_id["3"]
    assert e.prompt == PROMPT.format("the cereal box")
    assert e.target == [0.5, 0.5, 1.0, 1.0]
    assert e.image == (ocid_root / "OCID-dataset" / SCENE.format(3, "a")).absolute()
    assert e.meta["clutter_split"] == "Medium" and by_id["4"].meta["clutter_split"] == "Maximum"


def test_faults_are_skipped_and_missing_file_is_an_error(tmp_path):
    root = write_ocidref(tmp_path / "o", {
        "0": ocid_entry("ok", SCENE.format(1, "a"), [0, 0, 10, 10], 0),
        "1": ocid_entry("gone", SCENE.format(1, "gone"), [0, 0, 10, 10], 0),
        "2": ocid_entry("wide", SCENE.format(1, "c"), [0, 0, 700, 10], 0),
        "3": ocid_entry("late", SCENE.format(1, "d"), [0, 0, 10, 10], 21),
        "4": ocid_entry("   ", SCENE.format(1, "e"), [0, 0, 10, 10], 1),
        "5": "not an entry",
    }, missing_images=(SCENE.format(1, "gone"),))
    examples, skipped = OCIDRef().load(root)
    assert [e.id for e in examples] == ["0"]
    reasons = {s.id: (s.path, s.reason) for s in skipped}
    expressions = str((root / "val_expressions.json").absolute())
    assert reasons["1"] == (str((root / "OCID-dataset" / SCENE.format(1, "gone")).absolute()), "image file not found")
    assert reasons["2"][0] == expressions and "x-range" in reasons["2"][1]
    assert "take_id" in reasons["3"][1]
    assert "sentence" in reasons["4"][1]
    assert reasons["5"][0] == expressions

    (root / "val_expressions.json").unlink()
    with pytest.raises(AnnotationFileError, match=r"val_expressions\.json"):
        OCIDRef().load(root)


def test_slim_takes_n_per_clutter_split(tmp_path):
    entries = {str(i): ocid_entry("x", SCENE.format(i, "a"), [0, 0, 10, 10], i % 21) for i in range(42)}
    root = write_ocidref(tmp_path / "o", entries)
    order = list(range(42))
    random.Random(21).shuffle(order)
    expected = []
    for split in ("Minimum", "Medium", "Maximum"):
        expected += [str(i) for i in order if clutter_split(i % 21) == split][:3]
    examples, _ = OCIDRef().load(root, "slim-3")
    assert sorted(e.id for e in examples) == sorted(expected)


def test_iou_threshold_is_a_quarter_inclusive(ocid_root):
    examples, _ = OCIDRef().load(ocid_root)
    target = {e.id: e for e in examples}["0"].target
    assert target == [0.0, 0.0, 0.5, 0.5]
    exact = [e for e in examples if e.id == "0"]
    # [0, 0, 0.5, 0.125] lies inside the target: IoU = 0.0625 / 0.25 = 0.25 exactly (binary fractions)
    assert OCIDRef().score(exact, {"0": "[0, 0, 0.5, 0.125]"}).columns["ocid-ref"] == 100.0
    # [0, 0, 0.5, 0.12]: IoU = 0.06 / 0.25 = 0.24
    assert OCIDRef().score(exact, {"0": "[0, 0, 0.5, 0.12]"}).columns["ocid-ref"] == 0.0


def test_score_per_split_and_micro_averaged_all(ocid_root):
    examples, _ = OCIDRef().load(ocid_root)
    preds = {"0": "[0, 0, 0.5, 0.5]", "1": "[0.0, 0.0, 0.4, 0.4]", "2": "[0, 0, 0.5, 0.5].",  # Minimum
             "3": "[0.5, 0.5, 1.0, 1.0]",                                                     # Medium
             "4": "[0, 0, 0.5, 0.5]"}                                                         # Maximum
    score = OCIDRef().score(examples, preds)
    # Minimum: right, right (IoU 0.64), invalid -> 2/3; Medium 1/1; Maximum 0/1; All 3/5
    assert score.columns == {"ocid-ref": 60.0}
    assert score.metrics["Minimum"] == pytest.approx(200 / 3)
    assert score.metrics["Medium"] == 100.0
    assert score.metrics["Maximum"] == 0.0
    assert score.metrics["invalid_rate"] == 20.0
    assert score.n_samples == 5
    assert score.per_example["2"]["parsed"] is None and score.per_example["2"]["clutter_split"] == "Minimum"
