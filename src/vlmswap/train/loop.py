"""Train one cell: frozen backbone -> connector + LLM, one stage, DeepSpeed ZeRO-3, resumable.

Read top to bottom: set up the process group, materialize the models, fix the batch order,
build the engine, resume if resume state exists, loop, save. The resume state (DeepSpeed's
engine, optimizer and step, saved every `recipe.checkpoint_every` steps) goes to a folder that
Snakemake does not own (it deletes declared outputs before a retry), so a killed or requeued job
continues from its last saved step with the same batch order. "Checkpoint" in this project means
a backbone's fetched weights only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vlmswap.atomic import atomic_path, write_json, write_text
from vlmswap.data.instruct import InstructDataset, collate, micro_batches, split_modality_batches
from vlmswap.language import load_llm, load_tokenizer
from vlmswap.provenance import differences, file_sha256, model_record, move_aside
from vlmswap.sections import ConfigError, Recipe
from vlmswap.study import Cell, Study
from vlmswap.train.engine import (deepspeed_config, effective_weight_decay, init_deepspeed, on_gpu, optimizer_kind,
                                  parameter_groups)
from vlmswap.train.launch import TimeLimit, TimeLimitReached, distributed_env
from vlmswap.train.schedule import accumulation_steps, schedule_for
from vlmswap.train.trackers import Trackers, open_trackers
from vlmswap.vlm import VLMHead, materialize_backbone


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good resume state is kept."""


class ResumeWorldMismatch(RuntimeError):
    """Resume state of this very run was saved by another number of ranks (DeepSpeed cannot reshard it)."""


@dataclass
class TrainPaths:
    weight_files: list[Path]  # the fetched backbone checkpoint(s) (weights); several for a fused backbone
    llm_dir: Path           # the fetched LLM folder
    instruct_json: Path
    image_root: Path
    out_dir: Path           # declared outputs: model.safetensors, train.json, loss.jsonl
    state_dir: Path         # undeclared: the resume state


def git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def batch_plan(dataset: InstructDataset, global_batch: int, seed: int, steps: int,
               world_size: int = 1) -> list[list[int]]:
    """The global batches of every optimizer step; epoch e uses seed + e (Prismatic's `set_epoch`)."""
    plan: list[list[int]] = []
    lengths, multimodal = dataset.lengths(), dataset.multimodal()
    epoch = 0
    while len(plan) < steps:
        plan.extend(split_modality_batches(lengths, multimodal, global_batch, seed + epoch, world_size))
        epoch += 1
    return plan[:steps]


def llm_load_options(recipe: Recipe, world: int) -> dict[str, Any]:
    """How train_cell loads the LLM: on a GPU in the recipe's dtype and partitioned under ZeRO-3 (the
    engine's own config, so zero.Init partitions as the engine will), else float32, whole."""
    if not on_gpu():
        return {}
    dtype = torch.bfloat16 if recipe.precision == "bf16" else torch.float32
    accumulation = accumulation_steps(recipe.global_batch, recipe.per_device_batch, world)
    return {"dtype": dtype, "zero3_config": deepspeed_config(recipe.as_dict(), world, accumulation)}


def train_cell(study: Study, cell: Cell, paths: TrainPaths, log: Callable[[str], None] = print,
               time_limit: TimeLimit | None = None) -> dict:
    # DeepSpeed 0.19 calls collectives that torch 2.14 marks deprecated, once per step
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    deepspeed = init_deepspeed()
    rank, world, local_rank = distributed_env()
    say = log if rank == 0 else (lambda _msg: None)
    recipe = study.recipe(cell)
    # what this run is: config, input files and code; resume state of any other run is set aside
    provenance = model_record(study, cell, paths.weight_files, paths.llm_dir, paths.instruct_json)
    device = torch.device("cuda", local_rank) if on_gpu() else torch.device("cpu")
    # decided before any model is loaded: a foreign state is moved aside, one of another world size refused
    _set_aside_foreign_state(paths.state_dir, provenance, world, rank, say)
    torch.manual_seed(recipe.seed)

    # models: the frozen tower stays outside the engine; connector + LLM are what ZeRO-3 shards
    vision = materialize_backbone(study, cell, paths.weight_files).to(device)
    if on_gpu():
        vision = vision.to(torch.bfloat16)
    tokenizer = load_tokenizer(paths.llm_dir)
    n_visual = vision.num_tokens(cell.geometry.width, cell.geometry.height)
    dataset = InstructDataset(paths.instruct_json, paths.image_root, tokenizer, cell.geometry, vision.transform,
                              recipe.max_length, n_visual)
    _check_answers_survive_truncation(dataset, recipe, study, cell, say)  # before minutes of LLM loading
    # on a GPU the LLM loads partitioned (ZeRO-3 zero.Init through transformers) in the training dtype;
    # the CPU path (mini study, tests) keeps the full float32 load
    llm = load_llm(paths.llm_dir, tokenizer, **llm_load_options(recipe, world))
    llm.config.use_cache = False
    if recipe.grad_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    head = VLMHead(cell.connector, vision.embed_dim, llm)

    gb, pdb = recipe.global_batch, recipe.per_device_batch
    schedule = schedule_for(len(dataset), gb, recipe.epochs, recipe.warmup_ratio, recipe.max_steps)
    accumulation = accumulation_steps(gb, pdb, world)
    plan = batch_plan(dataset, gb, recipe.seed, schedule.steps, world)
    say(f"cell {cell.id}: {len(dataset)} examples, {schedule.steps} steps ({schedule.warmup} warmup), "
        f"global batch {gb} = {pdb} per device x {accumulation} accumulation x {world} ranks, {n_visual} visual tokens")

    engine, _, _, _ = deepspeed.initialize(
        model=head,
        model_parameters=parameter_groups(head, effective_weight_decay(recipe.as_dict())),
        config=deepspeed_config(recipe.as_dict(), world, accumulation),
        lr_scheduler=schedule.scheduler,
    )

    history: list[dict] = []
    start, unsupervised_before = 0, 0
    if (paths.state_dir / "latest").is_file():
        loaded, client = engine.load_checkpoint(str(paths.state_dir))
        if loaded is None:
            raise RuntimeError(f"{paths.state_dir}: resume state is named in 'latest' but could not be "
                               f"loaded; delete the folder to restart cell {cell.id} from scratch")
        start, history = int(client["step"]), list(client["history"])
        unsupervised_before = int(client.get("micro_batches_without_answer", 0))
        say(f"resumed from {loaded} at step {start}/{schedule.steps}")
        _check_resumed_optimizer(client, optimizer_kind(engine), say)
    # loss.jsonl grows step by step so that a running job can be watched (the final write below
    # replaces it atomically); after a resume it restarts from the resumed history
    loss_log = paths.out_dir / "loss.jsonl"
    trackers = Trackers()
    if rank == 0:
        write_text(loss_log, "".join(json.dumps(h) + "\n" for h in history))
        trackers = open_trackers(list(study.trackers), paths.state_dir.parent.parent / "tracking" / cell.id,
                                 cell.id, recipe.as_dict(), str(study.path))

    sampler = [mb for step in plan[start:] for mb in micro_batches(step, world, rank, pdb)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=lambda items: collate(items, tokenizer.pad_token_id),
        num_workers=2 if on_gpu() else 0,
    )
    batches, batch_indices = iter(loader), iter(sampler)
    features_of = FeatureCache(vision, device) if recipe.cache_features else None
    if features_of is not None and start:
        trained = [mb for step in plan[:start] for mb in micro_batches(step, world, rank, pdb)]
        multimodal = dataset.multimodal()
        features_of.replay(trained, multimodal,
                           lambda mb: collate([dataset[i] for i in mb], tokenizer.pad_token_id)["pixels"])
        say(f"feature cache rebuilt: {features_of.misses} examples' features from the micro-batches "
            f"trained before step {start}")
    every = recipe.checkpoint_every
    t0, tokens = time.time(), 0
    unsupervised = torch.zeros(1, device=device)  # this rank's micro-batches without an answer token
    for step in range(start, schedule.steps):
        t_step, losses = time.time(), []
        for _ in range(accumulation):
            batch, indices = next(batches), next(batch_indices)
            features = None
            if "pixels" in batch and features_of is not None:
                features = features_of(indices, batch["pixels"])
            elif "pixels" in batch:
                with torch.no_grad():
                    features = vision(batch["pixels"].to(device, next(vision.parameters()).dtype))
            try:
                out = engine(features, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             batch["labels"].to(device), batch["multimodal"].to(device))
            except torch.cuda.OutOfMemoryError as e:
                raise RuntimeError(f"cell {cell.id}: out of memory at step {step} with per-device batch {pdb} "
                                   f"({n_visual} visual tokens); lower recipe.per_device_batch for this cell "
                                   "(the global batch stays, accumulation grows)") from e
            loss = out.loss
            if not bool((batch["labels"] != -100).any()):
                # every answer was truncated away (max_length): no supervised token, so HF's mean
                # is 0/0; contribute nothing instead of stopping the run as if it had diverged
                loss = out.logits.sum() * 0.0
                unsupervised += 1
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=device)
            torch.distributed.all_reduce(bad)
            if bad.item():
                last = (paths.state_dir / "latest").read_text().strip() if (paths.state_dir / "latest").exists() else None
                raise TrainingDiverged(f"cell {cell.id}: loss is {loss.item()} at step {step}; stopped. "
                                       f"Last good resume state: {paths.state_dir / last if last else 'none'}")
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum()) + (n_visual * int(batch["multimodal"].sum()))
        record = {"step": step + 1, "loss": sum(losses) / len(losses), "lr": engine.get_lr()[0],
                  "seconds": round(time.time() - t_step, 4)}
        history.append(record)
        if rank == 0:
            with open(loss_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            trackers.log(record)
        if (step + 1) % max(1, schedule.steps // 20) == 0 or step == start:
            elapsed = time.time() - t0
            eta = elapsed / (step + 1 - start) * (schedule.steps - step - 1)
            say(f"step {step + 1}/{schedule.steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                f"({record['seconds']:.2f}s/step, {tokens / max(elapsed, 1e-9):.0f} tokens/s, "
                f"ETA {_duration(eta)})")
        def save() -> None:
            _save_state(engine, paths.state_dir, step + 1, history, provenance, world, time_limit,
                        unsupervised_before + _summed(unsupervised))

        saved = (step + 1) % every == 0 and step + 1 < schedule.steps
        if saved:
            save()
        if time_limit is not None and step + 1 < schedule.steps:
            time_limit.longest_step = max(time_limit.longest_step, record["seconds"])
            if _time_is_up(time_limit, device):
                if not saved:
                    save()
                trackers.close()
                # no rank exits before rank 0 is done: torchrun and srun end the others at the first exit
                torch.distributed.barrier()
                left = time_limit.deadline - time.time()
                raise TimeLimitReached(
                    f"cell {cell.id}: {_duration(max(left, 0))} left of the job's {_duration(time_limit.limit_s)} "
                    f"time limit; resume state saved at step {step + 1}/{schedule.steps} "
                    f"(longest save {time_limit.longest_save:.0f}s), so the job stops here and its retry continues from it "
                    f"(the SLURM profile's `retries`; or run snakemake again)")
    wall = time.time() - t0
    unsupervised_total = unsupervised_before + _summed(unsupervised)

    state = engine._zero3_consolidated_16bit_state_dict()
    if rank == 0:
        from safetensors.torch import save_file

        paths.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths.out_dir / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        write_text(paths.out_dir / "loss.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        losses = [h["loss"] for h in history]
        summary = {
            "cell": cell.id, "study": study.name, "recipe": recipe.as_dict(), "git": git_hash(),
            "provenance": provenance, "model_sha256": file_sha256(paths.out_dir / "model.safetensors"),
            "world_size": world, "device": str(device), "steps": schedule.steps, "warmup_steps": schedule.warmup,
            "resumed_from_step": start, "examples": len(dataset), "visual_tokens": n_visual,
            "loss_first": losses[0] if losses else None, "loss_final": losses[-1] if losses else None,
            "loss_min": min(losses) if losses else None,
            "loss_last10_mean": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "wall_seconds": round(wall, 2), "tokens_per_second": round(tokens / max(wall, 1e-9), 1),
            # micro-batches (every rank, every attempt) whose every answer token was truncated away
            "micro_batches_without_answer": unsupervised_total,
        }
        if features_of is not None:
            summary["feature_cache"] = {"computed": features_of.misses, "reused": features_of.hits}
        write_json(paths.out_dir / "train.json", summary)
        say(f"saved {paths.out_dir / 'model.safetensors'} (final loss {summary['loss_final']:.4f}, {wall:.0f}s)")
        shutil.rmtree(paths.state_dir, ignore_errors=True)  # the final model supersedes resume state
        trackers.close()
        return summary
    return {}


class FeatureCache:
    """The frozen tower's features of each training example, computed the first time it is drawn and
    reused in later epochs (`recipe.cache_features`; the mini study, where they fit in memory: 3k
    examples x 36 tokens). The tower is frozen and in eval mode, so a feature is a function of its
    image alone. Off by default: the paper grid's 665k x 576 tokens would not fit."""

    def __init__(self, vision: torch.nn.Module, device: torch.device):
        self.vision, self.device = vision, device
        self.dtype = next(vision.parameters()).dtype
        self.stored: dict[int, torch.Tensor] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def __call__(self, indices: list[int], pixels: torch.Tensor) -> torch.Tensor:
        missing = [k for k, i in enumerate(indices) if i not in self.stored]
        if missing:
            computed = self.vision(pixels[missing].to(self.device, self.dtype))
            for k, row in zip(missing, computed):
                self.stored[indices[k]] = row.clone()
        self.misses += len(missing)
        self.hits += len(indices) - len(missing)
        return torch.stack([self.stored[i] for i in indices])

    def replay(self, trained: list[list[int]], multimodal: list[bool],
               pixels_of: Callable[[list[int]], torch.Tensor]) -> None:
        """Rebuild, after a resume, the cache the run had when its state was saved. A feature's bits
        depend on the batch the tower computed it in, so the micro-batches already trained on go
        through the tower again, in order and with the same members; only those that computed
        something are loaded. The resumed run then trains on bit-identical features."""
        for indices in trained:
            if not any(multimodal[i] for i in indices):
                continue  # a text-only micro-batch has no pixels: the loop computed nothing for it
            if all(i in self.stored for i in indices):
                self.hits += len(indices)
            else:
                self(indices, pixels_of(indices))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _check_answers_survive_truncation(dataset: InstructDataset, recipe: Recipe, study: Study, cell: Cell,
                                      say: Callable[[str], None]) -> None:
    """Stop before training when `recipe.max_length` cuts the answers off most records (the run
    would save a model trained on nothing); say how many lose them when it is a few."""
    starts = dataset.answer_starts()
    lost = sum(start is None for start in starts)
    if not lost:
        return
    kept = sorted(start for start in starts if start is not None)
    where = f"; the others' first answer token is at text position {kept[len(kept) // 2]} (median)" if kept else ""
    message = (f"{recipe.max_length} truncates away every answer token of {lost} of the {len(starts)} "
               f"training records checked{where}")
    if 2 * lost > len(starts):
        key = f"cells[{study.cells.index(cell)}].recipe.max_length" if "max_length" in cell.recipe else "recipe.max_length"
        raise ConfigError(study.path, key, f"{message}; raise it (Prismatic's is 2048)")
    say(f"warning: recipe.max_length {message}; they train nothing (train.json counts the micro-batches)")


def _summed(count: torch.Tensor) -> int:
    """A per-rank count summed over the ranks (every rank calls it at the same step)."""
    total = count.clone()
    torch.distributed.all_reduce(total)
    return int(total.item())


def _time_is_up(time_limit: TimeLimit, device: torch.device) -> bool:
    """Whether any rank finds the time limit near (every rank must stop at the same step)."""
    near = torch.tensor([1.0 if time_limit.near(time.time()) else 0.0], device=device)
    torch.distributed.all_reduce(near, op=torch.distributed.ReduceOp.MAX)
    return bool(near.item())


def _set_aside_foreign_state(state_dir: Path, provenance: dict, world: int, rank: int,
                             say: Callable[[str], None]) -> None:
    """Resume only a run of exactly this cell, config, inputs and code: anything else in the resume
    folder (another recipe, a new backbone file, a torn first save) is moved aside, never deleted.
    State of this very run saved by another number of ranks is refused (DeepSpeed cannot load ZeRO-3
    state into another world size) rather than set aside: it may hold a day of training."""
    if state_dir.exists():
        record_file = state_dir / "provenance.json"
        recorded = json.loads(record_file.read_text()) if record_file.is_file() else None
        saved_world = recorded.pop("world_size", None) if recorded is not None else None
        other_world = saved_world not in (None, world)  # None: a record from before world sizes were kept
        why = differences(recorded, provenance)
        latest = state_dir / "latest"
        if other_world and not why and latest.is_file():
            raise ResumeWorldMismatch(
                f"{state_dir}: resume state of this run (at {latest.read_text().strip()}) was saved by "
                f"{saved_world} ranks and this job has {world}; DeepSpeed cannot load ZeRO-3 state into "
                f"another number of ranks. Give the job {saved_world} GPUs again (train_resources) to "
                f"continue it, or move the folder away to restart the cell from step 0 with {world}")
        if other_world:
            why.append("world_size")  # a record without any state yet: it must not keep the old size
        if why and rank == 0:
            move_aside(state_dir, why, say)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank looks at the folder before rank 0 has decided


def _check_resumed_optimizer(client: dict, kind: str, say: Callable[[str], None]) -> None:
    """A run requeued onto a node that picks the other AdamW implementation (no nvcc there) goes on,
    but says that it is no longer bit-identical to an uninterrupted run. State saved before the
    optimizer was recorded says nothing."""
    saved = client.get("optimizer")
    if saved is not None and saved != kind:
        say(f"warning: the resume state was saved by {saved}, this node steps with {kind}: the run goes on, "
            f"but is not bit-identical to an uninterrupted one (give every node the same optimizer: "
            f"README, Running on a cluster)")


def _save_state(engine, state_dir: Path, step: int, history: list[dict], provenance: dict, world: int,
                time_limit: TimeLimit | None = None, unsupervised: int = 0) -> None:
    """Save resume state; once every rank has written its part, point `latest` at it (atomically)
    and drop the older tags. DeepSpeed's own `latest` is written by rank 0 before the other ranks
    are done, so a kill in between would name a torn save and lose the complete one before it."""
    t0 = time.time()
    state_dir.mkdir(parents=True, exist_ok=True)
    if engine.global_rank == 0 and not (state_dir / "provenance.json").is_file():
        # before any tag: no state without its record
        write_json(state_dir / "provenance.json", {**provenance, "world_size": world})
    tag = f"step-{step:07d}"
    engine.save_checkpoint(str(state_dir), tag=tag, save_latest=False,
                           client_state={"step": step, "history": history, "optimizer": optimizer_kind(engine),
                                         "micro_batches_without_answer": unsupervised})
    # save_checkpoint ends in a barrier: every rank's files of `tag` are written
    if engine.global_rank == 0:
        write_text(state_dir / "latest", tag)
        for old in state_dir.glob("step-*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # the save is whole (`latest` and the old tags) before any rank goes on
    if time_limit is not None:
        time_limit.longest_save = max(time_limit.longest_save, time.time() - t0)
