"""The typed sections of a study config: recipe, objectives, LLM, instruction set, benchmarks, mini
world, evaluation settings and job resources.

vlmswap.study parses each section once, right after the schema check, into the frozen records
below; the CLI, the training loop and the Snakemake rules read attributes, not `study.raw[...]`.
A value the schema lets through but no job could use fails here, naming the config file, the key
and the fix (ConfigError, as every other config error).

Sources (`source:`, `files:`) stay the mappings the config wrote: they are handed as they are to
the downloader, and the provenance records hash them byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A study config that cannot be used; the message names file, key path and the fix."""

    def __init__(self, file: str | Path, key_path: str, problem: str, allowed: Any = None):
        self.file, self.key_path, self.problem, self.allowed = str(file), key_path, problem, allowed
        message = f"{file}: {key_path or '<top level>'}: {problem}"
        if allowed is not None:
            if isinstance(allowed, (list, tuple, set, frozenset)):
                allowed = ", ".join(sorted(str(a) for a in allowed))
            message += f" (allowed: {allowed})"
        super().__init__(message)


# recipe keys every cell needs; the others have the defaults of Recipe
RECIPE_REQUIRED = ("epochs", "global_batch", "per_device_batch", "lr", "weight_decay", "max_grad_norm",
                   "warmup_ratio", "max_length", "seed")


@dataclass(frozen=True)
class Recipe:
    """The training recipe of one cell (the study's `recipe` with the cell's overrides applied)."""

    epochs: float
    global_batch: int
    per_device_batch: int
    lr: float
    weight_decay: float
    weight_decay_applied_to: str  # "none" (what Prismatic's FSDP run applied) or "matrices"
    max_grad_norm: float
    warmup_ratio: float
    max_length: int
    seed: int
    max_steps: int | None = None
    precision: str = "bf16"
    grad_checkpointing: bool = True
    checkpoint_every: int = 500  # optimizer steps between two saves of the resume state
    cache_features: bool = False  # keep the frozen tower's features per example for later epochs
    # the merged mapping as the config wrote it: train.json and the provenance records keep it
    # exactly (a default made explicit there would change every cell's fingerprint)
    written: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, merged: Mapping[str, Any], file: str | Path, key: str) -> "Recipe":
        missing = [k for k in RECIPE_REQUIRED if k not in merged]
        if missing:
            raise ConfigError(file, f"{key}.{missing[0]}", f"the recipe has no {missing[0]!r}; add it to `recipe:` "
                              "(or to this cell's `recipe:` override)", RECIPE_REQUIRED)
        return cls(
            epochs=float(merged["epochs"]), global_batch=int(merged["global_batch"]),
            per_device_batch=int(merged["per_device_batch"]), lr=float(merged["lr"]),
            weight_decay=float(merged["weight_decay"]),
            weight_decay_applied_to=str(merged.get("weight_decay_applied_to")),
            max_grad_norm=float(merged["max_grad_norm"]), warmup_ratio=float(merged["warmup_ratio"]),
            max_length=int(merged["max_length"]), seed=int(merged["seed"]),
            max_steps=None if merged.get("max_steps") is None else int(merged["max_steps"]),
            precision=str(merged.get("precision", "bf16")),
            grad_checkpointing=bool(merged.get("grad_checkpointing", True)),
            checkpoint_every=int(merged.get("checkpoint_every", 500)),
            cache_features=bool(merged.get("cache_features", False)),
            written=dict(merged),
        )

    def as_dict(self) -> dict[str, Any]:
        """The recipe as the config wrote it (for train.json, the trackers and the provenance)."""
        return dict(self.written)


@dataclass(frozen=True)
class Objective:
    id: str
    display: str  # the "Pretrained" column of the tables (e.g. IN1K, COCO-DET)
    kind: str     # classification, detection, segmentation, contrastive, self-supervised, multimodal, fused

    def as_dict(self) -> dict[str, Any]:
        return {"display": self.display, "kind": self.kind}


# The fields of an `llm.source.mini` mapping, with their defaults: the LlamaConfig that
# vlmswap.language.build_mini_llm builds for the mini world (any other field would be ignored there)
MINI_LLM_DEFAULTS: dict[str, int] = {"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 344,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512}


@dataclass(frozen=True)
class LLM:
    id: str
    source: Mapping[str, Any]  # as written: url / hub / path / mini

    @property
    def layers(self) -> int | None:
        """The decoder layers of an LLM the workflow builds (`mini:`); None for one it downloads."""
        if "mini" not in self.source:
            return None
        return int({**MINI_LLM_DEFAULTS, **self.source["mini"]}["num_hidden_layers"])


@dataclass(frozen=True)
class InstructionSet:
    id: str
    source: Mapping[str, Any]
    files: tuple[Mapping[str, Any], ...] = ()  # image archives unpacked beside the json


@dataclass(frozen=True)
class BenchmarkInputs:
    """Where one benchmark's official files come from and which subset the study scores."""

    id: str
    subset: str = "full"  # "full" or "slim-N"
    files: tuple[Mapping[str, Any], ...] = ()  # none: placed by hand (e.g. OCID-Ref)


@dataclass(frozen=True)
class MiniWorld:
    """The generated mini world (config/mini*.yaml); None fields take the generator's defaults."""

    seed: int | None = None
    n_train: int | None = None
    n_eval: int | None = None
    n_classify: int | None = None
    image_size: int = 64
    pretrain_epochs: int = 3
    mix: str | None = None
    grid: int = 0  # boxes of the plain scenes on a grid x grid layout; 0: placed freely
    written: Mapping[str, Any] = field(default_factory=dict)  # the `mini:` mapping as written

    def generator_options(self) -> dict[str, Any]:
        """The keyword arguments of data.mini_world.generate: the keys the config sets."""
        keys = ("seed", "n_train", "n_eval", "n_classify", "image_size", "mix", "grid")
        return {k: self.written[k] for k in keys if k in self.written}


@dataclass(frozen=True)
class EvalSettings:
    """What determines predictions besides the model (defaults as provenance.eval_settings makes them)."""

    batch_size: int = 16
    max_new_tokens: int = 128


@dataclass(frozen=True)
class JobResources:
    """A job's resources (`train_resources`, `eval_resources`, a diagnostic's `resources`)."""

    nodes: int = 1
    gpus_per_node: int = 0
    gpus: int = 0
    cpus: int | None = None
    cpus_per_gpu: int | None = None
    mem_mb: int | None = None
    mem_mb_per_gpu: int | None = None
    runtime_min: int | None = None
    partition: str | None = None
    # (None: the default of the job that reads it: train, evaluation or one diagnostic)

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> "JobResources":
        return cls(**dict(spec or {}))

    @property
    def threads_per_rank(self) -> int:
        """A training rank's CPUs (its torch threads): `cpus_per_gpu`, else 8 per GPU, 2 on a laptop.
        The train job asks SLURM for this many per GPU, and a multi-node step for its node's share."""
        return self.cpus_per_gpu or (8 if self.gpus_per_node else 2)

    def slurm(self, runtime_min: int, mem_mb: int, gpus_key: str) -> dict[str, Any]:
        """Snakemake resources of a one-node job (evaluation, a diagnostic), mapped by the SLURM plugin
        to sbatch flags; `gpus_key` (`eval_gpus`, `diag_gpus`) is ours, for the shell and the message."""
        resources = {"runtime": self.runtime_min or runtime_min, "mem_mb": self.mem_mb or mem_mb, gpus_key: self.gpus}
        if self.gpus:
            resources["gpu"] = self.gpus
            resources["cpus_per_task"] = self.cpus or 8
        if self.partition:
            resources["slurm_partition"] = self.partition
        return resources


# ----------------------------------------------------------------------------------------------


def parse_objectives(data: Mapping[str, Any]) -> dict[str, Objective]:
    return {oid: Objective(oid, spec["display"], spec["kind"]) for oid, spec in data["objectives"].items()}


def parse_benchmarks(data: Mapping[str, Any]) -> dict[str, BenchmarkInputs]:
    return {name: BenchmarkInputs(name, (spec or {}).get("subset", "full"), tuple((spec or {}).get("files", ())))
            for name, spec in data["benchmarks"].items()}


def parse_mini(data: Mapping[str, Any]) -> MiniWorld | None:
    mini = data.get("mini")
    if mini is None:
        return None
    return MiniWorld(**{k: mini[k] for k in ("seed", "n_train", "n_eval", "n_classify", "image_size",
                                             "pretrain_epochs", "mix", "grid") if k in mini}, written=dict(mini))


def parse_eval(data: Mapping[str, Any]) -> EvalSettings:
    return EvalSettings(**dict(data.get("eval", {})))
