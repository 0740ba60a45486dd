"""DeepSpeed ZeRO-3: the generated engine config and the process-group setup.

The same engine runs on a GPU cluster (NCCL, bf16) and on a laptop CPU (DeepSpeed's CPU
accelerator with gloo; ../shared/reference/cpu_feasibility.md section 2). On the CPU we avoid the
two first-use C++ builds that would cost minutes: the optimizer is torch's AdamW
(`torch_adam: true`, which is also what Prismatic uses) and the shared-memory allreduce op is not
built (it only speeds up CPU inference collectives). On a GPU the optimizer is DeepSpeed's fused Adam,
or torch's fused AdamW where DeepSpeed's op can be neither loaded nor built (`adam_settings`).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any, Mapping

import torch

from vlmswap.allocator import keep_freed_memory
from vlmswap.train.launch import distributed_env  # noqa: F401  (the process-group env, shared with evaluate)


def on_gpu() -> bool:
    return torch.cuda.is_available()


def init_deepspeed() -> Any:
    """Import DeepSpeed for this machine and initialise the process group."""
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        keep_freed_memory()  # activation buffers reuse pages instead of faulting in fresh ones each step
    import deepspeed

    if not on_gpu():
        comm_torch = importlib.import_module("deepspeed.comm.torch")
        comm_torch.build_shm_op = lambda: None  # skip the 1-2 min JIT build of an inference-only op
    rank, world, local_rank = distributed_env()
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo")
    if on_gpu():
        torch.cuda.set_device(local_rank)
    return deepspeed


def deepspeed_config(recipe: Mapping[str, Any], world_size: int, accumulation: int) -> dict[str, Any]:
    """The ZeRO-3 engine config generated from a cell's recipe."""
    bf16 = recipe.get("precision", "bf16") == "bf16"
    return {
        "train_micro_batch_size_per_gpu": int(recipe["per_device_batch"]),
        "gradient_accumulation_steps": int(accumulation),
        "train_batch_size": int(recipe["per_device_batch"]) * accumulation * world_size,
        "gradient_clipping": float(recipe["max_grad_norm"]),
        "bf16": {"enabled": bf16},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": on_gpu(),
            "contiguous_gradients": True,
            "reduce_bucket_size": 5e7,
            "stage3_prefetch_bucket_size": 5e7,
            "stage3_param_persistence_threshold": 1e5,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "optimizer": {
            "type": "AdamW",
            # DeepSpeed's fused (multi-tensor) Adam on a GPU, else torch's fused AdamW there; torch's
            # AdamW on the CPU, where DeepSpeed's op would be a ~1 min first-use C++ build
            # (cpu_feasibility.md section 1)
            "params": {"lr": float(recipe["lr"]), "betas": [0.9, 0.999], "eps": 1e-8,
                       "weight_decay": effective_weight_decay(recipe), "adam_w_mode": True, **adam_settings()},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def adam_settings() -> dict[str, Any]:
    """Which AdamW implementation the engine builds (the same update rule in each case).

    CPU: torch's AdamW. GPU: DeepSpeed's fused Adam, which is either prebuilt into the install or
    JIT-built on first use, and that build needs nvcc and ninja. A GPU node that lacks them (a pip
    CUDA runtime with no toolkit) would otherwise fail inside `deepspeed.initialize` with
    "CUDA_HOME does not exist". There the engine gets torch's fused AdamW instead (also one fused
    kernel for each step), and the reason is printed once on stderr.
    """
    if not on_gpu():
        return {"torch_adam": True}
    reason = fused_adam_unavailable()
    if reason is None:
        return {"torch_adam": False}
    _note_once(f"DeepSpeed's fused Adam is unavailable ({reason}); the optimizer is torch's fused AdamW")
    return {"torch_adam": True, "fused": True}


def optimizer_kind(engine) -> str:
    """The AdamW implementation a built engine steps with (`adam_settings` picks it per node)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return type(inner).__name__ + (" (fused)" if getattr(inner, "defaults", {}).get("fused") else "")


@functools.cache
def fused_adam_unavailable() -> str | None:
    """Why DeepSpeed's fused Adam op cannot be loaded here, or None when it can. The probe is the
    load itself (prebuilt, or JIT-built now: the build `deepspeed.initialize` would run anyway, and
    DeepSpeed keeps the loaded op for it), so a toolkit, ninja or version mismatch all show here."""
    try:
        from deepspeed.ops.op_builder import FusedAdamBuilder

        FusedAdamBuilder().load(verbose=False)
    except Exception as error:  # MissingCUDAException, "ninja not installed", a failed nvcc build, ...
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


@functools.cache
def _note_once(message: str) -> None:
    print(f"vlmswap.train: {message}", file=sys.stderr, flush=True)


WEIGHT_DECAY_TARGETS = ("none", "matrices")


def effective_weight_decay(recipe: Mapping[str, Any]) -> float:
    """The decay the matrices get: `weight_decay` when `weight_decay_applied_to` is `matrices`, else 0.

    `none` reproduces what Prismatic ran: its FSDP strategy groups parameters after wrapping with
    `use_orig_params=True`, where each one is a flat 1-D shard, so its `ndim <= 1` test puts them
    all in the no-decay group and the configured 0.1 never applies (prismatic/training/strategies/
    fsdp.py; run by scripts/reference/prismatic_fsdp_decay.py, output in
    tests/fixtures/prismatic/fsdp_decay.txt).
    """
    target = recipe.get("weight_decay_applied_to")
    if target not in WEIGHT_DECAY_TARGETS:
        raise ValueError(f"recipe.weight_decay_applied_to is {target!r}; set it to 'none' (what Prismatic's "
                         f"FSDP run applied) or 'matrices' (weight_decay on every >= 2-D non-bias parameter)")
    return float(recipe["weight_decay"]) if target == "matrices" else 0.0


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Prismatic's two groups: no decay for biases and 1-D parameters, `weight_decay` otherwise
    (pass `effective_weight_decay(recipe)`)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitioned params report shape (0,)
        (no_decay if ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
