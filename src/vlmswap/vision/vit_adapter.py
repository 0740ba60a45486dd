"""Family "vit-adapter": ViT-Adapter (DeiT / AugReg / Uni-Perceiver ViTs) in plain PyTorch.

Written from czczup/ViT-Adapter @ fd64a5190f9f4530e8e5961cc87b2a3ad591190b (the backbone code is
unchanged since 709e2ea, Oct 2022, apart from formatting), read for facts only (module tree, key
names, shapes, constants, the order of operations):
- segmentation/mmseg_custom/models/backbones/vit_adapter.py (ViTAdapter),
- segmentation/mmseg_custom/models/backbones/base/vit.py (TIMMVisionTransformer, Block, Attention),
- segmentation/mmseg_custom/models/backbones/uniperceiver_adapter.py (UniPerceiverAdapter) and
  base/uniperceiver.py (UnifiedBertEncoder, BertLayer, VisualPatchEmbedding, PatchEmbed),
- segmentation/mmseg_custom/models/backbones/adapter_modules.py (SpatialPriorModule,
  InteractionBlock(WithCls), Injector, Extractor, ConvFFN, DWConv, deform_inputs),
- detection/ops/modules/ms_deform_attn.py (MSDeformAttn; segmentation imports it as
  `ops.modules`) and the sampling math of ms_deform_attn_core_pytorch in
  detection/ops/functions/ms_deform_attn_func.py (the CUDA kernel samples the same way:
  bilinear, pixel centres at (i + 0.5) / size, zero outside the map),
- segmentation/configs/ade20k/upernet_{deit,augreg}_adapter_{tiny,small,base,large}_512_160k_ade20k.py
  and upernet_uniperceiver_adapter_large_512_160k_ade20k.py (the hyper-parameters below),
- reference/backbones.md section 5.2.

Network (the names are the state_dict keys under `backbone.` in the mmseg checkpoints):
- the plain ViT: `patch_embed.proj` (Conv2d, kernel = stride = 16), `pos_embed` (1, g*g + 1, C)
  stored at the pre-training grid g = pretrain_size / 16 with a cls entry that is never used (the
  adapter sets cls_token = None); at run time the g x g grid is resized bicubically
  (align_corners False) to the token grid (_get_pos_embed). `blocks.N`: pre-norm blocks (LayerNorm
  eps 1e-6, qkv with bias, MLP ratio 4, GELU) with layer scale `gamma1`/`gamma2` (TIMMVisionTransformer
  defaults to layer_scale=True, no config overrides it). No final norm. No config of ours uses
  window attention (window_attn=[False] * depth everywhere), so it is not implemented.
- `spm` (SpatialPriorModule): a ResNet-like stem (`stem.0/3/6` convs, `stem.1/4/7` SyncBN, max
  pool) and `conv2..conv4` (stride 2 each), giving maps at strides 4/8/16/32 projected to C by the
  1x1 convs `fc1..fc4` (with bias). c2..c4 are flattened, get `level_embed[0..2]` added and are
  concatenated into one token sequence c.
- `interactions.N` (one per group of blocks, `interaction_indexes`): `injector` (x += gamma *
  MSDeformAttn(query_norm(x) -> feat_norm(c), 3 levels)), the group of ViT blocks, `extractor`
  (c += MSDeformAttn(query_norm(c) -> feat_norm(x), 1 level); c += ConvFFN(ffn_norm(c))), and on
  the last interaction two `extra_extractors`. ConvFFN = fc1 -> 3x3 depthwise conv on each of the
  three maps of c (`dwconv.dwconv`) -> GELU -> fc2, hidden = int(C * cffn_ratio).
- MSDeformAttn(d_model=C, n_heads, n_points, ratio): `sampling_offsets` (-> heads*levels*points*2),
  `attention_weights` (-> heads*levels*points, softmax over levels*points), `value_proj` (C ->
  int(C*ratio)), `output_proj` (int(C*ratio) -> C). Sampling locations = reference point + offset /
  (W_l, H_l); reference points are the pixel centres of the query map(s) (deform_inputs).
- outputs: c4 (stride 32) + the last interaction's ViT tokens bilinearly resized by 0.5, through
  `norm4` (SyncBN); likewise f1..f3 via `up` (ConvTranspose2d 2x2) and `norm1..norm3`.
  SyncBatchNorm is nn.BatchNorm2d here (eps 1e-5, running statistics in eval mode).
- Uni-Perceiver-L (uniperceiver-adapter-l) has its own key layout: `visual_embed.patch_embed.
  {proj, spatial_pos_embed (Embedding 196 = 14x14), temporal_pos_embed (Embedding 8)}`,
  `visual_embed.embeddings_norm` (LayerNorm after adding the positions), `layers.N.{self_attn.
  in_proj, self_attn.out_proj, linear1, linear2, norm1, norm2, gamma_1, gamma_2}`; every LayerNorm
  there, the adapter's included, is nn.LayerNorm with the default eps 1e-5.

Tap `adapter-stride32` (../shared/paper/checkpoint_sources.csv): f4, the stride-32 map after
norm4, as row-major tokens: 16 x 16 = 256 at 512 x 512, dim C.

Input sizes: the official forward only runs on inputs whose sides are multiples of 32 (DWConv
splits c as 16n/4n/n tokens and reshapes the stride-32 map to (H/16)/2); the mmseg test pipeline
guarantees it (ResizeToMultiple size_divisor=32, then 512 crops). Other sizes are zero-padded at
the bottom/right to the next multiple of 32 after normalization (mmseg's Pad, pad_val=0, is what
training used); the token grid is then ceil(H/32) x ceil(W/32).

Normalization: mmseg's img_norm_cfg on RGB 0-255, here divided by 255: the ImageNet mean/std
(123.675/58.395 ...) for DeiT-T/S/B, AugReg-T and Uni-Perceiver-L, but (127.5, 127.5) = 0.5/0.5 for
AugReg-B and AugReg-L.

Arch ids: DeiT-B and AugReg-B adapters share the network but not pos_embed (DeiT: 224 -> 197
entries; AugReg-B/L configs set img_size = pretrain_size = 384 -> 577) nor the normalization, so
they need different ids: `vit-adapter-b` is DeiT-B, `augreg-adapter-b` AugReg-B. `vit-adapter-t`
serves DeiT-T and AugReg-T (identical configs), `vit-adapter-s` is DeiT-S, `vit-adapter-l` is
AugReg-L (the only large ViT-Adapter config); `deit-adapter-*` / `augreg-adapter-*` are explicit
aliases. A mapping arch (tiny mini-world members) takes: base ("vit" or "uniperceiver"),
embed_dim, depth, num_heads, deform_num_heads, interaction_indexes, and optionally pretrain_size,
conv_inplane, n_points, cffn_ratio, deform_ratio, mlp_ratio, init_values, mean, std.
"""


from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import Mlp  # fc1 -> GELU (exact) -> fc2, the official key names
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.adapter import (HALF, IMAGENET_MEAN, IMAGENET_STD, PATCH, TAPS, AdapterBackbone, AdapterNet,
                                    Attention, ConvFFN, Extractor, Injector, InteractionBlock, MSDeformAttn,
                                    SpatialPriorModule, deformable_sample, level_shapes, pad_to_multiple,
                                    reference_points, resize_pos_grid)
from vlmswap.vision.base import ArchError, init_linear_and_norms, resolve_arch
from vlmswap.vision.uniperceiver_adapter import UniPerceiverAdapterNet

# the adapter's shared modules (vision/adapter.py) stay importable from here, the family's module
__all__ = ["ARCHS", "TAPS", "AdapterBackbone", "AdapterNet", "ConvFFN", "Extractor", "Injector",
           "InteractionBlock", "MSDeformAttn", "SpatialPriorModule", "UniPerceiverAdapterNet", "ViTAdapter",
           "ViTAdapterNet", "build", "deformable_sample", "level_shapes", "pad_to_multiple", "reference_points",
           "resize_pos_grid"]

_GROUPS_12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
_GROUPS_24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
_DEIT_T = {"base": "vit", "embed_dim": 192, "depth": 12, "num_heads": 3, "deform_num_heads": 6, "deform_ratio": 1.0,
         "interaction_indexes": _GROUPS_12, "pretrain_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
_DEIT_S = {**_DEIT_T, "embed_dim": 384, "num_heads": 6}
_DEIT_B = {**_DEIT_T, "embed_dim": 768, "num_heads": 12, "deform_num_heads": 12, "deform_ratio": 0.5}
_VIT_L = {**_DEIT_B, "embed_dim": 1024, "depth": 24, "num_heads": 16, "deform_num_heads": 16,
          "interaction_indexes": _GROUPS_24}

# segmentation/configs/ade20k/upernet_*_adapter_*_512_160k_ade20k.py (backbone dicts, img_norm_cfg)
ARCHS: dict[str, dict[str, Any]] = {
    "vit-adapter-t": _DEIT_T,                                                      # DeiT-T = AugReg-T config
    "vit-adapter-s": _DEIT_S,                                                      # DeiT-S
    "vit-adapter-b": _DEIT_B,                                                      # DeiT-B (not AugReg-B)
    "vit-adapter-l": {**_VIT_L, "pretrain_size": 384, "mean": HALF, "std": HALF},  # AugReg-L
    "deit-adapter-t": _DEIT_T,
    "deit-adapter-s": _DEIT_S,
    "deit-adapter-b": _DEIT_B,
    "augreg-adapter-t": _DEIT_T,
    "augreg-adapter-b": {**_DEIT_B, "pretrain_size": 384, "mean": HALF, "std": HALF},
    "augreg-adapter-l": {**_VIT_L, "pretrain_size": 384, "mean": HALF, "std": HALF},
    # upernet_uniperceiver_adapter_large_512_160k_ade20k.py: UniPerceiverAdapter, img_size 224 (default)
    "uniperceiver-adapter-l": {**_VIT_L, "base": "uniperceiver"},
}
_DEFAULTS = {"base": "vit", "pretrain_size": 224, "conv_inplane": 64, "n_points": 4, "cffn_ratio": 0.25,
             "deform_ratio": 1.0, "mlp_ratio": 4.0, "init_values": 0.0}
_REQUIRED = {"embed_dim", "depth", "num_heads", "deform_num_heads", "interaction_indexes"}
_ARCH_KEYS = _REQUIRED | set(_DEFAULTS) | {"mean", "std"}
VIT_NORM_EPS = 1e-6            # TIMMVisionTransformer: partial(nn.LayerNorm, eps=1e-6), shared with the adapter


# --- the DeiT / AugReg ViT (TIMMVisionTransformer) -----------------------------------------------------

class ViTBlock(nn.Module):
    """base/vit.py Block with layer_scale: x + gamma1 * attn(norm1(x)), x + gamma2 * mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_NORM_EPS)
        self.attn = Attention(dim, num_heads, "qkv", "proj")
        self.norm2 = nn.LayerNorm(dim, eps=VIT_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class ViTAdapterNet(AdapterNet):
    """ViTAdapter: the keys of `backbone.` in the DeiT/AugReg UperNet checkpoints."""

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__()
        dim, depth = int(spec["embed_dim"]), int(spec["depth"])
        pretrain = int(spec["pretrain_size"])
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, PATCH, PATCH)
        self.pos_embed = nn.Parameter(torch.zeros(1, (pretrain // PATCH) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, int(spec["num_heads"]), float(spec["mlp_ratio"]))
                                      for _ in range(depth)))
        self.blocks.apply(init_linear_and_norms)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self._build_adapter(dim, int(spec["conv_inplane"]), int(spec["deform_num_heads"]), int(spec["n_points"]),
                            float(spec["deform_ratio"]), float(spec["cffn_ratio"]), float(spec["init_values"]),
                            VIT_NORM_EPS, spec["interaction_indexes"], depth)

    def embed(self, pixels: Tensor) -> tuple[Tensor, None]:
        x = self.patch_embed.proj(pixels)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        return x + resize_pos_grid(self.pos_embed[0, 1:], grid), None      # the cls entry is not used

    def vit_blocks(self) -> nn.Sequential:
        return self.blocks




# --- the backbone ------------------------------------------------------------------------------------

class ViTAdapter(AdapterBackbone):
    """ViT-Adapter (DeiT / AugReg / Uni-Perceiver) tapped at `adapter-stride32`."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str = "adapter-stride32"):
        spec = resolve_arch(arch, ARCHS, _DEFAULTS, _REQUIRED, _ARCH_KEYS, "ViT-Adapter")
        bases = {"vit": ViTAdapterNet, "uniperceiver": UniPerceiverAdapterNet}
        if spec["base"] not in bases:
            raise ArchError(f"unknown ViT-Adapter base {spec['base']!r}; allowed: {', '.join(bases)}")
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'vit-adapter'; allowed: {', '.join(TAPS)}")
        super().__init__(bases[spec["base"]](spec), spec, tap, arch if isinstance(arch, str) else None)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # DeiT-B and AugReg-B adapters differ only in pos_embed's pre-training grid (and the pixel
        # normalization): name the arch that fits instead of a bare size mismatch
        pos = state.get("pos_embed")
        own = self.net.state_dict().get("pos_embed")
        if isinstance(pos, Tensor) and own is not None and pos.ndim == 3 and pos.shape != own.shape:
            grid = math.isqrt(pos.shape[1] - 1)
            fits = [name for name, a in ARCHS.items()
                    if a.get("base", "vit") == "vit" and a["embed_dim"] == pos.shape[2]
                    and a.get("pretrain_size", 224) == grid * PATCH and a["depth"] == self.spec["depth"]]
            raise ValueError(f"{type(self).__name__}: the checkpoint's pos_embed {tuple(pos.shape)} is for "
                             f"pretrain_size {grid * PATCH} ({grid}x{grid} + cls), this arch "
                             f"({self.arch_name or 'mapping'}) has {tuple(own.shape)}"
                             + (f"; use arch {' or '.join(fits)}" if fits else ""))
        return state


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> ViTAdapter:
    # any geometry runs (padded to multiples of 32; positions resized as the official code does);
    # the geometry only matters to num_tokens
    return ViTAdapter(arch, tap)
