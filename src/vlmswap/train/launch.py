"""How a training or evaluation job starts: the launcher prefix, the SLURM resources of the train
rule, and the rank / world / device each process reads from the environment torchrun gives it.

- no GPU (the mini study, CI): one process; DeepSpeed runs on its CPU accelerator with gloo;
- one node x N GPUs: `torchrun --standalone --nproc-per-node N`;
- several nodes: the job asks SLURM for `nodes` x `gpus_per_node` with one task per node
  (`mpi` resource: the jobstep then runs our shell on the batch host without wrapping it), and the
  shell starts `srun` with one torchrun per node, rendezvous on the first host
  (../shared/reference/snakemake.md sections 4.2-4.4; plugin >= 2.7.1).

Under SLURM a training also reads its job's end time (`squeue`), so that it can save resume state
and stop before the time limit kills it (`train.loop.TimeLimit`).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vlmswap.sections import JobResources

# the c10d store's port on the first node, one per job (below Linux's ephemeral ports): two
# multi-node jobs sharing a first node would otherwise meet in one store, and the second would join
# the first's rendezvous and die with it
RDZV_PORT = "$((20000+SLURM_JOB_ID%12000))"


def train_resources(spec: JobResources) -> dict[str, Any]:
    """Snakemake resources for the train rule, mapped by the SLURM plugin to sbatch flags."""
    nodes, gpus = spec.nodes, spec.gpus_per_node
    resources: dict[str, Any] = {
        "runtime": spec.runtime_min or 60,
        "mem_mb": (spec.mem_mb_per_gpu or 8000) * max(gpus, 1),
        "cpus_per_task": spec.threads_per_rank * max(gpus, 1),
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
    that runs Snakemake (so the rules need no activated environment). `cpus_per_gpu` (the threads
    each rank runs) sizes the srun step of a multi-node job."""
    nodes = int(spec.get("nodes", 1))
    gpus = int(spec.get("gpus_per_node", 0))
    cpus = int(spec.get("cpus_per_gpu", 0)) * gpus
    python = shlex.quote(python)
    torchrun = f"{python} -m torch.distributed.run"
    if gpus == 0 and nodes == 1:
        return f"{python} -m vlmswap.cli"
    if nodes == 1:
        return f"{torchrun} --standalone --nproc-per-node {gpus} -m vlmswap.cli"
    # the jobstep runs an `mpi` job's shell on the allocation's first node, with SLURM_* mostly
    # stripped (snakemake.md 4.3): that host is the rendezvous, named before srun fans out
    # and its SLURM_CPUS_* / SLURM_GPUS_* are gone, so the step asks for the node's CPUs and GPUs
    # itself (without, srun gives each task one CPU, shared by the node's ranks and their loaders)
    first_host = "$(hostname)"
    step = f"--gres=gpu:{gpus}" + (f" --cpus-per-task {cpus}" if cpus else "")
    return (
        f"srun --nodes {nodes} --ntasks-per-node 1 {step} --kill-on-bad-exit=1 "
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


def relaunch_command(argv: list[str], nodes: int, gpus_per_node: int, python: str = sys.executable,
                     cpus_per_gpu: int = 0) -> str | None:
    """The shell command that starts `vlmswap <argv>` on every rank of a `nodes` x `gpus_per_node`
    job, or None when this process should do the work itself (no GPU or one, or already a rank
    under torchrun). The rules call `vlmswap train|evaluate --nodes N --gpus G ...` and the command
    re-executes itself under this launcher, so no interpreter path or GPU count is part of a rule's
    shell text or params (moving the venv or changing the GPU count reruns nothing). The rule's
    OMP_NUM_THREADS is the CPUs of each GPU (`train_resources.cpus_per_gpu`)."""
    if "RANK" in os.environ or nodes * gpus_per_node <= 1:
        return None
    prefix = launcher({"nodes": nodes, "gpus_per_node": gpus_per_node, "cpus_per_gpu": cpus_per_gpu}, python)
    return f"{prefix} {' '.join(shlex.quote(a) for a in argv)}"


def relaunch_if_distributed(argv: list[str], nodes: int, gpus_per_node: int) -> None:
    """Replace this process by the distributed launch of the same command, when one is needed."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    command = relaunch_command(argv, nodes, gpus_per_node, cpus_per_gpu=int(threads) if threads.isdigit() else 0)
    if command is not None:
        sys.stdout.flush()
        os.execvp("bash", ["bash", "-c", command])


def slurm_job_end(job_id: str, run: Callable[..., Any] = subprocess.run) -> tuple[float, float] | str:
    """(end, limit) in epoch seconds / seconds of running SLURM job `job_id`, read with `squeue`
    (the jobstep keeps SLURM_JOB_ID but drops the other SLURM_* variables); otherwise why not."""
    try:  # the site's SLURM_TIME_FORMAT (relative, strftime) would change the times' format
        out = run(["squeue", "-h", "-j", job_id, "-o", "%S|%e"], capture_output=True, text=True, timeout=60,
                  env={**os.environ, "SLURM_TIME_FORMAT": "standard"})
    except (OSError, subprocess.SubprocessError) as e:
        return f"squeue failed: {e}"
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    if not lines:
        return f"squeue -j {job_id} answered {(out.stderr or out.stdout).strip()[:200]!r}"
    try:
        start, end = (time.mktime(time.strptime(v.strip(), "%Y-%m-%dT%H:%M:%S")) for v in lines[0].split("|"))
    except ValueError:
        return f"no time limit (squeue: {lines[0]!r})"
    return end, end - start


def time_limit_env(environ: Mapping[str, str], say: Callable[[str], None],
                   end_of: Callable[[str], tuple[float, float] | str] = slurm_job_end) -> dict[str, str]:
    """What a training's launcher adds to its ranks' environment under SLURM: VLMSWAP_TIME_LIMIT,
    "<end>,<limit seconds>" of the job (none outside SLURM: a local run has no time limit)."""
    job = environ.get("SLURM_JOB_ID")
    if not job or "RANK" in environ:
        return {}
    found = end_of(job)
    if isinstance(found, str):
        say(f"SLURM job {job}: {found}; the training will not stop by itself before a time limit")
        return {}
    end, limit = found
    say(f"SLURM job {job} ends at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(end))} "
        f"({limit / 60:.0f} min limit): resume state is saved and the training stops before then")
    return {"VLMSWAP_TIME_LIMIT": f"{end:.0f},{limit:.0f}"}


# -------------------------------------------------------------------------- inside each process


class TimeLimitReached(RuntimeError):
    """The job's time limit is near: resume state was saved, and a retry of the job continues from it."""


MAX_STOP_MARGIN_S = 600.0  # stop this long before the time limit (at most a tenth of the limit) ...
# ... or twice the longest save of resume state in this job plus two steps, whichever is longer


@dataclass
class TimeLimit:
    """The SLURM time limit of a training job: `deadline` (epoch seconds) and the whole limit. The
    loop stops at a step boundary once less than `margin()` is left, saves resume state and exits,
    so that Snakemake's retry (the profile's `retries`) continues instead of losing up to
    `recipe.checkpoint_every` steps to the kill."""

    deadline: float
    limit_s: float
    longest_step: float = 0.0
    longest_save: float = 0.0

    @classmethod
    def from_env(cls, value: str | None) -> "TimeLimit | None":
        """`VLMSWAP_TIME_LIMIT` ("<end, epoch seconds>,<limit seconds>"), which `vlmswap train` sets
        under SLURM from the job's end time (`launch.time_limit_env`); every rank inherits it."""
        if not value:
            return None
        end, limit = (float(v) for v in value.split(","))
        return cls(deadline=end, limit_s=limit)

    def margin(self) -> float:
        floor = min(MAX_STOP_MARGIN_S, 0.1 * self.limit_s)
        return max(floor, 2 * self.longest_save) + 2 * self.longest_step

    def near(self, now: float) -> bool:
        return self.deadline - now < self.margin()


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
