"""How `vlmswap train|evaluate --nodes N --gpus G` starts its ranks: itself, torchrun on one node,
or srun + torchrun across nodes; and the environment the workflow hands every job."""

import os
import subprocess
import sys
import time

import pytest

from vlmswap.cli import _launch_args
from vlmswap.train.launch import TimeLimit, job_environment, relaunch_command, slurm_job_end, time_limit_env

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
    assert command.startswith("srun --nodes 2 --ntasks-per-node 1 --gres=gpu:4 --kill-on-bad-exit=1 /env/bin/python -m "
                              "torch.distributed.run --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d")
    assert command.endswith("-m vlmswap.cli train --cell vit-s@in1k@224@block-2@mlp2 --out 'results/x y'")


def test_each_node_step_asks_for_its_gpus_and_cpus_and_a_rendezvous_port_of_its_own(monkeypatch):
    """The jobstep drops SLURM_CPUS_*/SLURM_GPUS_* before running an `mpi` job's shell, so an srun
    without these flags would give each node's torchrun one CPU; the port follows the job id."""
    monkeypatch.delenv("RANK", raising=False)
    command = relaunch_command(ARGV, nodes=2, gpus_per_node=4, python="/env/bin/python", cpus_per_gpu=8)
    assert "srun --nodes 2 --ntasks-per-node 1 --gres=gpu:4 --cpus-per-task 32 --kill-on-bad-exit=1" in command
    endpoint = command.split("--rdzv-endpoint ")[1].split()[0]
    for job, port in (("1234567", 20000 + 1234567 % 12000), ("7", 20007)):
        shown = subprocess.run(["bash", "-c", f"echo {endpoint}"], env={**os.environ, "SLURM_JOB_ID": job},
                               capture_output=True, text=True, check=True).stdout.strip()
        assert shown.endswith(f":{port}") and 20000 <= port < 32768  # below Linux's ephemeral ports


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


class _Answer:
    def __init__(self, stdout: str, returncode: int = 0, stderr: str = ""):
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr


def test_the_job_end_is_read_from_squeue_and_handed_to_every_rank():
    calls = []

    def squeue(cmd, **kwargs):
        calls.append(cmd)
        assert kwargs["env"]["SLURM_TIME_FORMAT"] == "standard"  # whatever the site sets
        return _Answer("2026-12-03T08:00:00|2026-12-04T08:00:00\n")

    assert slurm_job_end("42", run=squeue) == (time.mktime(time.strptime("2026-12-04T08:00:00", "%Y-%m-%dT%H:%M:%S")),
                                               86400.0)
    assert calls == [["squeue", "-h", "-j", "42", "-o", "%S|%e"]]
    said = []
    env = time_limit_env({"SLURM_JOB_ID": "42"}, said.append, end_of=lambda job: (1.0e9 + 3600, 3600.0))
    assert env == {"VLMSWAP_TIME_LIMIT": f"{1.0e9 + 3600:.0f},3600"}
    assert "SLURM job 42 ends at" in said[0] and "60 min limit" in said[0]
    limit = TimeLimit.from_env(env["VLMSWAP_TIME_LIMIT"])
    assert (limit.deadline, limit.limit_s) == (1.0e9 + 3600, 3600.0)


def test_no_time_limit_outside_slurm_nor_again_inside_a_rank():
    said = []
    assert time_limit_env({}, said.append, end_of=lambda job: pytest.fail("no squeue outside SLURM")) == {}
    assert time_limit_env({"SLURM_JOB_ID": "42", "RANK": "1"}, said.append,
                          end_of=lambda job: pytest.fail("the launcher already read it")) == {}
    assert said == []


@pytest.mark.parametrize("answer, why", [
    (_Answer("2026-12-03T08:00:00|Unknown\n"), "no time limit"),
    (_Answer("", 1, "slurm_load_jobs error: Invalid job id specified"), "Invalid job id"),
])
def test_a_job_end_squeue_cannot_give_is_said_and_the_training_runs_on(answer, why):
    found = slurm_job_end("42", run=lambda cmd, **kw: answer)
    assert isinstance(found, str) and why in found
    said = []
    assert time_limit_env({"SLURM_JOB_ID": "42"}, said.append, end_of=lambda job: found) == {}
    assert "will not stop by itself before a time limit" in said[0]

    def missing(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory", "squeue")

    assert "squeue failed" in slurm_job_end("42", run=missing)


def test_the_loop_stops_a_margin_before_the_deadline_that_grows_with_its_saves_and_steps():
    day = TimeLimit(deadline=100_000.0, limit_s=86_400.0)
    assert day.margin() == 600.0  # ten minutes of a day's limit
    assert not day.near(100_000.0 - 601) and day.near(100_000.0 - 599)
    day.longest_save, day.longest_step = 420.0, 12.0  # a 7B save: twice that, plus two steps
    assert day.margin() == 2 * 420.0 + 2 * 12.0
    short = TimeLimit(deadline=1_000.0, limit_s=1_800.0)
    assert short.margin() == 180.0  # a tenth of a short limit, not ten minutes of its thirty


def test_a_rank_threads_are_the_cpus_its_job_asks_for_per_gpu():
    """The rule's OMP_NUM_THREADS (and so a multi-node step's --cpus-per-task) and the sbatch request
    agree when cpus_per_gpu is not set (2 threads of 8 CPUs before)."""
    from vlmswap.sections import JobResources
    from vlmswap.train.launch import train_resources

    for spec in (JobResources(nodes=2, gpus_per_node=4), JobResources(gpus_per_node=4, cpus_per_gpu=6), JobResources()):
        assert train_resources(spec)["cpus_per_task"] == spec.threads_per_rank * max(spec.gpus_per_node, 1)
    assert JobResources(nodes=2, gpus_per_node=4).threads_per_rank == 8 and JobResources().threads_per_rank == 2
