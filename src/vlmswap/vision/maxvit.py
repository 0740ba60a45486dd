"""Family "maxvit": timm MaxxVit (the TensorFlow MaxViT ports), tapped at stage 3 (stride 16).

timm's MaxxVit (timm/models/maxxvit.py in timm 1.0.31) is `stem` (stride 2) then `stages[0..3]`;
each stage downsamples at its START (the first block's MBConv has stride 2), so `stages[i]` outputs
stride 4, 8, 16, 32. The paper's "stage 3, stride 16" is therefore the output of `stages[2]`,
which is also `forward_intermediates(x, indices=[3])` (reference/backbones.md section 3;
../shared/paper/checkpoint_sources.csv, rows of family maxvit). No final norm is applied (the tf
ports have `norm = Identity` and their norm lives in `head.norm`). Tokens are the (B, C, H/16, W/16)
map flattened row-major: 196 at 224, 576 at 384, 1024 at 512. `stage2` / `stage4` (the Appendix B
stage ablation) are the outputs of `stages[1]` and `stages[3]` (stride 8 and 32: 784 and 49 tokens
at 224), without `head.norm` like `stage3`.

`arch` is a timm model name with an optional weight tag (`maxvit_base_tf_224.in21k`): the tag picks
the normalization, which differs between tags of one model (the 224 `.in1k` tags use ImageNet
mean/std, every `.in21k*` and 384/512 tag uses 0.5; backbones.md section 3). Or a mapping for a tiny
mini-world member, built with timm's own config classes and the settings of timm's `maxvit_*_tf`
configs (`_tf_cfg`: conv BN eps 1e-3, tanh-GELU, TF "same" padding; transformer LN eps 1e-5,
interleaved heads, TF-style relative position bias): keys `embed_dim`, `depths`, `stem_width`, and
optionally `head_hidden_size` (default: the last embed_dim, as in the tf configs), `dim_head`
(default 32), `mean`/`std` (default 0.5).

Every block partitions its map into windows and a grid of `img_size // 32` cells (timm's
`partition_ratio`), fixed when the model is built, so a backbone works at the geometry it was built
for, which must be a multiple of 32 on both sides. Loading goes through timm's
`checkpoint_filter_fn`, which resizes the relative position tables when the geometry differs from
the checkpoint's, exactly as `timm.create_model(..., pretrained=True, img_size=...)` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import timm
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg, MaxxVitTransformerCfg, checkpoint_filter_fn
from torch import Tensor

from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError, VisionBackbone, as_triple

__all__ = ["TAPS", "MaxVitBackbone", "build", "build_classifier", "classifier", "tf_port_cfg"]

TAPS = ("stage3", "stage2", "stage4")
TAP_STAGE = {"stage2": 1, "stage3": 2, "stage4": 3}  # stages[i] outputs stride 2^(i+2) (the stem is stride 2, every stage halves)
PARTITION_RATIO = 32     # timm MaxxVitTransformerCfg.partition_ratio: window = grid = img_size // 32
_DEFAULT_NORM = (0.5, 0.5, 0.5)
_MAPPING_KEYS = {"embed_dim", "depths", "stem_width", "head_hidden_size", "dim_head", "mean", "std"}


def tf_port_cfg(arch: Mapping[str, Any]) -> MaxxVitCfg:
    """A MaxxVitCfg with the settings of timm's `maxvit_*_tf` configs and the sizes in `arch`."""
    unknown = set(arch) - _MAPPING_KEYS
    missing = {"embed_dim", "depths", "stem_width"} - set(arch)
    if unknown or missing:
        raise ArchError(f"bad MaxViT arch {dict(arch)}: needs embed_dim, depths, stem_width; allowed keys: "
                        f"{', '.join(sorted(_MAPPING_KEYS))}"
                        + (f"; unknown: {sorted(unknown)}" if unknown else ""))
    embed_dim = tuple(int(d) for d in arch["embed_dim"])
    depths = tuple(int(d) for d in arch["depths"])
    if len(embed_dim) != 4 or len(depths) != 4:
        raise ArchError(f"MaxViT needs 4 stages (embed_dim and depths of length 4): {dict(arch)}")
    return MaxxVitCfg(
        embed_dim=embed_dim,
        depths=depths,
        block_type=("M",) * 4,   # MaxViT block: MBConv, window attention, grid attention
        stem_width=int(arch["stem_width"]),
        stem_bias=True,
        head_hidden_size=int(arch.get("head_hidden_size", embed_dim[-1])),
        conv_cfg=MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same"),
        transformer_cfg=MaxxVitTransformerCfg(dim_head=int(arch.get("dim_head", 32)), norm_eps=1e-5,
                                              act_layer="gelu_tanh", head_first=False, rel_pos_type="bias_tf"),
    )


def _check_geometry(geometry: Geometry) -> None:
    if geometry.width % PARTITION_RATIO or geometry.height % PARTITION_RATIO:
        raise ValueError(f"MaxViT partitions every stage into windows of img_size // {PARTITION_RATIO}; the geometry "
                         f"{geometry} must be a multiple of {PARTITION_RATIO} on both sides")


def build_classifier(arch: str | Mapping[str, Any], geometry: Geometry, num_classes: int) -> MaxxVit:
    """The timm MaxxVit for `arch` at `geometry`, with a `num_classes` head (0: no final fc)."""
    _check_geometry(geometry)
    size = (geometry.height, geometry.width)
    if isinstance(arch, str):
        name = arch.split(".")[0]
        if not timm.is_model(name):
            raise ArchError(f"unknown timm MaxViT architecture {arch!r} (a timm model name, e.g. maxvit_tiny_tf_224)")
        if name not in timm.list_models(module="maxxvit"):
            raise ArchError(f"{arch!r} is a timm model but not a MaxxVit (timm/models/maxxvit.py)")
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=size)
    return MaxxVit(tf_port_cfg(arch), img_size=size, num_classes=num_classes)


class MaxVitBackbone(VisionBackbone):
    """Row-major tokens of the output of `stages[2]` of a timm MaxxVit (tap `stage3`; `stage2` and
    `stage4` tap `stages[1]` and `stages[3]`)."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'maxvit'; allowed: {', '.join(TAPS)}")
        self.model = build_classifier(arch, geometry, num_classes=0)
        self.stage_index = TAP_STAGE[tap]
        self.embed_dim = self.model.feature_info[self.stage_index + 1]["num_chs"]
        if isinstance(arch, str):
            cfg = self.model.pretrained_cfg
            self.mean, self.std = as_triple(cfg["mean"], "mean"), as_triple(cfg["std"], "std")
        else:
            self.mean = as_triple(arch.get("mean", _DEFAULT_NORM), "mean")
            self.std = as_triple(arch.get("std", _DEFAULT_NORM), "std")

    def stage3(self, pixels: Tensor) -> Tensor:
        """(B, C3, H/16, W/16): the output of stages[2]; stages[3], norm and head are not run."""
        return self.stage_output(pixels, TAP_STAGE["stage3"])

    def stage_output(self, pixels: Tensor, index: int) -> Tensor:
        """The output of stages[index]; the later stages, norm and head are not run."""
        x = self.model.stem(pixels)
        for stage in self.model.stages[: index + 1]:
            x = stage(x)
        return x

    def forward(self, pixels: Tensor) -> Tensor:
        return self.stage_output(pixels, self.stage_index).flatten(2).transpose(1, 2)

    def num_tokens(self, width: int, height: int) -> int:
        # the stride-2 stem conv and the stride-2 first block of stages 0..tap, each with TF "same"
        # padding (output ceil(size / 2)); geometries are multiples of 32, where this is size / 2^(tap+2)
        for _ in range(self.stage_index + 2):
            width, height = -(-width // 2), -(-height // 2)
        return width * height

    def non_backbone_key(self, key: str) -> bool:
        # - head.* (head.norm, head.pre_logits.fc, head.fc in the tf ports): the classifier; in21k
        #   weights have a 21843-class fc, and this model is built without the fc.
        # - BatchNorm's num_batches_tracked: a training counter, unused by the eval-mode forward
        #   (whether hub weights keep it does not decide whether they load).
        # Everything else, stages[3] included, must match: it pins the official layout.
        return key.startswith("head.") or key.endswith(".num_batches_tracked")

    def official_module(self) -> MaxxVit:
        return self.model  # timm weights are the bare MaxxVit state_dict

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # timm's own filter: resizes relative_position_bias_table to this geometry's partitions.
        # Keys the model lacks go around it (the filter would fail to find their module), so that
        # load_official reports them as unexpected.
        own = self.model.state_dict().keys()
        known = checkpoint_filter_fn({k: v for k, v in state.items() if k in own}, self.model)
        return {**known, **{k: v for k, v in state.items() if k not in own}}


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[MaxxVit, Callable[[Tensor], Tensor]]:
    """The classification network mini members are pretrained as (timm's model and head) and its logits."""
    model = build_classifier(arch, geometry, num_classes)
    return model, model


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> MaxVitBackbone:
    return MaxVitBackbone(arch, tap, geometry)
