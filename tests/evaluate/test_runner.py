"""The evaluation runner: index round trip, the result contract, resume from predictions, choices."""

import json
from pathlib import Path

import pytest
import torch

from vlmswap.evaluate.runner import evaluate_cell, prepare
from vlmswap.image import Geometry, preprocess


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
    full = evaluate_cell("c", FakeVLM(), Geometry(32, 32), tmp_path / "vqa.json", out, batch_size=5,
                         log=lambda m: None)
    n = full["n_samples"]
    assert n == 24 and full["benchmark"] == "vqa-v2" and 0 <= full["columns"]["vqa-v2"] <= 100
    assert full["n_skipped"] == 0 and (out.parent / full["predictions"]).exists()

    # an interrupted run: 10 predictions on disk and a torn last line
    lines = (out.parent / full["predictions"]).read_text().splitlines()
    (out.parent / full["predictions"]).write_text("\n".join(lines[:10]) + "\n" + lines[10][:7])
    out.unlink()
    vlm = FakeVLM()
    again = evaluate_cell("c", vlm, Geometry(32, 32), tmp_path / "vqa.json", out, batch_size=5, log=lambda m: None)
    assert vlm.asked == n - 10
    assert again["columns"] == full["columns"]
    assert len((out.parent / full["predictions"]).read_text().splitlines()) == n


def test_choice_benchmarks_store_probabilities(world, tmp_path):
    prepare("pope", world / "pope", "full", tmp_path / "pope.json", log=lambda m: None)
    result = evaluate_cell("c", FakeVLM(), Geometry(32, 32), tmp_path / "pope.json", tmp_path / "pope-result.json",
                           log=lambda m: None)
    first = json.loads((tmp_path / result["predictions"]).read_text().splitlines()[0])
    assert json.loads(first["prediction"]) == [0.7, 0.3]
    assert result["columns"]["pope"] == pytest.approx(50.0)  # always "Yes" on balanced splits


def _shard_worker(rank, world, port, index, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    evaluate_cell("c", FakeVLM(), Geometry(32, 32), index, out, batch_size=4, log=lambda m: None,
                  rank=rank, world=world)
    dist.destroy_process_group()


def test_two_shards_merge_into_the_single_process_result(world, tmp_path):
    import socket

    import torch.multiprocessing as mp

    prepare("refcoco", world / "refcoco", "full", tmp_path / "ref.json", log=lambda m: None)
    single = evaluate_cell("c", FakeVLM(), Geometry(32, 32), tmp_path / "ref.json", tmp_path / "one" / "r.json",
                           log=lambda m: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two" / "r.json"
    mp.spawn(_shard_worker, args=(2, port, tmp_path / "ref.json", out), nprocs=2, join=True)
    merged = json.loads(out.read_text())
    assert merged["columns"] == single["columns"] and merged["n_samples"] == single["n_samples"]
    lines = (out.parent / merged["predictions"]).read_text().splitlines()
    assert [json.loads(l)["id"] for l in lines] == [json.loads(l)["id"] for l in
                                                    (tmp_path / "one" / single["predictions"]).read_text().splitlines()]
    assert not list(out.parent.glob("*.rank*"))
