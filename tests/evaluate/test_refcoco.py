"""RefCOCO family: REFER-layout loading (val sentences, boxes, faults) and Acc@0.5 scoring."""

import pickle
import random

import pytest
from .official_formats import coco_ann, coco_image, ref, write_refer

from vlmswap.evaluate.refcoco import RefCOCO
from vlmswap.evaluate.records import AnnotationFileError

PROMPT = 'Please provide the bounding box coordinate of the region this sentence describes: "{}"'


@pytest.fixture
def tiny_refcoco(tmp_path):
    """ref 0: 2 val sentences on a 200x100 image; ref 1: train split; ref 2: image file missing;
    ref 3: ann_id absent from instances; ref 4: box leaves its 10x10 image."""
    images = [coco_image(1, 200, 100), coco_image(2, 50, 50), coco_image(3, 100, 100), coco_image(4, 10, 10)]
    anns = [coco_ann(11, 1, [20, 10, 100, 50]), coco_ann(21, 2, [0, 0, 10, 10]),
            coco_ann(31, 3, [0, 0, 50, 50]), coco_ann(41, 4, [5, 5, 6, 2])]
    refs = [ref(0, 11, 1, [(100, "left dog"), (101, "the brown dog")]),
            ref(1, 21, 2, [(102, "a train sentence")], split="train"),
            ref(2, 31, 3, [(103, "red cup")]),
            ref(3, 99, 1, [(104, "ghost")]),
            ref(4, 41, 4, [(105, "too wide")])]
    return write_refer(tmp_path / "refcoco", "refcoco", "unc", images, anns, refs, missing_images=(3,))


def test_one_example_per_val_sentence_with_normalized_box(tiny_refcoco):
    examples, skipped = RefCOCO("refcoco").load(tiny_refcoco)
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["100", "101"]  # 102 is train; 103-105 are skipped
    e = by_id["101"]
    assert e.prompt == PROMPT.format("the brown dog")
    # [x, y, w, h] = [20, 10, 100, 50] on 200 x 100 -> xyxy [20, 10, 120, 60] / size
    assert e.target == [0.1, 0.1, 0.6, 0.6]
    assert e.image == (tiny_refcoco / "train2014" / "COCO_train2014_000000000001.jpg").absolute()
    assert e.meta["split"] == "val" and e.meta["ref_id"] == 0 and e.meta["sent_id"] == 101
    assert e.meta["refer_dataset"] == "RefCOCO"
    assert {s.id for s in skipped} == {"103", "104", "105"}


def test_faults_are_skipped_with_the_file_at_fault(tiny_refcoco):
    _, skipped = RefCOCO("refcoco").load(tiny_refcoco)
    by_id = {s.id: s for s in skipped}
    instances = str((tiny_refcoco / "refcoco" / "instances.json").absolute())
    assert by_id["103"].path == str((tiny_refcoco / "train2014" / "COCO_train2014_000000000003.jpg").absolute())
    assert "image file not found" in by_id["103"].reason
    assert by_id["104"].path == instances and "99" in by_id["104"].reason
    assert by_id["105"].path == instances and "leaves the image" in by_id["105"].reason


def test_malformed_refs_and_sentences_are_skipped(tmp_path):
    images, anns = [coco_image(1, 100, 100)], [coco_ann(11, 1, [0, 0, 50, 50])]
    good = ref(0, 11, 1, [(1, "cat")])
    no_sent_id = ref(1, 11, 1, [(2, "dog")])
    del no_sent_id["sentences"][0]["sent_id"]
    empty_text = ref(2, 11, 1, [(3, "   ")])
    bad_ann_id = ref(3, 11, 1, [(4, "x")])
    bad_ann_id["ann_id"] = "11"
    duplicate = ref(4, 11, 1, [(1, "cat again")])
    root = write_refer(tmp_path / "r", "refcoco", "unc", images, anns,
                       [good, "not a ref", no_sent_id, empty_text, bad_ann_id, duplicate])
    examples, skipped = RefCOCO("refcoco").load(root)
    assert [(e.id, e.prompt) for e in examples] == [("1", PROMPT.format("cat"))]
    refs_file = str((root / "refcoco" / "refs(unc).p").absolute())
    assert {s.id for s in skipped} == {"refs[1]", "refs[2].sentences[0]", "3", "refs[4]", "1"}
    assert all(s.path == refs_file for s in skipped)


def test_refcocog_reads_the_umd_split_and_refcoco_plus_its_own_folder(tmp_path):
    images, anns = [coco_image(5, 100, 50)], [coco_ann(51, 5, [50, 0, 50, 25])]
    root = tmp_path / "r"
    write_refer(root, "refcocog", "umd", images, anns, [ref(0, 51, 5, [(7, "the right half")])])
    write_refer(root, "refcoco+", "unc", images, anns, [ref(0, 51, 5, [(8, "right top")])])
    g, _ = RefCOCO("refcocog").load(root)
    p, _ = RefCOCO("refcoco+").load(root)
    assert [(e.id, e.target, e.meta["refer_dataset"]) for e in g] == [("7", [0.5, 0.0, 1.0, 0.5], "RefCOCOg")]
    assert [e.id for e in p] == ["8"]
    with pytest.raises(AnnotationFileError, match=r"refs\(unc\)\.p"):
        RefCOCO("refcoco").load(root)


def test_missing_or_unreadable_annotation_files_are_clear_errors(tiny_refcoco):
    instances = tiny_refcoco / "refcoco" / "instances.json"
    refs_file = tiny_refcoco / "refcoco" / "refs(unc).p"
    good_refs = refs_file.read_bytes()

    instances.write_text("{not json")
    with pytest.raises(AnnotationFileError, match="instances.json"):
        RefCOCO("refcoco").load(tiny_refcoco)
    instances.unlink()
    with pytest.raises(AnnotationFileError, match="instances file not found.*instances.json.*expected COCO"):
        RefCOCO("refcoco").load(tiny_refcoco)

    refs_file.write_bytes(b"garbage")
    with pytest.raises(AnnotationFileError, match=r"refs\(unc\)\.p"):
        RefCOCO("refcoco").load(tiny_refcoco)
    refs_file.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(AnnotationFileError, match="expected a pickled list"):
        RefCOCO("refcoco").load(tiny_refcoco)
    refs_file.unlink()
    with pytest.raises(AnnotationFileError, match=r"refs file not found.*refs\(unc\)\.p"):
        RefCOCO("refcoco").load(tiny_refcoco)
    refs_file.write_bytes(good_refs)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_refs_pickle_that_imports_anything_is_refused_unexecuted(tiny_refcoco, tmp_path):
    marker = tmp_path / "pwned"
    (tiny_refcoco / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Payload(marker)]))
    with pytest.raises(AnnotationFileError, match="refuses to load"):
        RefCOCO("refcoco").load(tiny_refcoco)
    assert not marker.exists()


def test_slim_subset_shuffles_this_dataset_sentences_with_random_21(tmp_path):
    images = [coco_image(1, 100, 100)]
    anns = [coco_ann(11, 1, [0, 0, 50, 50])]
    refs = [ref(i, 11, 1, [(10 * i, "a"), (10 * i + 1, "b")]) for i in range(6)]
    root = write_refer(tmp_path / "r", "refcoco", "unc", images, anns, refs)
    order = [str(s) for i in range(6) for s in (10 * i, 10 * i + 1)]
    random.Random(21).shuffle(order)
    examples, _ = RefCOCO("refcoco").load(root, "slim-4")
    assert [e.id for e in examples] == order[:4]


def test_score_acc_at_iou_half_and_invalid_rate(tiny_refcoco):
    examples, _ = RefCOCO("refcoco").load(tiny_refcoco)
    score = RefCOCO("refcoco").score(examples, {"100": "[0.1, 0.1, 0.6, 0.6]", "101": "[0.1, 0.1, 0.6, 0.6]."})
    assert score.columns == {"refcoco": 50.0}
    assert score.metrics["invalid_rate"] == 50.0
    assert score.n_samples == 2
    assert score.per_example["100"]["correct"] is True and score.per_example["101"]["correct"] is False


def test_threshold_is_a_constructor_parameter(tiny_refcoco):
    examples, _ = RefCOCO("refcoco").load(tiny_refcoco)
    # target [0.1, 0.1, 0.6, 0.6] (area 0.25): [0.1, 0.1, 0.4, 0.6] covers 0.15 -> IoU 0.6;
    # [0.1, 0.1, 0.3, 0.6] covers 0.1 -> IoU 0.4 (the exact boundary is tested in test_boxes.py)
    preds = {"100": "[0.1, 0.1, 0.4, 0.6]", "101": "[0.1, 0.1, 0.3, 0.6]"}
    assert RefCOCO("refcoco").score(examples, preds).columns["refcoco"] == 50.0
    assert RefCOCO("refcoco", iou_threshold=0.25).score(examples, preds).columns["refcoco"] == 100.0
    assert RefCOCO("refcoco", iou_threshold=0.7).score(examples, preds).columns["refcoco"] == 0.0


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="refcocog"):
        RefCOCO("refclef")
