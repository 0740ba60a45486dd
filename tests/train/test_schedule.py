"""Schedule, batch order and launcher: the recipe's arithmetic, fixed on CPU."""

import math
from pathlib import Path

import pytest
import torch

from vlmswap.data.instruct import micro_batches, split_modality_batches
from vlmswap.train.engine import deepspeed_config, effective_weight_decay, parameter_groups
from vlmswap.sections import JobResources
from vlmswap.train.launch import launcher, train_resources
from vlmswap.train.schedule import accumulation_steps, schedule_for


def test_prismatic_step_counts_for_the_665k_mixture():
    s = schedule_for(665_298, 128, 1, 0.03)
    assert (s.steps, s.warmup) == (5198, 155)


def test_warmup_then_cosine_to_zero_as_prismatic_computes_it():
    s = schedule_for(1000, 10, 1, 0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = s.scheduler(optimizer)
    factors = []
    for _ in range(101):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # the closed form Prismatic's recipe states: linear warmup, then 0.5 * (1 + cos(pi * progress))
    expected = [step / 10 if step < 10 else max(0.0, 0.5 * (1 + math.cos(math.pi * (step - 10) / 90)))
                for step in range(101)]
    assert factors == pytest.approx(expected, abs=1e-12)
    assert factors[0] == 0 and factors[5] == pytest.approx(0.5) and factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5) and factors[99] < 1e-3 and factors[100] == pytest.approx(0.0)


def test_accumulation_derived_from_world_size():
    assert accumulation_steps(128, 16, 8) == 1
    assert accumulation_steps(128, 16, 4) == 2
    with pytest.raises(ValueError, match="not divisible"):
        accumulation_steps(128, 16, 3)


def test_batches_are_single_modality_length_grouped_and_seed_fixed():
    lengths = [i % 37 for i in range(100)]
    multimodal = [i % 5 != 0 for i in range(100)]
    batches = split_modality_batches(lengths, multimodal, 8, seed=7)
    assert batches == split_modality_batches(lengths, multimodal, 8, seed=7)
    assert batches != split_modality_batches(lengths, multimodal, 8, seed=8)
    for b in batches:
        assert len(b) == 8 and len({multimodal[i] for i in b}) == 1
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    longest = max(lengths)
    assert longest in [lengths[i] for i in batches[0]]
    covered = {i for b in batches for i in b}
    assert covered == set(range(100))  # short last batches are padded, nothing dropped


def test_a_modality_smaller_than_one_batch_is_repeated_to_fill_it():
    multimodal = [True] * 37 + [False] * 3  # 3 language-only records, global batch 16
    batches = split_modality_batches([5] * 40, multimodal, 16, seed=0)
    assert all(len(b) == 16 for b in batches)
    (language,) = [b for b in batches if not multimodal[b[0]]]
    assert set(language) == {37, 38, 39}


def test_micro_batches_give_each_rank_its_contiguous_block():
    gb = list(range(16))  # as split_modality_batches lays it out: rank 0's block, then rank 1's
    assert micro_batches(gb, world_size=2, rank=0, per_device=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert micro_batches(gb, world_size=2, rank=1, per_device=4) == [[8, 9, 10, 11], [12, 13, 14, 15]]
    with pytest.raises(ValueError, match="multiple of world size"):
        micro_batches(list(range(12)), world_size=2, rank=0, per_device=4)


def test_deepspeed_config_is_zero3_with_the_recipe():
    recipe = {"per_device_batch": 16, "max_grad_norm": 1.0, "precision": "bf16", "lr": 2e-5, "weight_decay": 0.1,
              "weight_decay_applied_to": "matrices"}
    cfg = deepspeed_config(recipe, world_size=4, accumulation=2)
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["train_batch_size"] == 128 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["bf16"]["enabled"] and cfg["gradient_clipping"] == 1.0
    assert cfg["optimizer"]["params"]["weight_decay"] == 0.1 and cfg["optimizer"]["params"]["torch_adam"]
    as_run = deepspeed_config({**recipe, "weight_decay_applied_to": "none"}, world_size=4, accumulation=2)
    assert as_run["optimizer"]["params"]["weight_decay"] == 0.0


def test_weight_decay_reaches_matrices_only_when_asked():
    # Prismatic's FSDP run decayed nothing (tests/fixtures/prismatic/fsdp_decay.txt): `none` reproduces it
    fixture = (Path(__file__).parents[1] / "fixtures/prismatic/fsdp_decay.txt").read_text()
    assert "elements under weight decay > 0 on any rank: 0" in fixture and "decay group 18 tensors" in fixture
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    recipe = {"weight_decay": 0.1}
    as_run = parameter_groups(module, effective_weight_decay({**recipe, "weight_decay_applied_to": "none"}))
    assert [g["weight_decay"] for g in as_run] == [0.0, 0.0]
    intended = parameter_groups(module, effective_weight_decay({**recipe, "weight_decay_applied_to": "matrices"}))
    assert [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in intended] == [
        (0.1, [(4, 4)]), (0.0, [(4,), (4,), (4,)])]
    with pytest.raises(ValueError, match="weight_decay_applied_to.*'none'"):
        effective_weight_decay(recipe)


def test_launchers_for_cpu_one_node_and_two_nodes():
    assert launcher({"gpus_per_node": 0}, python="py") == "py -m vlmswap.cli"
    assert launcher({"gpus_per_node": 4}, python="py").startswith(
        "py -m torch.distributed.run --standalone --nproc-per-node 4")
    multi = launcher({"nodes": 2, "gpus_per_node": 4}, python="py")
    assert multi.startswith("srun --nodes 2 --ntasks-per-node 1") and "--nnodes 2 --nproc-per-node 4" in multi
    one = train_resources(JobResources(nodes=1, gpus_per_node=4, cpus_per_gpu=8, mem_mb_per_gpu=64000))
    assert one["gpu"] == 4 and one["cpus_per_task"] == 32 and one["mem_mb"] == 256000 and "mpi" not in one
    two = train_resources(JobResources(nodes=2, gpus_per_node=4))
    assert two["mpi"] == "srun" and two["tasks"] == 2 and two["tasks_per_gpu"] == 0 and two["gres"] == "gpu:4"
    assert "gpu" not in two  # a per-job --gpus total could be split unevenly across nodes
