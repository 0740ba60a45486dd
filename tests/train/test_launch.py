"""How `vlmswap train|evaluate --nodes N --gpus G` starts its ranks: itself, torchrun on one node,
or srun + torchrun across nodes; and the environment the workflow hands every job."""

import os
import sys

from vlmswap.cli import _launch_args
from vlmswap.train.launch import job_environment, relaunch_command

ARGV = ["train", "--cell", "vit-s@in1k@224@block-2@mlp2", "--out", "results/x y"]


def test_one_process_when_there_is_no_second_gpu(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert relaunch_command(ARGV, nodes=1, gpus_per_node=0) is None
    assert relaunch_command(ARGV, nodes=1, gpus_per_node=1) is None


def test_torchrun_on_one_node_with_the_same_arguments(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    command = relaunch_command(ARGV, nodes=1, gpus_per_node=4, python="/env/bin/python")
    assert command == ("/env/bin/python -m torch.distributed.run --standalone --nproc-per-node 4 -m vlmswap.cli "
                       "train --cell vit-s@in1k@224@block-2@mlp2 --out 'results/x y'")


def test_srun_with_one_torchrun_per_node_across_nodes(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    command = relaunch_command(ARGV, nodes=2, gpus_per_node=4, python="/env/bin/python")
    assert command.startswith("srun --nodes 2 --ntasks-per-node 1 --kill-on-bad-exit=1 /env/bin/python -m "
                              "torch.distributed.run --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d")
    assert command.endswith("-m vlmswap.cli train --cell vit-s@in1k@224@block-2@mlp2 --out 'results/x y'")


def test_a_rank_never_launches_again(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert relaunch_command(ARGV, nodes=2, gpus_per_node=4) is None


def test_the_launch_flags_are_dropped_from_what_each_rank_runs():
    assert _launch_args(["train", "--nodes", "2", "--gpus", "8", "--cell", "c"]) == ["train", "--cell", "c"]
    assert _launch_args(["evaluate", "--gpus=2", "--cell", "c"]) == ["evaluate", "--cell", "c"]


def test_jobs_find_vlmswap_of_this_environment_and_the_config(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.delenv("VLMSWAP_CONFIG", raising=False)  # restored after the test
    config = tmp_path / "study.yaml"
    job_environment(str(config))
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert os.environ["VLMSWAP_CONFIG"] == str(config)
    assert os.path.exists(os.path.join(os.path.dirname(sys.executable), "vlmswap"))
