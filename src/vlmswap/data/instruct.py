"""The instruction-tuning set (LLaVA-v1.5 665K json format): checking, dataset, collator, batch order.

Record format (prismatic_spec.md 1.7): `{"id", "image"?: relative path, "conversations": [{"from":
"human"|"gpt", "value"}...]}`; records without `image` are language-only. The batch order is
Prismatic's split-modality, length-grouped order (`prismatic/util/batching_utils.py`), rebuilt
here: every global batch holds one modality, examples inside a batch are grouped by length, the
order is fixed by the seed, and the batch holding the longest example goes first so that an
out-of-memory shows at step 0.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from vlmswap.image import Geometry
from vlmswap.language import IGNORE_INDEX, encode_conversation


class InstructError(ValueError):
    """An instruction set that cannot be trained on; the message names the file and the record."""


@dataclass
class InstructCheck:
    n_records: int
    n_multimodal: int
    missing: list[str]  # "record i (id X): image PATH not found"
    unreadable: list[str]  # "record i (id X): PATH: why it does not decode"
    malformed: list[str]  # "record i (id X): what is wrong"


def _turn_problem(record: object) -> str | None:
    """Why a record's conversation cannot be trained on (Prismatic expects human/gpt turns,
    alternating, human first), or None."""
    if not isinstance(record, dict):
        return f"not a JSON object but a {type(record).__name__}"
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        return "no `conversations` list"
    for j, turn in enumerate(conv):
        expected = ("human", "gpt")[j % 2]
        if not isinstance(turn, dict) or turn.get("from") != expected:
            got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
            return f"turn {j} is from {got!r}, expected {expected!r} (turns alternate human/gpt, human first)"
        if not isinstance(turn.get("value"), str):
            return f"turn {j} has no string `value`"
    return None


def check_instruct(json_path: Path, image_root: Path, verify_images: bool = True,
                   log: Callable[[str], None] = print) -> InstructCheck:
    """Check that every record is well formed and every referenced image exists and decodes; each
    problem names the record (index and id) and the file."""
    from vlmswap.image import check_image

    try:
        records = json.loads(Path(json_path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"instruction set {json_path} does not exist (run the fetch/prepare step)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InstructError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise InstructError(f"{json_path}: expected a JSON list of records (LLaVA-665K format)")
    missing, unreadable, malformed = [], [], []
    n_mm = 0
    for i, rec in enumerate(records):
        name = f"record {i} (id {rec.get('id') if isinstance(rec, dict) else '?'})"
        problem = _turn_problem(rec)
        if problem:
            malformed.append(f"{name}: {problem}")
            continue
        if "image" in rec:
            n_mm += 1
            path = image_root / str(rec["image"])
            if not path.is_file():
                missing.append(f"{name}: image {path} not found")
            elif verify_images and (reason := check_image(path)) is not None:
                unreadable.append(f"{name}: {path}: {reason}")
        if (i + 1) % 50000 == 0:
            log(f"  checked {i + 1}/{len(records)} records")
    return InstructCheck(len(records), n_mm, missing, unreadable, malformed)


class InstructDataset(torch.utils.data.Dataset):
    """Tokenizes lazily (665K records); images go through the backbone's own transform
    (`VisionBackbone.transform`: its letterbox fill and statistics, one view per fused tower)."""

    def __init__(self, json_path: Path, image_root: Path, tokenizer, geometry: Geometry,
                 pixels_of: Callable[[Image.Image, Geometry], torch.Tensor], max_length: int, n_visual: int):
        self.records = json.loads(Path(json_path).read_text())
        self.image_root = Path(image_root)
        self.tokenizer, self.geometry, self.pixels_of = tokenizer, geometry, pixels_of
        self.max_length, self.n_visual = max_length, n_visual

    def __len__(self) -> int:
        return len(self.records)

    def multimodal(self) -> list[bool]:
        return ["image" in r for r in self.records]

    def lengths(self) -> list[int]:
        """Word counts (+ visual tokens for multimodal records), as Prismatic's sampler measures."""
        return [sum(len(t["value"].split()) for t in r["conversations"]) + (self.n_visual if "image" in r else 0)
                for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        enc = encode_conversation(self.tokenizer, record["conversations"], self.max_length)
        labels = list(enc.labels)
        labels[0] = IGNORE_INDEX  # BOS
        item = {"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(labels),
                "multimodal": "image" in record}
        if "image" in record:
            with Image.open(self.image_root / record["image"]) as im:
                item["pixels"] = self.pixels_of(im, self.geometry)
        return item


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x["input_ids"]) for x in items)
    b = len(items)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        input_ids[i, :n], labels[i, :n], mask[i, :n] = x["input_ids"], x["labels"], 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask,
             "multimodal": torch.tensor([x["multimodal"] for x in items])}
    pixels = [x.get("pixels") for x in items]
    if any(p is not None for p in pixels):
        template = next(p for p in pixels if p is not None)
        batch["pixels"] = torch.stack([p if p is not None else torch.zeros_like(template) for p in pixels])
    return batch


def split_modality_batches(lengths: Sequence[int], multimodal: Sequence[bool], global_batch: int,
                           seed: int) -> list[list[int]]:
    """Global batches of one modality each, length-grouped, in a seed-fixed order (longest first)."""
    rng = random.Random(seed)
    batches: list[list[int]] = []
    for flag in (True, False):
        idx = [i for i, m in enumerate(multimodal) if m == flag]
        if not idx:
            continue
        rng.shuffle(idx)
        groups = [idx[s:s + global_batch] for s in range(0, len(idx), global_batch)]
        if len(groups[-1]) < global_batch:  # pad the short last batch from the first ones, as Prismatic does
            # (cycling: a modality with fewer records than one batch repeats them)
            short = global_batch - len(groups[-1])
            groups[-1] = groups[-1] + (idx * (short // len(idx) + 1))[:short]
        batches.extend(sorted(g, key=lambda i: -lengths[i]) for g in groups)
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    batches.insert(0, batches.pop(longest))
    return batches


def micro_batches(global_batch: list[int], world_size: int, rank: int, per_device: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch, in accumulation order."""
    per_step = world_size * per_device
    if len(global_batch) % per_step:
        raise ValueError(f"global batch {len(global_batch)} is not a multiple of world size x per-device batch "
                         f"({world_size} x {per_device})")
    out = []
    for start in range(0, len(global_batch), per_step):
        lo = start + rank * per_device
        out.append(global_batch[lo: lo + per_device])
    return out
