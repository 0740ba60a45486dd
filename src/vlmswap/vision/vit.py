"""Family "vit": timm VisionTransformer, tapped the Prismatic way.

Prismatic builds `timm.create_model(id, pretrained=True, num_classes=0, img_size=size)` and
returns `get_intermediate_layers(x, n={len(blocks) - 2})`: the output of the second-to-last
block, without the final norm, with the prefix tokens (CLS, registers) dropped
(reference/prismatic_spec.md section 2.1). Here the weights come from `load_official` instead
of `pretrained=True`, and only the blocks up to the tap are run.

`arch` is a timm model name, optionally with a weight tag (`vit_large_patch16_224.augreg_in21k_ft_in1k`),
or a mapping of VisionTransformer keyword arguments for a tiny mini-world member, which may also
carry `mean` and `std` (default 0.5, the AugReg normalization).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import timm
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError, VisionBackbone, as_triple

__all__ = ["TAPS", "VitBackbone", "build", "build_classifier", "classifier"]

TAPS = ("block-2",)
_DEFAULT_NORM = (0.5, 0.5, 0.5)


def build_classifier(arch: str | Mapping[str, Any], geometry: Geometry, num_classes: int) -> VisionTransformer:
    """The timm model for `arch` at `geometry`, with a `num_classes` head (0: no head)."""
    size = (geometry.height, geometry.width)
    if isinstance(arch, str):
        if not timm.is_model(arch.split(".")[0]):
            raise ArchError(f"unknown timm ViT architecture {arch!r} (a timm model name, e.g. vit_small_patch16_224)")
        kwargs: dict[str, Any] = {}
        if "clip" in arch and arch.endswith(".openai"):
            # Prismatic builds OpenAI CLIP with quick_gelu; plain GELU gives worse features
            # (reference/prismatic_spec.md section 2.1).
            kwargs["act_layer"] = "quick_gelu"
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=size, **kwargs)
        if not isinstance(model, VisionTransformer):
            raise ArchError(f"{arch!r} is a timm {type(model).__name__}, not a VisionTransformer")
        return model
    kwargs = {k: v for k, v in arch.items() if k not in ("mean", "std")}
    try:
        return VisionTransformer(img_size=size, num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise ArchError(f"bad ViT arch {dict(arch)}: {error}") from None


class VitBackbone(VisionBackbone):
    """Patch tokens after block len(blocks)-2 of a timm VisionTransformer (tap `block-2`)."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'vit'; allowed: {', '.join(TAPS)}")
        self.model = build_classifier(arch, geometry, num_classes=0)
        self.embed_dim = self.model.embed_dim
        if isinstance(arch, str):
            cfg = self.model.pretrained_cfg
            self.mean, self.std = as_triple(cfg["mean"], "mean"), as_triple(cfg["std"], "std")
        else:
            self.mean = as_triple(arch.get("mean", _DEFAULT_NORM), "mean")
            self.std = as_triple(arch.get("std", _DEFAULT_NORM), "std")
        self.tap_block = len(self.model.blocks) - 2
        if self.tap_block < 0:
            raise ValueError("tap block-2 needs a ViT with at least 2 blocks")

    def forward(self, pixels: Tensor) -> Tensor:
        m = self.model
        x = m.patch_embed(pixels)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        for block in m.blocks[: self.tap_block + 1]:
            x = block(x)
        return x[:, m.num_prefix_tokens:]

    def num_tokens(self, width: int, height: int) -> int:
        # PatchEmbed is a conv with kernel = stride = patch size, no padding
        ph, pw = self.model.patch_embed.patch_size
        return (height // ph) * (width // pw)

    def non_backbone_key(self, key: str) -> bool:
        # timm classification weights carry `head.*`; `fc_norm` belongs to the head side only in
        # models built without it (global_pool 'token' has fc_norm = Identity).
        if key.startswith("head."):
            return True
        return key.startswith("fc_norm.") and not hasattr(self.model.fc_norm, "weight")

    def official_module(self) -> VisionTransformer:
        return self.model  # timm weights are the bare VisionTransformer's state_dict

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # timm's own filter: resamples pos_embed (and patch_embed) when the checkpoint was trained
        # at another size than this geometry, exactly as timm does for pretrained=True.
        return checkpoint_filter_fn(state, self.model)


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[VisionTransformer, Callable[[Tensor], Tensor]]:
    """The classification network mini members are pretrained as (timm's model and head) and its logits."""
    model = build_classifier(arch, geometry, num_classes)
    return model, model


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> VitBackbone:
    return VitBackbone(arch, tap, geometry)
