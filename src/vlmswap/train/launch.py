"""How a training or evaluation job starts: the launcher prefix, the SLURM resources of the train
rule, and the rank / world / device each process reads from the environment torchrun gives it.

- no GPU (the mini study, CI): one process; DeepSpeed runs on its CPU accelerator with gloo;
- one node x N GPUs: `torchrun --standalone --nproc-per-node N`;
- several nodes: the job asks SLURM for `nodes` x `gpus_per_node` with one task per node
  (`mpi` resource: the jobstep then runs our shell on the batch host without wrapping it), and the
  shell starts `srun` with one torchrun per node, rendezvous on the first host
  (../shared/reference/snakemake.md sections 4.2-4.4; plugin >= 2.7.1).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from typing import Any, Mapping

from vlmswap.sections import JobResources

RDZV_PORT = 29500


def train_resources(spec: JobResources) -> dict[str, Any]:
    """Snakemake resources for the train rule, mapped by the SLURM plugin to sbatch flags."""
    nodes, gpus = spec.nodes, spec.gpus_per_node
    resources: dict[str, Any] = {
        "runtime": spec.runtime_min or 60,
        "mem_mb": (spec.mem_mb_per_gpu or 8000) * max(gpus, 1),
        "cpus_per_task": (spec.cpus_per_gpu or 8) * max(gpus, 1),
        "nodes": nodes,
    }
    if spec.partition:
        resources["slurm_partition"] = spec.partition
    if nodes > 1:
        # one task per node; per-node GPUs through gres (--gpus would be a per-job total that
        # SLURM may split unevenly); tasks_per_gpu=0 stops the plugin adding --ntasks-per-gpu
        resources.update(mpi="srun", tasks=nodes, tasks_per_gpu=0, gres=f"gpu:{gpus}", train_gpus=nodes * gpus)
    elif gpus:
        resources.update(gpu=gpus, train_gpus=gpus)
    else:
        resources["train_gpus"] = 0
    return resources


def launcher(spec: Mapping[str, Any], python: str = sys.executable) -> str:
    """The command prefix that starts `python -m vlmswap.cli` on every rank, with the interpreter
    that runs Snakemake (so the rules need no activated environment)."""
    nodes = int(spec.get("nodes", 1))
    gpus = int(spec.get("gpus_per_node", 0))
    python = shlex.quote(python)
    torchrun = f"{python} -m torch.distributed.run"
    if gpus == 0 and nodes == 1:
        return f"{python} -m vlmswap.cli"
    if nodes == 1:
        return f"{torchrun} --standalone --nproc-per-node {gpus} -m vlmswap.cli"
    # the jobstep runs an `mpi` job's shell on the allocation's first node, with SLURM_* mostly
    # stripped (snakemake.md 4.3): that host is the rendezvous, named before srun fans out
    first_host = "$(hostname)"
    return (
        f"srun --nodes {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
        f"{torchrun} --nnodes {nodes} --nproc-per-node {gpus} --rdzv-backend c10d "
        f"--rdzv-endpoint {first_host}:{RDZV_PORT} --rdzv-id \"$SLURM_JOB_ID\" -m vlmswap.cli"
    )


def job_environment(config_file: str) -> None:
    """What every job's shell inherits from the workflow: `vlmswap` of the environment running
    Snakemake first on PATH (a rule's conda env, under `--sdm conda`, goes before it), and the
    study config in VLMSWAP_CONFIG (the CLI's default for `--config`). Set in the Snakefile's
    process, so it holds for local jobs and for every SLURM jobstep (which parses the Snakefile)."""
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    os.environ["VLMSWAP_CONFIG"] = os.path.abspath(config_file)


def relaunch_command(argv: list[str], nodes: int, gpus_per_node: int, python: str = sys.executable) -> str | None:
    """The shell command that starts `vlmswap <argv>` on every rank of a `nodes` x `gpus_per_node`
    job, or None when this process should do the work itself (no GPU or one, or already a rank
    under torchrun). The rules call `vlmswap train|evaluate --nodes N --gpus G ...` and the command
    re-executes itself under this launcher, so no interpreter path or GPU count is part of a rule's
    shell text or params (moving the venv or changing the GPU count reruns nothing)."""
    if "RANK" in os.environ or nodes * gpus_per_node <= 1:
        return None
    prefix = launcher({"nodes": nodes, "gpus_per_node": gpus_per_node}, python)
    return f"{prefix} {' '.join(shlex.quote(a) for a in argv)}"


def relaunch_if_distributed(argv: list[str], nodes: int, gpus_per_node: int) -> None:
    """Replace this process by the distributed launch of the same command, when one is needed."""
    command = relaunch_command(argv, nodes, gpus_per_node)
    if command is not None:
        sys.stdout.flush()
        os.execvp("bash", ["bash", "-c", command])


# -------------------------------------------------------------------------- inside each process


def ranks_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; a plain launch is rank 0 of a world of one."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def distributed_env() -> tuple[int, int, int]:
    """Training: (rank, world_size, local_rank). A plain `python` launch becomes a world of one:
    DeepSpeed would otherwise try MPI discovery when RANK/WORLD_SIZE/... are missing."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    return ranks_from_env()


def evaluation_env() -> tuple[int, int, str, Any]:
    """Evaluation: (rank, world_size, device, dtype). Under torchrun each process evaluates a shard
    and joins the process group here (NCCL on GPUs, gloo otherwise); one process needs no group."""
    import torch

    rank, world, local_rank = ranks_from_env()
    if world > 1 and torch.cuda.is_available():
        # each rank on its own GPU before NCCL starts, so that no rank's collectives or allocations
        # land on GPU 0 (without device_id torch guesses the device at the first barrier)
        torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    elif world > 1:
        torch.distributed.init_process_group("gloo")
    from vlmswap.vlm import inference_placement

    return rank, world, *inference_placement(local_rank)
