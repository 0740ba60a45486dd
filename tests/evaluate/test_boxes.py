"""Box parsing (strict, literal_eval only), IoU, COCO-box normalization and Acc@IoU scoring."""

import pytest

from vlmswap.evaluate.boxes import normalize_coco_box, parse_box, score_boxes
from vlmswap.evaluate.metrics import iou
from vlmswap.evaluate.records import Example

# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,box", [
    ("[0.1, 0.2, 0.3, 0.4]", [0.1, 0.2, 0.3, 0.4]),
    ("[0.1,0.2,0.3,0.4]", [0.1, 0.2, 0.3, 0.4]),
    ("  [0.1, 0.2, 0.3, 0.4]\n", [0.1, 0.2, 0.3, 0.4]),
    ("[0, 0, 1, 1]", [0.0, 0.0, 1.0, 1.0]),
    ("[0.00, 0.5, 1.0, 0.75]", [0.0, 0.5, 1.0, 0.75]),
])
def test_valid_boxes(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("text", [
    "[0.1, 0.2, 0.3, 0.4].",                      # trailing period
    "The box is [0.1, 0.2, 0.3, 0.4]",            # extra text
    "[0.1, 0.2, 0.3, 0.4] is the box",
    "[0.1, 0.2, 0.3]",                            # 3 numbers
    "[0.1, 0.2, 0.3, 0.4, 0.5]",                  # 5 numbers
    "[0.1, 0.2, 1.3, 0.4]",                       # out of range
    "[-0.1, 0.2, 0.3, 0.4]",
    "[0.1, 0.2, 1e999, 0.4]",                     # inf
    "[0.3, 0.2, 0.3, 0.4]",                       # x1 == x2
    "[0.5, 0.2, 0.3, 0.4]",                       # x1 > x2
    "[0.1, 0.4, 0.3, 0.2]",                       # y1 > y2
    "[0.1, 0.4, 0.3, 0.4]",                       # y1 == y2
    "[[0.1, 0.2, 0.3, 0.4]]",                     # nested
    "[[0.1, 0.2], [0.3, 0.4]]",
    "['0.1', '0.2', '0.3', '0.4']",               # strings
    "'[0.1, 0.2, 0.3, 0.4]'",                     # a string literal of a list
    "{'x1': 0.1, 'y1': 0.2, 'x2': 0.3, 'y2': 0.4}",  # dict
    "{0.1, 0.2, 0.3, 0.4}",                       # set
    "(0.1, 0.2, 0.3, 0.4)",                       # tuple: the harness requires a list
    "0.1, 0.2, 0.3, 0.4",                         # bare numbers evaluate to a tuple
    "[True, False, True, True]",
    "[False, False, True, True]",
    "[0.1, 0.2, 0.3, 0.4j]",
    "[None, 0.2, 0.3, 0.4]",
    "",
    "   ",
    "0.5",
    "[0.1, 0.2, 0.3, 0.4",
])
def test_invalid_boxes(text):
    assert parse_box(text) is None


def test_parse_never_executes_code(tmp_path):
    marker = tmp_path / "ran"
    assert parse_box(f"__import__('pathlib').Path({str(marker)!r}).touch()") is None
    assert parse_box("[__import__('os').getpid(), 0, 1, 1]") is None
    assert not marker.exists()


def test_parse_rejects_non_strings():
    assert parse_box(None) is None
    assert parse_box([0.1, 0.2, 0.3, 0.4]) is None


# -- IoU -----------------------------------------------------------------------------------------

def test_iou_basic_cases():
    assert iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert iou([0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]) == 0.0  # touching corners
    assert iou([0, 0, 0.2, 0.2], [0.6, 0.6, 1, 1]) == 0.0
    assert iou([0, 0, 1, 1], [0, 0, 0.5, 1]) == 0.5
    # two unit squares offset by half: inter 0.5, union 1.5
    assert iou([0, 0, 1, 1], [0.5, 0, 1.5, 1]) == pytest.approx(1 / 3)
    assert iou([0, 0, 0.5, 1], [0, 0, 1, 1]) == iou([0, 0, 1, 1], [0, 0, 0.5, 1])


def test_iou_of_empty_boxes_is_zero():
    assert iou([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]) == 0.0
    assert iou([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.9]) == 0.0


# -- normalization of COCO boxes -----------------------------------------------------------------

def test_normalize_coco_box_by_original_size_rounded_to_2_decimals():
    assert normalize_coco_box([10, 20, 30, 40], 100, 200) == [0.1, 0.1, 0.4, 0.3]
    assert normalize_coco_box([1, 1, 1, 1], 3, 3) == [0.33, 0.33, 0.67, 0.67]
    assert normalize_coco_box([0, 0, 640, 480], 640, 480) == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("bbox,w,h", [
    ([0, 0, 0, 10], 100, 100),      # zero width
    ([0, 0, 10, 0], 100, 100),      # zero height
    ([95, 0, 10, 10], 100, 100),    # leaves the image on the right
    ([0, 95, 10, 10], 100, 100),    # leaves the image at the bottom
    ([0, 0, 10], 100, 100),
    ([0, 0, 10, 10], 0, 100),
    (["0", 0, 10, 10], 100, 100),
])
def test_normalize_coco_box_rejects_broken_boxes(bbox, w, h):
    with pytest.raises(ValueError):
        normalize_coco_box(bbox, w, h)


# -- Acc@IoU scoring --------------------------------------------------------------------------------

def _examples(*targets):
    return [Example(str(i), None, "", list(t), {}) for i, t in enumerate(targets)]


def test_threshold_is_inclusive_at_the_boundary():
    examples = _examples([0, 0, 1, 1], [0, 0, 1, 1])
    preds = {"0": "[0, 0, 0.5, 1]", "1": "[0, 0, 0.49, 1]"}  # IoU exactly 0.5, and 0.49
    score = score_boxes("refcoco", "refcoco", examples, preds, threshold=0.5)
    assert [score.per_example[k]["correct"] for k in ("0", "1")] == [True, False]
    assert score.columns == {"refcoco": 50.0}


def test_lower_threshold_for_ocid_style_scoring():
    examples = _examples([0, 0, 1, 1], [0, 0, 1, 1])
    preds = {"0": "[0, 0, 0.25, 1]", "1": "[0, 0, 0.24, 1]"}  # IoU exactly 0.25, and 0.24
    assert score_boxes("x", "x", examples, preds, threshold=0.25).columns["x"] == 50.0
    assert score_boxes("x", "x", examples, preds, threshold=0.5).columns["x"] == 0.0


def test_invalid_outputs_count_as_wrong_and_are_reported():
    examples = _examples([0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5])
    preds = {"0": "[0.1, 0.1, 0.5, 0.5]", "1": "[0.1, 0.1, 0.5, 0.5].", "2": "a dog", "3": "[0.6, 0.6, 0.9, 0.9]"}
    score = score_boxes("refcoco", "refcoco", examples, preds, threshold=0.5)
    assert score.columns["refcoco"] == 25.0
    assert score.metrics["accuracy"] == 25.0
    assert score.metrics["invalid_rate"] == 50.0
    assert score.n_samples == 4
    assert score.per_example["1"]["parsed"] is None and score.per_example["1"]["iou"] is None
    assert score.per_example["3"]["iou"] == 0.0 and score.per_example["3"]["correct"] is False
    assert score.per_example["0"]["parsed"] == [0.1, 0.1, 0.5, 0.5]


def test_scoring_needs_every_prediction():
    with pytest.raises(ValueError, match="no prediction"):
        score_boxes("refcoco", "refcoco", _examples([0, 0, 1, 1]), {}, threshold=0.5)
