"""VizWiz val: prediction-only normalization, soft accuracy, unanswerable detection."""

import pytest
from .official_formats import vizwiz_record, write_vizwiz

from vlmswap.evaluate.records import AnnotationFileError, Example
from vlmswap.evaluate.vizwiz import VizWiz, normalize_vizwiz_prediction

PROMPT = ("{}\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
          "Answer the question using a single word or phrase.")


@pytest.mark.parametrize("raw,normalized", [
    ("Unanswerable", "unanswerable"),
    ("Unanswerable.", "unanswerable"),
    ("  unanswerable\n", "unanswerable"),
    ("Two.", "2"),
    ("the red one", "red 1"),
    ("T-shirt", "t shirt"),
    ("dont", "don`t"),        # the VizWiz map's backtick
    ("isnt", "isn`t"),
    ("cant", "can't"),        # one of the few it writes with an apostrophe
    ("weve", "we've"),
    ("don't", "don't"),       # already contracted: untouched
])
def test_prediction_normalization(raw, normalized):
    assert normalize_vizwiz_prediction(raw) == normalized


@pytest.fixture
def vizwiz_root(tmp_path):
    return write_vizwiz(tmp_path / "v", [
        vizwiz_record("VizWiz_val_00000000.jpg", "How many?", ["2"] * 10, 1),
        vizwiz_record("VizWiz_val_00000001.jpg", "What color?", ["Red"] * 10, 1),
        vizwiz_record("VizWiz_val_00000002.jpg", "What is this?", ["unanswerable"] * 10, 0),
        vizwiz_record("VizWiz_val_00000003.jpg", "What is that?", ["unanswerable"] * 6 + ["unsuitable"] * 4, 0),
    ])


def test_load_index_ids_and_prompt(vizwiz_root):
    examples, skipped = VizWiz().load(vizwiz_root)
    assert skipped == []
    by_id = {e.id: e for e in examples}
    assert sorted(by_id) == ["0", "1", "2", "3"]
    assert by_id["1"].prompt == PROMPT.format("What color?")
    assert by_id["1"].target == ["Red"] * 10
    assert by_id["2"].meta["answerable"] == 0
    assert by_id["0"].image == (vizwiz_root / "val" / "VizWiz_val_00000000.jpg").absolute()


def test_faults_are_skipped_and_missing_file_is_an_error(tmp_path):
    root = write_vizwiz(tmp_path / "v", [
        vizwiz_record("a.jpg", "q?", ["x"] * 10, 1),
        vizwiz_record("b.jpg", "q?", ["x"] * 10, 1),
        vizwiz_record("c.jpg", "q?", ["x"] * 9, 1),
        vizwiz_record("d.jpg", "q?", ["x"] * 10, 2),
        vizwiz_record("e.jpg", "", ["x"] * 10, 1),
    ], missing_images=("b.jpg",))
    examples, skipped = VizWiz().load(root)
    assert [e.id for e in examples] == ["0"]
    reasons = {s.id: (s.path, s.reason) for s in skipped}
    assert reasons["1"] == (str((root / "val" / "b.jpg").absolute()), "image file not found")
    assert reasons["2"][0] == str((root / "val.json").absolute()) and "10 answers" in reasons["2"][1]
    assert "answerable" in reasons["3"][1]
    assert "question" in reasons["4"][1]

    (root / "val.json").unlink()
    with pytest.raises(AnnotationFileError, match=r"val\.json"):
        VizWiz().load(root)


def test_score_overall_subsets_and_unanswerable_detection(vizwiz_root):
    examples, _ = VizWiz().load(vizwiz_root)
    preds = {"0": "Two.", "1": "red", "2": "Unanswerable.", "3": "blue"}
    score = VizWiz().score(examples, preds)
    # 1.0 (normalized "2"), 0.0 (ground truth "Red" is compared as written), 1.0, 0.0
    assert score.columns == {"vizwiz": 50.0}
    assert score.metrics["answerable"] == 50.0
    assert score.metrics["unanswerable"] == 50.0
    # gold unanswerable [F, F, T, T], said [F, F, T, F]: thresholds 1 (P 1, R 1/2), 0 (P 1/2, R 1)
    assert score.metrics["unanswerable_avg_precision"] == 75.0
    assert score.metrics["unanswerable_f1"] == 66.67  # tp 1, fp 0, fn 1
    assert score.per_example["2"]["says_unanswerable"] is True
    assert score.per_example["0"]["parsed"] == "2"
    assert score.n_samples == 4


def test_leave_one_out_credit_and_rounding():
    answers = ["yes"] * 2 + ["no"] * 8
    examples = [Example(str(i), None, "", answers, {"answerable": 1}) for i in range(3)]
    score = VizWiz().score(examples, {"0": "yes", "1": "no", "2": "maybe"})
    # "yes": 2 answers see 1 other yes (1/3), 8 see 2 (2/3) -> 0.6; "no": 1.0; "maybe": 0
    assert score.per_example["0"]["score"] == pytest.approx(0.6)
    assert score.columns["vizwiz"] == 53.33
    assert "unanswerable" not in score.metrics and "unanswerable_avg_precision" not in score.metrics
    assert score.metrics["unanswerable_f1"] == 0.0
