"""The evaluation runner: index round trip, the result contract, resume from predictions, choices."""

import json
from pathlib import Path

import pytest
import torch

from vlmswap.evaluate.runner import PredictionsFileError, evaluate_cell, prepare
from vlmswap.image import Geometry, preprocess
from vlmswap.provenance import predictions_record, sealed

MODEL = sealed({"kind": "model", "cell": "c", "spec": {"recipe": {"lr": 1e-3}}})


def record(index: Path, model=MODEL, weights="w" * 64, **settings) -> dict:
    """The provenance an evaluation of `index` by `model` would carry."""
    return predictions_record(model, weights, {"batch_size": 5, "max_new_tokens": 48, **settings}, index)


def prediction_rows(path: Path) -> list[dict]:
    """The prediction lines of a predictions file (after its provenance header)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "provenance" in lines[0]
    return lines[1:]


class FakeVLM:
    """Answers from a fixed table and counts what it was asked; the runner only needs this surface."""

    def __init__(self):
        # the backbone's own transform (letterbox fill + normalization), as VisionBackbone.pixels
        self.vision = type("V", (), {"pixels": staticmethod(lambda im, g: preprocess(im, g, (0.5,) * 3, (0.5,) * 3))})()
        self.head = torch.nn.Linear(1, 1)
        self.asked = 0

    def generate(self, pixels, prompts, max_new_tokens=128):
        self.asked += len(prompts)
        return ["yes" if "Is there" in p else "[0.25, 0.25, 0.75, 0.75]" if "bounding box" in p else "2"
                for p in prompts]

    def choice_probabilities(self, pixels, prompts, choices):
        self.asked += len(prompts)
        return torch.tensor([[0.7, 0.3]] * len(prompts))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmswap.data.mini_world import generate

    root = tmp_path_factory.mktemp("world")
    generate(root, seed=3, n_train=10, n_eval=12, n_classify=10, image_size=32, log=lambda m: None)
    return root


def test_result_contract_and_resume(world, tmp_path):
    prepare("vqa-v2", world / "vqa-v2", "full", tmp_path / "vqa.json", log=lambda m: None)
    out = tmp_path / "evals" / "vqa-v2.json"
    index = tmp_path / "vqa.json"
    full = evaluate_cell("c", FakeVLM(), Geometry(32, 32), index, out, record(index), batch_size=5,
                         log=lambda m: None)
    n = full["n_samples"]
    assert n == 24 and full["benchmark"] == "vqa-v2" and 0 <= full["columns"]["vqa-v2"] <= 100
    assert full["n_skipped"] == 0 and (out.parent / full["predictions"]).exists()
    assert full["provenance"]["model"] == MODEL["fingerprint"] and full["provenance"]["scorer"]
    assert "seconds" not in full  # a rerun of the same evaluation writes the same bytes

    # an interrupted run: header + 10 predictions on disk and a torn last line
    lines = (out.parent / full["predictions"]).read_text().splitlines()
    (out.parent / full["predictions"]).write_text("\n".join(lines[:11]) + "\n" + lines[11][:7])
    out.unlink()
    vlm = FakeVLM()
    again = evaluate_cell("c", vlm, Geometry(32, 32), index, out, record(index), batch_size=5, log=lambda m: None)
    assert vlm.asked == n - 10
    assert again == full
    assert len(prediction_rows(out.parent / full["predictions"])) == n


def test_predictions_of_another_model_are_moved_aside_not_resumed(world, tmp_path):
    """A retrained cell (new fingerprint) or replaced weights never reuse the old predictions."""
    index = tmp_path / "vqa.json"
    prepare("vqa-v2", world / "vqa-v2", "full", index, log=lambda m: None)
    out = tmp_path / "evals" / "vqa-v2.json"
    first = evaluate_cell("c", FakeVLM(), Geometry(32, 32), index, out, record(index), log=lambda m: None)
    n = first["n_samples"]
    retrained = sealed({**MODEL, "spec": {"recipe": {"lr": 2e-3}}})
    for changed in (record(index, model=retrained), record(index, weights="x" * 64), record(index, batch_size=3)):
        said: list[str] = []
        vlm = FakeVLM()
        result = evaluate_cell("c", vlm, Geometry(32, 32), index, out, changed, log=said.append)
        assert vlm.asked == n  # every example asked again
        assert result["provenance"]["predictions"] == changed["fingerprint"]
        aside = [m for m in said if "moved aside" in m]
        assert len(aside) == 1 and ("model" in aside[0] or "weights_sha256" in aside[0] or "eval.batch_size" in aside[0])
    assert len(list(out.parent.glob("vqa-v2.predictions.jsonl.stale-*"))) == 3  # kept, never deleted


def test_a_duplicate_id_in_predictions_is_an_error_naming_the_line(world, tmp_path):
    index = tmp_path / "vqa.json"
    prepare("vqa-v2", world / "vqa-v2", "full", index, log=lambda m: None)
    out = tmp_path / "evals" / "vqa-v2.json"
    evaluate_cell("c", FakeVLM(), Geometry(32, 32), index, out, record(index), log=lambda m: None)
    pred = out.parent / "vqa-v2.predictions.jsonl"
    lines = pred.read_text().splitlines()
    twin = json.loads(lines[3])
    lines.insert(5, json.dumps({"id": twin["id"], "prediction": "something else"}))
    pred.write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictionsFileError, match=r"predictions.jsonl:6: example id .* appears twice"):
        evaluate_cell("c", FakeVLM(), Geometry(32, 32), index, out, record(index), log=lambda m: None)


def test_choice_benchmarks_store_probabilities(world, tmp_path):
    prepare("pope", world / "pope", "full", tmp_path / "pope.json", log=lambda m: None)
    result = evaluate_cell("c", FakeVLM(), Geometry(32, 32), tmp_path / "pope.json", tmp_path / "pope-result.json",
                           record(tmp_path / "pope.json"), log=lambda m: None)
    first = prediction_rows(tmp_path / result["predictions"])[0]
    assert json.loads(first["prediction"]) == [0.7, 0.3]
    assert result["columns"]["pope"] == pytest.approx(50.0)  # always "Yes" on balanced splits


def _shard_worker(rank, world, port, index, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    evaluate_cell("c", FakeVLM(), Geometry(32, 32), index, out, record(index), batch_size=4, log=lambda m: None,
                  rank=rank, world=world)
    dist.destroy_process_group()


def test_two_shards_merge_into_the_single_process_result(world, tmp_path):
    import socket

    import torch.multiprocessing as mp

    prepare("refcoco", world / "refcoco", "full", tmp_path / "ref.json", log=lambda m: None)
    single = evaluate_cell("c", FakeVLM(), Geometry(32, 32), tmp_path / "ref.json", tmp_path / "one" / "r.json",
                           record(tmp_path / "ref.json"), log=lambda m: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two" / "r.json"
    mp.spawn(_shard_worker, args=(2, port, tmp_path / "ref.json", out), nprocs=2, join=True)
    merged = json.loads(out.read_text())
    assert merged == single  # same bytes whether sharded or not
    assert (out.parent / merged["predictions"]).read_text() == (tmp_path / "one" / single["predictions"]).read_text()
    assert not list(out.parent.glob("*.rank*"))
