"""Pretrain a tiny backbone on the mini world, for classification, detection or segmentation, and
save it the way its family's official checkpoints for that objective are saved, so the mini study
loads it through the same `load_official` path as a downloaded file.

- classification trains the family's own classifier (timm's head for vit/maxvit, the official
  `classify` networks of vmamba/mambavision/vim): the file holds the whole classifier, as the
  official classification files do.
- detection and segmentation train the backbone at the cell's tap with a simple head on the token
  grid (simple heads are enough to shape the features; the study only reads the backbone):
  detection a CenterNet-style head (per-cell class heatmap + box at the object's centre cell),
  segmentation a per-token classifier upsampled to pixels (mmseg's `conv_seg`). The file is the
  family's detection/segmentation layout (mmengine `backbone.` + heads; detectron2 `.pkl` for
  ViTDet): `VisionBackbone.official_checkpoint`.
"""

from __future__ import annotations

import io
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmswap.atomic import atomic_path
from vlmswap.image import Geometry

__all__ = ["KINDS", "DenseHead", "PretrainSet", "mini_pretrain_set", "pretrain_backbone", "pretrain_classifier",
           "pretrain_mini", "pretrain_tap"]

KINDS = ("classification", "detection", "segmentation")


@dataclass
class PretrainSet:
    """Letterboxed, normalized images with every target the three objectives need.

    images (N, C, H, W); labels (N,) the image class; boxes: per image a list of (class, x0, y0, x1,
    y1) in pixels of `images`; masks (N, H, W) int64 with 0 = background and class + 1 inside a shape.
    """

    images: Tensor
    labels: Tensor
    boxes: Sequence[Sequence[tuple[int, float, float, float, float]]] = ()
    masks: Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


class DenseHead(nn.Module):
    """A 1x1-conv head on the (B, D, h, w) token grid. detection: `cls_score` (class heatmap logits)
    and `bbox_pred` (centre x, y, width, height as fractions of the image, through a sigmoid);
    segmentation: `conv_seg` (background + classes)."""

    def __init__(self, kind: str, dim: int, num_classes: int):
        super().__init__()
        if kind not in ("detection", "segmentation"):
            raise ValueError(f"a dense head is for detection or segmentation, not {kind!r}")
        self.kind = kind
        if kind == "detection":
            self.cls_score = nn.Conv2d(dim, num_classes, 1)
            self.bbox_pred = nn.Conv2d(dim, 4, 1)
            nn.init.constant_(self.cls_score.bias, -2.0)  # start from "mostly no object"
        else:
            self.conv_seg = nn.Conv2d(dim, num_classes + 1, 1)

    def forward(self, grid: Tensor) -> tuple[Tensor, ...]:
        if self.kind == "detection":
            return self.cls_score(grid), self.bbox_pred(grid).sigmoid()
        return (self.conv_seg(grid),)


def _grid(tokens: Tensor) -> Tensor:
    """(B, N, D) row-major tokens of a square input -> (B, D, h, w)."""
    b, n, d = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} tokens are not a square grid; dense pretraining needs square images")
    return tokens.transpose(1, 2).reshape(b, d, side, side)


def _detection_targets(boxes: Sequence[Sequence[tuple]], side: int, size: tuple[int, int],
                       num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Heatmap (B, K, s, s) with 1 at each object's centre cell, box targets (B, 4, s, s) and the
    positive-cell mask (B, s, s)."""
    height, width = size
    heat = torch.zeros(len(boxes), num_classes, side, side)
    box = torch.zeros(len(boxes), 4, side, side)
    positive = torch.zeros(len(boxes), side, side, dtype=torch.bool)
    for i, objects in enumerate(boxes):
        for label, x0, y0, x1, y1 in objects:
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            r, c = min(int(cy * side), side - 1), min(int(cx * side), side - 1)
            heat[i, label, r, c] = 1.0
            box[i, :, r, c] = torch.tensor([cx, cy, (x1 - x0) / width, (y1 - y0) / height])
            positive[i, r, c] = True
    return heat, box, positive


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of (n, 4) centre-size boxes."""
    def corners(x):
        return torch.cat([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], dim=1)
    a, b = corners(a), corners(b)
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return inter / area.clamp(min=1e-9)


def _step(kind: str, model: nn.Module, head: DenseHead | None, logits_of: Callable, data: PretrainSet,
          idx: Tensor, num_classes: int) -> tuple[Tensor, float]:
    """Loss of one batch and its score (classification accuracy, detection: mean IoU of the box
    predicted at each object's centre cell, segmentation: pixel accuracy), summed over the batch."""
    images = data.images[idx]
    if kind == "classification":
        logits = logits_of(images)
        labels = data.labels[idx]
        return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().sum().item()
    grid = _grid(model(images))
    if kind == "detection":
        heat_logits, box = head(grid)
        heat, box_target, positive = _detection_targets([data.boxes[i] for i in idx.tolist()], grid.shape[-1],
                                                        tuple(images.shape[-2:]), num_classes)
        weight = 1.0 + 9.0 * heat  # few positive cells: weigh them up
        loss = F.binary_cross_entropy_with_logits(heat_logits, heat, weight=weight)
        pred, target = box.permute(0, 2, 3, 1)[positive], box_target.permute(0, 2, 3, 1)[positive]
        if len(target):
            loss = loss + F.l1_loss(pred, target)
            score = _box_iou(pred.detach(), target).mean().item() * len(idx)
        else:
            score = 0.0
        return loss, score
    (seg_logits,) = head(grid)
    seg_logits = F.interpolate(seg_logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    masks = data.masks[idx]
    return F.cross_entropy(seg_logits, masks), (seg_logits.argmax(1) == masks).float().mean((1, 2)).sum().item()


def pretrain_backbone(family: str, arch: Any, tap: str, kind: str, data: PretrainSet, num_classes: int,
                      out_path: Path, epochs: int = 3, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                      log: Callable[[str], None] = print) -> dict:
    """Train a `family`/`arch` member for `kind` on `data`; write the family's official checkpoint for
    that objective to `out_path` atomically. Returns {score, score_name, final_loss, seconds, ...}."""
    from vlmswap.vision.registry import FAMILIES, build_backbone

    start = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"unknown pretraining objective kind {kind!r}; allowed: {', '.join(KINDS)}")
    images = data.images
    if images.dim() != 4 or images.shape[1] != 3 or len(data.labels) != len(images):
        raise ValueError(f"expected images (N, 3, H, W) and N labels, got {tuple(images.shape)} and {len(data.labels)}")
    if kind == "detection" and len(data.boxes) != len(images):
        raise ValueError("detection pretraining needs one box list per image")
    if kind == "segmentation" and (data.masks is None or data.masks.shape != (len(images), *images.shape[2:])):
        raise ValueError("segmentation pretraining needs one (H, W) mask per image")
    torch.manual_seed(seed)
    geometry = Geometry(int(images.shape[3]), int(images.shape[2]))
    backbone = build_backbone(family, arch, tap, geometry)  # the layout, the tap, the container
    info = {"epochs": epochs, "accuracy": None, "objective": kind,
            "arch": dict(arch) if isinstance(arch, Mapping) else arch}
    backbone.official_checkpoint(kind, {}, {}, info)  # a family without this kind's layout fails before training
    head = None
    if kind == "classification":
        model, logits_of = FAMILIES[family].classifier(arch, geometry, num_classes)
        params = list(model.parameters())
    else:
        model, logits_of = backbone, None
        head = DenseHead(kind, backbone.embed_dim, num_classes)
        params = list(model.parameters()) + list(head.parameters())
    model.train()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, total // 10)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    shuffle = torch.Generator().manual_seed(seed)
    score_name = {"classification": "train accuracy", "detection": "centre-cell box IoU",
                  "segmentation": "pixel accuracy"}[kind]
    score, mean_loss = 0.0, float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=shuffle)
        loss_sum, score_sum = 0.0, 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            loss, batch_score = _step(kind, model, head, logits_of, data, idx, num_classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            score_sum += batch_score
        mean_loss, score = loss_sum / len(images), score_sum / len(images)
        log(f"epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}, {score_name} {100 * score:.1f}% "
            f"({time.perf_counter() - start:.1f} s)")

    model.eval()
    info["accuracy"] = round(100 * score, 2)
    if kind == "classification":
        weights, head_state = model.state_dict(), {}
    else:
        weights, head_state = backbone.official_module().state_dict(), head.state_dict()
    weights = {k: v.detach().clone() for k, v in weights.items()}
    head_state = {k: v.detach().clone() for k, v in head_state.items()}
    payload, fmt = backbone.official_checkpoint(kind, weights, head_state, info)
    with atomic_path(out_path) as tmp:
        if fmt == "pickle":
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=2)  # detectron2's model zoo files are protocol-2 pickles
        elif fmt == "safetensors":  # transformers' model.safetensors
            from safetensors.torch import save_file

            save_file(payload, str(tmp))
        else:
            # through a buffer: saved to a path, torch names the zip's records after the file, and
            # the atomic writer's temporary name would make every save differ byte for byte
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            tmp.write_bytes(buffer.getvalue())
    seconds = time.perf_counter() - start
    return {"score": score, "score_name": score_name, "final_loss": mean_loss, "seconds": round(seconds, 2),
            "epochs": epochs, "images": len(images), "format": fmt}


def pretrain_classifier(family: str, arch: Any, images: Tensor, labels: Tensor, num_classes: int, out_path: Path,
                        tap: str | None = None, **kwargs: Any) -> dict:
    """Classification pretraining (`pretrain_backbone` with kind "classification"); the summary also
    carries `train_accuracy`."""
    from vlmswap.vision.registry import FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; allowed: {', '.join(sorted(FAMILIES))}")
    tap = tap or FAMILIES[family].taps[0]
    summary = pretrain_backbone(family, arch, tap, "classification", PretrainSet(images, labels.long()),
                                num_classes, out_path, **kwargs)
    return {**summary, "train_accuracy": summary["score"]}


# ------------------------------------------------------------------------ the mini study's verb


def pretrain_mini(study, backbone: str, objective: str, world: Path, out: Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """`vlmswap pretrain-mini`: pretrain one `mini:` checkpoint of the study on the world's shape
    images for its objective, at the tap the study's cells read, and save it at `out`."""
    from vlmswap.sections import ConfigError
    from vlmswap.vision.registry import build_backbone

    source = study.checkpoint_source(backbone, objective)
    spec = study.backbones[backbone]
    if "mini" not in source:
        raise ConfigError(study.path, f"backbones.{backbone}.checkpoints.{objective}",
                          "pretrain-mini needs a `mini:` source")
    kind = study.objectives[objective].kind
    if kind not in KINDS:
        raise ConfigError(study.path, f"objectives.{objective}.kind",
                          f"the mini world pretrains for {', '.join(KINDS)}, not {kind!r}", list(KINDS))
    tap = pretrain_tap(study, backbone, objective, kind)
    if study.mini is None:
        raise ConfigError(study.path, "mini", "pretrain-mini needs a study with a mini world; use config/mini.yaml")
    size = int(source["mini"].get("image_size", study.mini.image_size))
    geometry = Geometry(size, size)
    # built only for its transform (letterbox fill, normalization)
    probe = build_backbone(spec.family, spec.arch, tap, geometry)
    data, classes = mini_pretrain_set(world / "classify", geometry, probe.pixels, kind)
    log(f"pretrain {backbone}@{objective} ({kind}, tap {tap}): {len(data)} images at {size}px, "
        f"{len(classes)} classes")
    epochs = int(source["mini"].get("epochs", study.mini.pretrain_epochs))
    return pretrain_backbone(spec.family, spec.arch, tap, kind, data, len(classes), out,
                             epochs=epochs, seed=study.seed, log=log)


def pretrain_tap(study, backbone: str, objective: str, kind: str = "classification") -> str:
    """The tap the study's cells read from this checkpoint (dense heads train the backbone there).
    A classification network trains the whole model whatever the tap, so its checkpoint serves
    cells at several taps (the Appendix B stage ablation reads one checkpoint at stages 2, 3, 4)."""
    from vlmswap.sections import ConfigError
    from vlmswap.vision.registry import FAMILIES

    taps = sorted({c.tap for c in study.cells if c.backbone == backbone and c.objective == objective})
    default = FAMILIES[study.backbones[backbone].family].taps[0]
    if kind == "classification" and len(taps) > 1:
        return default
    if len(taps) > 1:
        raise ConfigError(study.path, f"backbones.{backbone}.checkpoints.{objective}",
                          f"cells read this mini checkpoint at several taps {taps}; pretrain one backbone per tap")
    return taps[0] if taps else default


def mini_pretrain_set(folder: Path, geometry: Geometry, pixels_of, kind: str) -> tuple[PretrainSet, list]:
    """The world's classification images with their image labels, boxes and masks, in the frame of
    the letterboxed `geometry` input (the images are square; a square geometry only rescales)."""
    import json

    from PIL import Image

    from vlmswap.data.mini_world import class_mask

    classes = json.loads((folder / "classes.json").read_text())
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines() if line.strip()]
    if not geometry.square:
        raise ValueError(f"{folder}: mini pretraining runs at a square size, got {geometry}")
    images, boxes, masks = [], [], []
    for row in rows:
        with Image.open(folder / row["image"]) as im:
            images.append(pixels_of(im, geometry))
        if kind != "classification" and "objects" not in row:
            raise ValueError(f"{folder / 'train.jsonl'}: record {row['image']} has no `objects` (boxes and "
                             "polygons); regenerate the mini world with this version (snakemake reruns it)")
        scale = geometry.width / row.get("size", geometry.width)
        objects = row.get("objects", [])
        boxes.append([(o["label"], *(v * scale for v in o["bbox"])) for o in objects])
        if kind == "segmentation":  # the renderer's own pixels, at the world's size, then to the geometry
            mask = class_mask(objects, row.get("size", geometry.width))
            mask = mask.resize((geometry.width, geometry.height), Image.NEAREST)
            masks.append(torch.as_tensor(list(mask.getdata()), dtype=torch.long).view(geometry.height, geometry.width))
    data = PretrainSet(torch.stack(images), torch.tensor([r["label"] for r in rows]), boxes,
                       torch.stack(masks) if masks else None)
    return data, classes
