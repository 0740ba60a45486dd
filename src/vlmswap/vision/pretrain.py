"""Pretrain a tiny backbone for classification on the mini world; save it as the family's official
checkpoint would be, so the mini study loads it through the same `load_official` path.

- vit: the timm model with a `num_classes` head (timm's own pooling and head), saved as a plain
  timm state_dict, like timm's hub weights.
- vmamba: the VSSM with its `classifier`, saved in the official classification container
  {model, model_ema, optimizer, epoch, max_accuracy, config} (backbones.md 1.5), where `config`
  is a non-tensor object as the official yacs CfgNode is, so readers must unpickle tolerantly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmswap.atomic import atomic_path
from vlmswap.image import Geometry
from vlmswap.vision import vit
from vlmswap.vision.vmamba import VMamba

__all__ = ["pretrain_classifier"]


def _classifier(family: str, arch: Mapping[str, Any], geometry: Geometry,
                num_classes: int) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """The trainable classification model and its pixels -> logits function."""
    if family == "vit":
        model = vit.build_classifier(arch, geometry, num_classes)
        return model, model
    if family == "vmamba":
        model = VMamba(arch, "stage3", num_classes=num_classes)
        return model, model.classify
    raise ValueError(f"pretraining is implemented for families 'vit' and 'vmamba', not {family!r}")


def _config(arch: str | Mapping[str, Any], geometry: Geometry, num_classes: int, epochs: int, lr: float,
            seed: int) -> SimpleNamespace:
    """A non-tensor config object in the spirit of the official yacs CfgNode (MODEL.VSSM, DATA, TRAIN)."""
    vssm = arch if isinstance(arch, str) else SimpleNamespace(**arch)
    return SimpleNamespace(MODEL=SimpleNamespace(TYPE="vssm", NUM_CLASSES=num_classes, VSSM=vssm),
                           DATA=SimpleNamespace(IMG_SIZE=[geometry.height, geometry.width]),
                           TRAIN=SimpleNamespace(EPOCHS=epochs, BASE_LR=lr), SEED=seed)


def pretrain_classifier(family: str, arch: Mapping[str, Any], images: Tensor, labels: Tensor, num_classes: int,
                        out_path: Path, epochs: int = 3, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                        log: Callable[[str], None] = print) -> dict:
    """Train `arch` of `family` on letterboxed, normalized `images` (N, 3, H, W) with integer `labels`;
    write the checkpoint to `out_path` atomically. Returns {train_accuracy, final_loss, seconds, ...}."""
    start = time.perf_counter()
    if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(labels):
        raise ValueError(f"expected images (N, 3, H, W) and N labels, got {tuple(images.shape)} and {len(labels)}")
    torch.manual_seed(seed)
    geometry = Geometry(int(images.shape[3]), int(images.shape[2]))
    model, logits_of = _classifier(family, arch, geometry, num_classes)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, total // 10)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    shuffle = torch.Generator().manual_seed(seed)
    labels = labels.long()

    accuracy, mean_loss = 0.0, float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=shuffle)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            logits = logits_of(images[idx])
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(-1) == labels[idx]).sum().item()
        mean_loss, accuracy = loss_sum / len(images), correct / len(images)
        log(f"epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}, train accuracy {100 * accuracy:.1f}% "
            f"({time.perf_counter() - start:.1f} s)")

    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if family == "vit":
        payload: Any = state
    else:
        payload = {"model": state, "model_ema": state, "optimizer": optimizer.state_dict(), "epoch": epochs - 1,
                   "max_accuracy": 100 * accuracy, "config": _config(arch, geometry, num_classes, epochs, lr, seed)}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    seconds = time.perf_counter() - start
    return {"train_accuracy": accuracy, "final_loss": mean_loss, "seconds": round(seconds, 2),
            "epochs": epochs, "images": len(images)}
