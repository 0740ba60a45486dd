"""Family "fused": several backbones side by side, their tokens concatenated along the channels.

Prismatic's DINOv2+SigLIP and DINOv2+CLIP backbones (`prismatic/models/backbones/vision/
dinosiglip_vit.py`, `dinoclip_vit.py`; reference/prismatic_spec.md sections 1.6 and 2.2): each
tower is a timm ViT built at the cell's image size and tapped at its second-to-last block; the
patch tokens of the towers are concatenated along the feature dimension (DINOv2 first), so the LLM
sees as many tokens as one tower produces, each tower-sum wide (DINOv2-L + SigLIP-SO400M at 224:
256 tokens x (1024 + 1152) = 2176). Every tower keeps its own letterbox fill and normalization:
Prismatic's transform returns one tensor per tower; here `transform` stacks them along the channels
(3 per tower) and `forward` splits them again. Each tower loads its own official checkpoint.

`arch` is the list of towers, in order: mappings {family, arch} (and optionally tap, defaulting
to the fused tap), as `vlmswap.vlm.backbone_arch` derives them from the config's `members:`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vlmswap.image import Geometry, PixelTransform
from vlmswap.vision.base import CheckpointMismatch, VisionBackbone

__all__ = ["TAPS", "FusedBackbone", "build"]

TAPS = ("block-2",)


class FusedBackbone(VisionBackbone):
    """Towers run on their own views of the image; tokens concatenated along the channels."""

    def __init__(self, towers: Sequence[VisionBackbone]):
        super().__init__()
        if len(towers) < 2:
            raise ValueError(f"a fused backbone needs at least two towers, got {len(towers)}")
        self.towers = nn.ModuleList(towers)
        self.embed_dim = sum(t.embed_dim for t in towers)
        self.in_channels = sum(t.in_channels for t in towers)
        # The first tower's statistics stand for the whole (they are only read by code that has no
        # per-tower view, e.g. a plot); `pixels` applies every tower's own.
        self.mean, self.std = towers[0].mean, towers[0].std

    @property
    def transform(self) -> PixelTransform:
        return PixelTransform(tuple(view for tower in self.towers for view in tower.transform.views))

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.shape[1] != self.in_channels:
            raise ValueError(f"a fused backbone of {len(self.towers)} towers takes {self.in_channels} input "
                             f"channels (each tower's normalized view, from `pixels`), got {pixels.shape[1]}")
        views = pixels.split([t.in_channels for t in self.towers], dim=1)
        tokens = [tower(view) for tower, view in zip(self.towers, views)]
        lengths = {t.shape[1] for t in tokens}
        if len(lengths) != 1:
            raise ValueError(f"the towers produce different token counts {[t.shape[1] for t in tokens]}; "
                             "channel concatenation needs one grid")
        return torch.cat(tokens, dim=2)

    def num_tokens(self, width: int, height: int) -> int:
        counts = [tower.num_tokens(width, height) for tower in self.towers]
        if len(set(counts)) != 1:
            raise ValueError(f"the towers produce different token counts {counts} at {width}x{height}")
        return counts[0]

    def load_checkpoints(self, checkpoints: Sequence[Mapping[str, Any]]) -> None:
        if len(checkpoints) != len(self.towers):
            raise ValueError(f"a fused backbone of {len(self.towers)} towers takes one checkpoint per tower, "
                             f"got {len(checkpoints)}")
        for i, (tower, checkpoint) in enumerate(zip(self.towers, checkpoints)):
            try:
                tower.load_official(checkpoint)
            except ValueError as error:
                raise CheckpointMismatch(f"fused tower {i} ({type(tower).__name__}): {error}", index=i) from None

    def load_official(self, checkpoint: Mapping[str, Any]) -> None:
        raise ValueError("a fused backbone loads one checkpoint per tower: use load_checkpoints([...])")


def build(arch: Sequence[Mapping[str, Any]], tap: str, geometry: Geometry) -> FusedBackbone:
    from vlmswap.vision.registry import build_backbone

    if isinstance(arch, (str, Mapping)) or not all(isinstance(m, Mapping) and "family" in m for m in arch):
        raise ValueError(f"a fused arch is a list of towers {{family, arch}}, got {arch!r}")
    towers = []
    for member in arch:
        if member["family"] == "fused":
            raise ValueError("a fused backbone cannot contain another fused backbone")
        towers.append(build_backbone(member["family"], member["arch"], member.get("tap", tap), geometry))
    return FusedBackbone(towers)
