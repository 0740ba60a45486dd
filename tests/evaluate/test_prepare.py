"""Preparing a benchmark index: the files it is derived from, portable paths, every image decoded,
bad records named and counted, nothing half-written."""

import errno
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlmswap.evaluate import BENCHMARKS
from vlmswap.evaluate.records import AnnotationFileError
from vlmswap.evaluate.runner import evaluate_cell, prepare, read_index
from vlmswap.image import Geometry, preprocess
from vlmswap.provenance import predictions_record, sealed

FOLDER = {"refcoco+": "refcoco", "refcocog": "refcoco"}  # as workflow/rules/common.smk data_folder


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmswap.data.mini_world import generate

    root = tmp_path_factory.mktemp("world")
    generate(root, seed=5, n_train=10, n_eval=12, n_classify=10, image_size=32, log=quiet)
    return root


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_the_listed_annotation_files_are_what_the_index_is_read_from(name, world, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(world / FOLDER.get(name, name), root)
    benchmark = BENCHMARKS[name]
    present = [f for f in benchmark.annotation_files if (root / f).is_file()]
    assert present, f"{name}: none of {benchmark.annotation_files} is in the mini world"
    def outcome():
        try:
            examples, skipped = benchmark.load(root)
        except (AnnotationFileError, ValueError) as e:
            return str(e)
        return [e.id for e in examples], [(s.id, s.reason) for s in skipped]

    before = outcome()
    assert before[0]
    for f in present:  # each listed file is one the index depends on
        saved = (root / f).read_bytes()
        (root / f).write_bytes(b"\x00 not the official format")
        assert outcome() != before, f
        (root / f).write_bytes(saved)


class ImageMeanVLM:
    """Answers every VQA question with the rounded mean brightness of its image: the result changes
    exactly when the pixels the runner reads change."""

    def __init__(self):
        import torch

        self.vision = type("V", (), {"pixels": staticmethod(lambda im, g: preprocess(im, g, (0.0,) * 3, (1.0,) * 3))})()
        self.head = torch.nn.Linear(1, 1)

    def generate(self, pixels, prompts, max_new_tokens=128):
        return [str(round(float(p.mean()) * 10)) for p in pixels]


def test_a_copied_study_evaluates_its_own_images(world, tmp_path):
    # a study laid out as the workflow lays it out: resources/<study>/{world,prepared}
    study = tmp_path / "original" / "resources" / "mini"
    shutil.copytree(world / "vqa-v2", study / "world" / "vqa-v2")
    index = study / "prepared" / "vqa-v2.json"
    prepare("vqa-v2", study / "world" / "vqa-v2", "full", index, log=quiet)
    stored = json.loads(index.read_text())
    assert stored["root"] == "../world/vqa-v2"
    assert all(not Path(e["image"]).is_absolute() for e in stored["examples"])

    copy = tmp_path / "copy" / "resources" / "mini"
    shutil.copytree(study, copy)
    _, _, examples, _ = read_index(copy / "prepared" / "vqa-v2.json")
    assert all(copy in e.image.absolute().parents for e in examples)
    first = examples[0]
    on_it = {e.id for e in examples if e.image == first.image}  # every question on that image
    Image.new("RGB", Image.open(first.image).size, (255, 255, 255)).save(first.image, format="JPEG")

    results = {}
    for name, root in (("original", study), ("copy", copy)):
        out = root.parent.parent / "results" / "vqa-v2.json"
        index = root / "prepared" / "vqa-v2.json"
        record = predictions_record(sealed({"kind": "model"}), "w" * 64, {"batch_size": 16}, index)
        evaluate_cell("c", ImageMeanVLM(), Geometry(32, 32), index, out, record, log=quiet)
        lines = out.with_name("vqa-v2.predictions.jsonl").read_text().splitlines()[1:]  # after the provenance
        results[name] = {json.loads(line)["id"]: json.loads(line)["prediction"] for line in lines}
    for i in on_it:  # the copy's own white image
        assert results["copy"][i] == "10" != results["original"][i]
    assert {k: v for k, v in results["copy"].items() if k not in on_it} == \
           {k: v for k, v in results["original"].items() if k not in on_it}


def test_an_index_outside_the_study_keeps_absolute_paths(world, tmp_path):
    index = tmp_path / "elsewhere" / "deep" / "vqa.json"
    prepare("vqa-v2", world / "vqa-v2", "full", index, log=quiet)
    assert json.loads(index.read_text())["root"] == str((world / "vqa-v2").absolute())
    _, _, examples, _ = read_index(index)
    assert examples[0].image.is_file()


def test_an_image_that_does_not_decode_is_skipped_named_and_counted(world, tmp_path):
    root = tmp_path / "vqa-v2"
    shutil.copytree(world / "vqa-v2", root)
    examples, _ = BENCHMARKS["vqa-v2"].load(root)
    broken = examples[0].image
    sharing = [e.id for e in examples if e.image == broken]  # every question on that image
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG
    lines = []
    summary = prepare("vqa-v2", root, "full", tmp_path / "vqa.json", log=lines.append)
    assert summary["n_undecodable"] == len(sharing) and summary["n_examples"] == len(examples) - len(sharing)
    _, _, kept, skipped = read_index(tmp_path / "vqa.json")
    assert {s.id for s in skipped} == set(sharing) and all(s.path == str(broken) for s in skipped)
    assert all("does not decode" in s.reason for s in skipped)
    assert any(sharing[0] in line and str(broken) in line for line in lines)
    assert len(kept) == len(examples) - len(sharing)


def test_an_annotation_missing_a_field_is_skipped_with_its_id_and_file(world, tmp_path):
    root = tmp_path / "vqa-v2"
    shutil.copytree(world / "vqa-v2", root)
    annotations_file = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(annotations_file.read_text())
    victim = data["annotations"][3]
    del victim["answer_type"]
    annotations_file.write_text(json.dumps(data))
    lines = []
    summary = prepare("vqa-v2", root, "full", tmp_path / "vqa.json", log=lines.append)
    _, _, _, skipped = read_index(tmp_path / "vqa.json")
    assert [(s.id, Path(s.path).name) for s in skipped] == [(str(victim["question_id"]),
                                                             "v2_mscoco_val2014_annotations.json")]
    assert "answer_type" in skipped[0].reason and summary["n_skipped"] == 1
    assert any(str(victim["question_id"]) in line and "answer_type" in line for line in lines)


def test_a_full_disk_leaves_the_previous_index_and_no_partial_file(world, tmp_path, monkeypatch, capsys):
    from vlmswap import atomic
    from vlmswap.cli import main

    out = tmp_path / "prepared" / "vqa-v2.json"
    out.parent.mkdir()
    out.write_text('{"previous": true}')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(SystemExit) as exit_:
        main(["prepare-benchmark", "--config", "config/mini.yaml", "--benchmark", "vqa-v2",
              "--root", str(world / "vqa-v2"), "--out", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "No space left on device" in err and str(out) in err
    assert out.read_text() == '{"previous": true}'
    assert [p.name for p in out.parent.iterdir()] == ["vqa-v2.json"]  # no temporary file left


def test_a_read_only_results_folder_is_one_line(world, tmp_path, monkeypatch, capsys):
    from vlmswap import atomic
    from vlmswap.cli import main

    out = tmp_path / "results" / "vqa-v2.json"
    real_mkstemp = atomic.tempfile.mkstemp

    def read_only(*args, **kwargs):  # as mkstemp fails in a folder without write permission
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(kwargs["dir"]) / ".vqa-v2.json.tmp-x"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit) as exit_:
        main(["prepare-benchmark", "--config", "config/mini.yaml", "--benchmark", "vqa-v2",
              "--root", str(world / "vqa-v2"), "--out", str(out)])
    assert exit_.value.code == 1 and real_mkstemp is not None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and str(out) in err
    assert not out.exists()
