"""Step counts and the learning-rate schedule: Prismatic's, transformers' `get_cosine_schedule_with_warmup`.

Prismatic rounds the dataset up to a multiple of the global batch, so
`steps = ceil(N / global_batch) * epochs` and `warmup = int(steps * warmup_ratio)`; for the 665,298
records of LLaVA-v1.5 at batch 128 that is 5,198 steps with 155 warmup steps
(../shared/reference/prismatic_spec.md 1.2). The rate rises linearly to the peak and decays to 0
along a half cosine; the scheduler is transformers' own, so only the step counts are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    steps: int
    warmup: int

    def scheduler(self, optimizer):
        """The LambdaLR that Prismatic builds: linear warmup to the peak, half cosine to 0."""
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=self.warmup, num_training_steps=self.steps)


def schedule_for(n_examples: int, global_batch: int, epochs: float, warmup_ratio: float,
                 max_steps: int | None = None) -> Schedule:
    steps = math.ceil(math.ceil(n_examples / global_batch) * epochs)
    if max_steps:
        steps = max_steps
    return Schedule(steps=steps, warmup=int(steps * warmup_ratio))


def accumulation_steps(global_batch: int, per_device_batch: int, world_size: int) -> int:
    per_step = per_device_batch * world_size
    if global_batch % per_step:
        raise ValueError(
            f"global batch {global_batch} is not divisible by per-device batch {per_device_batch} x world size "
            f"{world_size}; change recipe.per_device_batch or the number of GPUs"
        )
    return global_batch // per_step
