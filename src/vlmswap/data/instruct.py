"""The instruction-tuning set (LLaVA-v1.5 665K json format): checking, dataset, collator, batch order.

Record format (prismatic_spec.md 1.7): `{"id", "image"?: relative path, "conversations": [{"from":
"human"|"gpt", "value"}...]}`; records without `image` are language-only. The batch order is
Prismatic's split-modality, length-grouped order (`prismatic/util/batching_utils.py`), rebuilt
index for index (tests/data/test_instruct_order.py checks it against the reference's own output):
every global batch holds one modality, records inside a batch are grouped by length and dealt to
the ranks in length-balanced blocks, the order is fixed by the seed and the epoch, and the batch
holding the longest example goes first so that an out-of-memory shows at step 0.
"""

from __future__ import annotations

import json
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
        """Word counts of all turns, `<image>` included, as Prismatic's sampler measures them
        (`FinetuneDataset.get_modality_lengths`); `split_modality_batches` adds the patches."""
        return [sum(len(t["value"].split()) for t in r["conversations"]) for r in self.records]

    def answer_starts(self, sample: int = 1000) -> list[int | None]:
        """For up to `sample` records spread over the set: the text position of the first answer
        token after truncation to `max_length`, or None when truncation left no answer token."""
        step = max(1, len(self.records) // sample)
        starts: list[int | None] = []
        for record in self.records[::step][:sample]:
            labels = encode_conversation(self.tokenizer, record["conversations"], self.max_length).labels
            starts.append(next((i for i, label in enumerate(labels) if i and label != IGNORE_INDEX), None))
        return starts

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


# Prismatic adds 24 x 24 patches (CLIP@336) to a multimodal record's word count only to find the
# batch to put first, whatever the backbone (`batching_utils.py`, "Shift max length batch to index 0").
SORT_PATCHES = 24 * 24


def split_modality_batches(lengths: Sequence[int], multimodal: Sequence[bool], global_batch: int, seed: int,
                           world_size: int = 1) -> list[list[int]]:
    """Prismatic's `SplitModalitySampler` order for one epoch, seeded with `seed` (= its seed + epoch).

    Each global batch holds one modality; its indices come rank by rank: `world_size` contiguous
    blocks of `global_batch // world_size`, balanced by length (`rank_blocks`). Steps, in the
    reference's order (`prismatic/util/batching_utils.py::get_modality_and_length_grouped_indices`):
    a `torch.randperm` per modality (multimodal first) under a `torch.Generator` seeded with `seed`;
    slices of `global_batch`; a short last slice padded with the first slice's leading indices;
    each slice sorted by word count, longest first (a stable sort); the length-balanced rank split;
    a `torch.randperm` over all batches (multimodal ones first); the batch holding the longest
    record (word count + 576 patches if multimodal) swapped with batch 0.
    """
    if len(lengths) != len(multimodal):
        raise ValueError(f"{len(lengths)} lengths but {len(multimodal)} modality flags")
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    members = {flag: [i for i, m in enumerate(multimodal) if bool(m) == flag] for flag in (True, False)}
    shuffled = {flag: torch.randperm(len(members[flag]), generator=generator).tolist() for flag in (True, False)}
    batches: list[list[int]] = []
    for flag in (True, False):
        idx, order = members[flag], shuffled[flag]
        if not idx:
            continue
        local_lengths = [lengths[i] for i in idx]
        groups = [order[s:s + global_batch] for s in range(0, len(order), global_batch)]
        short = global_batch - len(groups[-1])
        # pad with the first slice's leading indices, as Prismatic; a modality of fewer than half a
        # batch wraps around its one slice (the reference fails an assertion there)
        groups[-1] = groups[-1] + [groups[0][k % len(groups[0])] for k in range(short)]
        for g in groups:
            ranked = sorted(g, key=lambda j: local_lengths[j], reverse=True)
            blocks = rank_blocks(ranked, local_lengths, world_size)
            batches.append([idx[j] for block in blocks for j in block])
    merge = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[b] for b in merge]
    sort_lengths = [n + (SORT_PATCHES if m else 0) for n, m in zip(lengths, multimodal)]
    # the first batch on a tie, as np.argmax
    longest = max(range(len(batches)), key=lambda b: max(sort_lengths[i] for i in batches[b]))
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def rank_blocks(batch: Sequence[int], lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Prismatic's `reindex_batch`: deal a longest-first batch to `world_size` equal blocks, each
    record going to the block with the smallest total length that is not yet full (ties: lowest rank)."""
    if len(batch) % world_size:
        raise ValueError(f"batch of {len(batch)} is not divisible by world size {world_size}")
    capacity = len(batch) // world_size
    blocks: list[list[int]] = [[] for _ in range(world_size)]
    totals: list[float] = [0.0] * world_size
    for i in batch:
        k = totals.index(min(totals))
        blocks[k].append(i)
        totals[k] = float("inf") if len(blocks[k]) == capacity else totals[k] + lengths[i]
    return blocks


def micro_batches(global_batch: list[int], world_size: int, rank: int, per_device: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch, in accumulation order: its contiguous block of
    `len(global_batch) // world_size` (as Prismatic's sampler hands out), cut into `per_device` pieces."""
    per_rank, rem = divmod(len(global_batch), world_size)
    if rem or per_rank % per_device:
        raise ValueError(f"global batch {len(global_batch)} is not a multiple of world size x per-device batch "
                         f"({world_size} x {per_device})")
    block = global_batch[rank * per_rank:(rank + 1) * per_rank]
    return [block[s:s + per_device] for s in range(0, per_rank, per_device)]
