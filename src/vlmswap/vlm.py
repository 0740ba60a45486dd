"""The VLM: frozen vision backbone -> connector -> causal LLM.

Sequence layout as Prismatic (`prismatic/models/vlms/prismatic.py`; prismatic_spec.md 1.4):
`[BOS] [v_1 .. v_K] [text tokens after BOS]`; visual positions get attention 1 and label IGNORE.
Text-only rows in a batch get K zero embeddings appended at the end with attention 0.

The trainable part (connector + LLM) is its own module, `VLMHead`, so that DeepSpeed shards
only it; the frozen vision tower runs outside the engine under no_grad (DESIGN.md, performance).
"""

from __future__ import annotations

import json
from typing import Sequence

import torch
from torch import nn

from vlmswap.allocator import keep_freed_memory
from vlmswap.checkpoint import CheckpointError
from vlmswap.connector import build_connector
from vlmswap.language import IGNORE_INDEX


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as transformers' generate makes them: each row counts from
    its first real token (padding gets 1; it is masked anyway)."""
    return (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)


@torch.no_grad()
def greedy_decode(llm: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int | None, pad_token_id: int) -> torch.Tensor:
    """Greedy decoding with a KV cache from a left-padded batch of input embeddings: the tokens of
    `llm.generate(inputs_embeds=..., do_sample=False, num_beams=1, use_cache=True)` (rows that have
    produced EOS continue with pad; stops when every row has), without generate's per-step machinery
    (generation config, logits processors, stopping criteria, input preparation): the prefill computes
    the LM head at the last position only, each step feeds one token id per row. Returns (B, steps)."""
    from transformers import StaticCache

    batch, length = embeds.shape[:2]
    # A static cache (keys/values written in place) and one preallocated mask: with the dynamic
    # cache, torch.cat of every layer's keys and values at every step was a third of the decode time
    # (torch.profiler, batch 16, 24 steps, the mini LM). The mask keeps the slots not yet written out.
    cache = StaticCache(config=llm.config, max_cache_len=length + max_new_tokens)
    mask = torch.cat([attention_mask, attention_mask.new_zeros(batch, max_new_tokens)], dim=1)
    positions = _positions(attention_mask)
    out = llm(inputs_embeds=embeds, attention_mask=mask[:, :length], position_ids=positions, past_key_values=cache,
              cache_position=torch.arange(length, device=embeds.device), use_cache=True, logits_to_keep=1)
    position = positions[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    tokens = []
    for step in range(max_new_tokens):
        token = out.logits[:, -1].float().argmax(-1).masked_fill_(done, pad_token_id)
        tokens.append(token)
        if eos_token_id is not None:
            done |= token == eos_token_id
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        mask[:, length + step] = 1
        out = llm(input_ids=token[:, None], attention_mask=mask[:, :length + step + 1], position_ids=position,
                  past_key_values=cache, cache_position=torch.tensor([length + step], device=embeds.device),
                  use_cache=True)
        position = position + 1
    return torch.stack(tokens, dim=1) if tokens else embeds.new_zeros(batch, 0, dtype=torch.long)


class VLMHead(nn.Module):
    """Connector + LLM: everything that trains.

    The connector is made in the LLM's dtype. On a GPU the LLM arrives partitioned in bf16 (ZeRO-3
    zero.Init), and DeepSpeed casts a model only when it did not arrive partitioned
    (`_configure_distributed_model`); ZeRO-3 packs a group into one flat buffer of a single dtype,
    so a float32 connector beside it failed `deepspeed.initialize` (zero/utils.py `defragment`).
    Evaluation loads the LLM in its inference dtype, and the connector follows it the same way."""

    def __init__(self, connector_kind: str, vision_dim: int, llm: nn.Module):
        super().__init__()
        dtype = next(llm.parameters()).dtype  # a ZeRO-3 placeholder carries its parameter's dtype
        self.projector = build_connector(connector_kind, vision_dim, llm.config.hidden_size).to(dtype)
        self.llm = llm
        self.vision_dim = vision_dim

    def embed(self, features: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor | None, multimodal: torch.Tensor | None):
        """Splice projected visual tokens after BOS. Returns embeds, attention mask, labels."""
        text = self.llm.get_input_embeddings()(input_ids)
        if features is None:
            if torch.is_grad_enabled():
                # A text-only batch must still give the connector a gradient (of zeros). DeepSpeed
                # ZeRO-3 keeps each parameter's gradient partition in a buffer that only a backward
                # through the parameter overwrites, and hands the whole buffer to the optimizer every
                # step (deepspeed/runtime/zero/stage3.py, the ipg epilogue's `averaged_gradients`):
                # without this, every text-only step re-applied the connector gradient of the last
                # step with images. One zero token through the connector, times 0, adds nothing.
                probe = self.projector(text.new_zeros(1, 1, self.vision_dim))
                text = text + probe.sum() * 0.0
            return text, attention_mask, labels
        visual = self.projector(features.to(text.dtype))
        b, k = visual.shape[:2]
        if multimodal is None:
            multimodal = torch.ones(b, dtype=torch.bool, device=text.device)
        # multimodal rows: [BOS, visual, rest]; text-only rows: [text, zeros] with attention 0
        mm_embeds = torch.cat([text[:, :1], visual, text[:, 1:]], dim=1)
        to_embeds = torch.cat([text, torch.zeros_like(visual)], dim=1)
        sel = multimodal.view(b, 1, 1)
        embeds = torch.where(sel, mm_embeds, to_embeds)
        ones = attention_mask.new_ones(b, k)
        mm_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        to_mask = torch.cat([attention_mask, torch.zeros_like(ones)], dim=1)
        mask = torch.where(multimodal.view(b, 1), mm_mask, to_mask)
        if labels is not None:
            ignore = labels.new_full((b, k), IGNORE_INDEX)
            mm_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
            to_labels = torch.cat([labels, ignore], dim=1)
            labels = torch.where(multimodal.view(b, 1), mm_labels, to_labels)
        return embeds, mask, labels

    def forward(self, features, input_ids, attention_mask, labels=None, multimodal=None):
        embeds, mask, labels = self.embed(features, input_ids, attention_mask, labels, multimodal)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)


class VLM(nn.Module):
    """Inference wrapper: frozen backbone + head, batched greedy generation and choice scoring."""

    def __init__(self, vision: nn.Module, head: VLMHead, tokenizer):
        super().__init__()
        self.vision = vision.eval().requires_grad_(False)
        self.head = head
        self.tokenizer = tokenizer

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.head.parameters()).dtype
        return self.vision(pixels.to(next(self.vision.parameters()).dtype)).to(dtype)

    def _left_padded(self, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.tokenizer(p, add_special_tokens=True).input_ids for p in prompts]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        return input_ids.to(device), mask.to(device)

    def _inputs(self, pixels: torch.Tensor, prompts: Sequence[str]):
        """Left-padded batch with visual tokens after each row's BOS."""
        device = pixels.device
        input_ids, mask = self._left_padded(prompts, device)
        features = self.features(pixels)
        llm = self.head.llm
        text = llm.get_input_embeddings()(input_ids)
        visual = self.head.projector(features)
        b, k = visual.shape[:2]
        width = input_ids.shape[1]
        embeds = text.new_zeros(b, width + k, text.shape[-1])
        attn = mask.new_zeros(b, width + k)
        for i in range(b):
            start = int(width - mask[i].sum())  # left padding; the first real token is BOS
            embeds[i, :start] = text[i, :start]
            embeds[i, start] = text[i, start]
            embeds[i, start + 1: start + 1 + k] = visual[i]
            embeds[i, start + 1 + k:] = text[i, start + 1:]
            attn[i, start:] = 1
        return embeds, attn

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, prompts: Sequence[str], max_new_tokens: int = 128) -> list[str]:
        """Greedy, KV-cached, left-padded batched generation; returns decoded, stripped strings."""
        embeds, attn = self._inputs(pixels, prompts)
        tokens = greedy_decode(self.head.llm, embeds, attn, max_new_tokens, self.tokenizer.eos_token_id,
                               self.tokenizer.pad_token_id)
        return [s.strip() for s in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    @torch.no_grad()
    def choice_probabilities(self, pixels: torch.Tensor, prompts: Sequence[str], choices: Sequence[str]) -> torch.Tensor:
        """Softmax of the first generated token over single-token `choices`, renormalized over them
        (vlm-evaluation's `return_string_probabilities`); one forward pass. Returns (B, len(choices))."""
        ids = []
        for c in choices:
            tok = self.tokenizer(c, add_special_tokens=False).input_ids
            if len(tok) != 1:
                raise ValueError(f"choice {c!r} is not a single token for this tokenizer ({tok})")
            ids.append(tok[0])
        embeds, attn = self._inputs(pixels, prompts)
        # the LM head on the last position only (logits_to_keep): a (B, vocab) product, not (B, L, vocab)
        logits = self.head.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=_positions(attn),
                               use_cache=False, logits_to_keep=1).logits[:, -1]
        probs = logits.float().softmax(-1)[:, ids]
        return probs / probs.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# Materialize: ids in config -> objects (Prismatic's `materialize` idea)


def backbone_arch(study, cell):
    """The architecture to build. A timm tag names the weights, and the weights decide the
    normalization (an in21k MaxViT expects mean/std 0.5 where the untagged name says ImageNet's).
    A fused backbone's arch is its towers, in `members` order, each with its own weights' arch."""
    spec = study.backbones[cell.backbone]
    if spec.members:
        return [{"family": study.backbones[m].family,
                 "arch": _weights_arch(study.backbones[m], next(iter(study.backbones[m].checkpoints)))}
                for m in spec.members]
    return _weights_arch(spec, cell.objective)


def _weights_arch(spec, objective):
    source = spec.checkpoints.get(objective, {})
    if "timm" not in source:
        return spec.arch
    if isinstance(spec.arch, str):
        return source["timm"]
    if spec.family == "timm" and spec.arch.get("model") == source["timm"].split(".")[0]:
        return {**spec.arch, "model": source["timm"]}  # a timm mapping arch: keyword overrides, the tag's cfg
    return spec.arch


def materialize_backbone(study, cell, checkpoint_files):
    """Build the cell's backbone at its geometry and tap, and load its official checkpoint(s)
    (one file, or one per tower of a fused backbone, in `members` order)."""
    from vlmswap.checkpoint import read_checkpoint
    from vlmswap.vision.base import CheckpointMismatch
    from vlmswap.vision.registry import build_backbone

    spec = study.backbones[cell.backbone]
    files = list(checkpoint_files)
    wanted = len(spec.members) or 1
    if len(files) != wanted:
        raise ValueError(f"cell {cell.id}: backbone {spec.id!r} ({spec.family}) takes {wanted} checkpoint(s), "
                         f"got {[str(f) for f in files]}")
    backbone = build_backbone(spec.family, backbone_arch(study, cell), cell.tap, cell.geometry)
    try:
        backbone.load_checkpoints([read_checkpoint(f) for f in files])
    except CheckpointMismatch as error:
        member = spec.members[error.index] if spec.members else spec.id  # a fused backbone: one file per tower
        objective = next(iter(study.backbones[member].checkpoints)) if spec.members else cell.objective
        raise CheckpointMismatch(f"{files[error.index]}: {error}; is it the checkpoint of {member}@{objective}, "
                                 f"and is `backbones.{member}.arch` in {study.path} its architecture?",
                                 error.index) from None
    return backbone.eval().requires_grad_(False)


def inference_placement(local_rank: int = 0) -> tuple[str, torch.dtype]:
    """Where a trained VLM runs for evaluation and the diagnostics: this process's GPU in bf16 (the
    dtype the paper's recipe trains in), else the CPU in float32, with glibc's allocator keeping freed
    memory for the next batch (`vlmswap.allocator`). The one place that decides it."""
    if torch.cuda.is_available():
        return f"cuda:{local_rank}", torch.bfloat16
    keep_freed_memory()
    return "cpu", torch.float32


def _trained_cell(model_dir) -> str | None:
    """The cell a trained model's train.json names (None: no readable record)."""
    try:
        return str(json.loads((model_dir / "train.json").read_text())["cell"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_trained(study, cell, checkpoint_files, llm_dir, model_dir, device="cpu", dtype=torch.float32) -> VLM:
    """The trained VLM of a cell: backbone from its checkpoint, connector + LLM from training."""
    from safetensors.torch import load_file

    from vlmswap.language import load_llm, load_tokenizer

    vision = materialize_backbone(study, cell, checkpoint_files)
    tokenizer = load_tokenizer(llm_dir)
    # loaded in the inference dtype, as training loads it on a GPU: the rotary frequencies (a float32
    # buffer) stay float32; casting a float32 model with `.to(bf16)` would round them as well
    llm = load_llm(llm_dir, tokenizer, dtype=dtype)
    head = VLMHead(cell.connector, vision.embed_dim, llm)
    weights = model_dir / "model.safetensors"
    state = load_file(str(weights))
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
        problem = f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected else ""
    except RuntimeError as error:  # strict=False passes over missing keys, never over other shapes
        lines = str(error).strip().splitlines()  # "Error(s) in loading state_dict ...:", then one line per key
        problem = lines[min(1, len(lines) - 1)].strip()
    if problem:
        trained_for = _trained_cell(model_dir)
        other = f"cell {trained_for}" if trained_for else "another cell or connector"
        raise CheckpointError(f"{weights}: this model was trained for {other}, not for cell {cell.id} ({problem}); "
                              f"pass the model of {cell.id} or retrain it")
    tokenizer.padding_side = "left"
    return VLM(vision.to(device, dtype), head.to(device).eval(), tokenizer)
