"""Family "vitdet": the ViTDet backbone (plain ViT of a detectron2 Mask R-CNN) in plain PyTorch.

Written from facebookresearch/detectron2 @ 02b5c4e, `detectron2/modeling/backbone/vit.py` (ViT,
Block, Attention), `detectron2/modeling/backbone/utils.py` (window_partition/unpartition,
get_rel_pos, add_decomposed_rel_pos, get_abs_pos, PatchEmbed), `configs/common/models/
mask_rcnn_vitdet.py` and `projects/ViTDet/configs/COCO/mask_rcnn_vitdet_{b,l}_100ep.py,
mask_rcnn_vitdet_h_75ep.py`, read for facts only (module tree, key names, shapes, constants), and
reference/backbones.md section 5.1.

Network (tokens kept as (B, H, W, C) maps, as detectron2 does):
- `patch_embed.proj`: Conv2d(3, C, kernel 16, stride 16), no padding; no cls token at run time.
- `pos_embed` (1, 197, C): MAE's, for 224 inputs with a cls entry. At run time the cls entry is
  dropped and the 14x14 grid is resized bicubically (align_corners False) to the token grid.
- `blocks[i]`: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6, MLP ratio 4, GELU.
  Window blocks: norm1's output is zero-padded at the bottom/right to a multiple of 14, cut into
  14x14 windows attended separately (the padding is not masked), put back and cropped. Global
  blocks (B 2,5,8,11; L 5,11,17,23; H 7,15,23,31) attend over the whole map.
- attention: qkv with bias, scale head_dim^-0.5, plus the decomposed relative position bias of
  MViTv2: q . Rh[qh - kh] + q . Rw[qw - kw]. Tables hold 2S - 1 rows for S = 14 (window blocks)
  or S = img_size / 16 = 64 (global blocks, img_size 1024 in every released config); they are
  resized linearly when the attended size differs (get_rel_pos).
- no final norm: `last_feat` is the last block's output; the SimpleFeaturePyramid (simfp_2..5),
  the RPN and the ROI heads come after it.

Tap `last-block` (../shared/paper/checkpoint_sources.csv, rows of family vitdet): `last_feat`, the
stride-16 map, as row-major tokens: 64 x 64 = 4096 at 1024 x 1024.

Checkpoints are the detectron2 model zoo `.pkl` files: {"model": {name: numpy array}, ...} with
the backbone under `backbone.net.` (the detector is GeneralizedRCNN -> SimpleFeaturePyramid ->
ViT); detectron2's checkpointer converts the arrays to tensors, and so does `adapt_state_dict`.
Pixel normalization: detectron2 normalizes RGB 0-255 inputs with mean (123.675, 116.28, 103.53)
and std (58.395, 57.12, 57.375), i.e. exactly the ImageNet mean/std on 0-1 inputs.

`arch` is vitdet-b / vitdet-l / vitdet-h or a mapping for a tiny mini-world member: embed_dim,
depth, num_heads, global_blocks, and optionally patch_size, window_size, img_size,
pretrain_img_size, mlp_ratio, mean, std.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Mlp  # fc1 -> GELU (exact) -> fc2, the official key names
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import VisionBackbone, as_triple, init_linear_and_norms, resolve_arch

__all__ = ["ARCHS", "TAPS", "ViT", "ViTDet", "build", "rel_pos_bias", "window_partition", "window_unpartition"]

TAPS = ("last-block",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # = constants.imagenet_rgb256_mean / 255
IMAGENET_STD = (0.229, 0.224, 0.225)   # = constants.imagenet_rgb256_std / 255

# mask_rcnn_vitdet.py (B) and the L/H overrides; the window blocks are all but `global_blocks`.
ARCHS: dict[str, dict[str, Any]] = {
    "vitdet-b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_blocks": [2, 5, 8, 11]},
    "vitdet-l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_blocks": [5, 11, 17, 23]},
    "vitdet-h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_blocks": [7, 15, 23, 31]},
}
_DEFAULTS = {"patch_size": 16, "window_size": 14, "img_size": 1024, "pretrain_img_size": 224, "mlp_ratio": 4.0}
_ARCH_KEYS = {"embed_dim", "depth", "num_heads", "global_blocks", "mean", "std", *_DEFAULTS}
NORM_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6)

# Keys of the detector that are not the tapped ViT: the simple feature pyramid (and its
# parameter-free top block), the RPN, the box/mask heads, and the pixel normalization buffers
# (non-persistent in current detectron2, tolerated if an older file carries them).
_DETECTOR_PREFIXES = ("backbone.simfp_", "backbone.top_block.", "proposal_generator.", "roi_heads.")
_DETECTOR_KEYS = ("pixel_mean", "pixel_std")


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C) after zero padding at the bottom/right to
    multiples of `window`; windows in raster order. Also returns the padded (Hp, Wp)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """The inverse of `window_partition`, cropping the padding: -> (B, H, W, C)."""
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, :size[0], :size[1]]


def _relative_table(table: Tensor, size: int) -> Tensor:
    """(size, size, head_dim): row [i, j] = the embedding of offset i - j (get_rel_pos for equal
    query and key sizes), the table linearly resized to 2*size - 1 rows if it has another length."""
    rows = 2 * size - 1
    if table.shape[0] != rows:
        table = F.interpolate(table.t().unsqueeze(0), size=rows, mode="linear").squeeze(0).t()
    offsets = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return table[offsets.to(table.device)]


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]) -> Tensor:
    """The decomposed relative position bias (add_decomposed_rel_pos) for queries q
    (N, h*w, head_dim) over an (h, w) map: (N, h*w, h*w), bias[(qh,qw), (kh,kw)] =
    q . Rh[qh - kh] + q . Rw[qw - kw]. Uses the unscaled q, as the official code does."""
    h, w = size
    Rh, Rw = _relative_table(rel_pos_h, h), _relative_table(rel_pos_w, w)
    r_q = q.reshape(q.shape[0], h, w, -1)
    bias_h = torch.einsum("nhwc,hkc->nhwk", r_q, Rh)                   # over key rows
    bias_w = torch.einsum("nhwc,wkc->nhwk", r_q, Rw)                   # over key columns
    return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(q.shape[0], h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) map with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, rel_pos_size: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))  # rel_pos_zero_init
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        # softmax(q k^T * head_dim^-0.5 + bias) v, the official formula; SDPA's default scale is
        # the same, and it adds a float mask to the scaled scores before the softmax
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block; window attention when `window` > 0, global attention otherwise."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = Attention(dim, num_heads, rel_pos_size=window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            h, w = x.shape[1:3]
            x, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(x), self.window, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """detectron2's ViT (the `backbone.net` of a ViTDet detector): (B, 3, H, W) -> (B, H/16, W/16, C)."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, global_blocks: list[int], patch_size: int,
                 window_size: int, img_size: int, pretrain_img_size: int, mlp_ratio: float):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, (pretrain_img_size // patch_size) ** 2 + 1, embed_dim))
        grid = img_size // patch_size  # sizes the global blocks' rel-pos tables
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_blocks else window_size, grid)
            for i in range(depth))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_linear_and_norms)  # ViT._init_weights

    def abs_pos(self, h: int, w: int) -> Tensor:
        """get_abs_pos: (1, h, w, C) from the pretraining grid without its cls entry."""
        pos = self.pos_embed[:, 1:]
        size = math.isqrt(pos.shape[1])
        grid = pos.reshape(1, size, size, -1)
        if (size, size) == (h, w):
            return grid
        resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embed.proj(pixels).permute(0, 2, 3, 1)             # (B, H, W, C)
        x = x + self.abs_pos(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        return x                                                           # last_feat, channel-last


class _DetectorLayout(nn.Module):
    """The key layout of a detectron2 checkpoint around the ViT: GeneralizedRCNN.backbone
    (SimpleFeaturePyramid).net. A view over the same parameters, built for loading only."""

    def __init__(self, net: ViT):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = net


class ViTDet(VisionBackbone):
    """The ViT of a ViTDet detector, tapped at `last_feat` (the last block's output)."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str = "last-block"):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'vitdet'; allowed: {', '.join(TAPS)}")
        spec = resolve_arch(arch, ARCHS, _DEFAULTS, {"embed_dim", "depth", "num_heads", "global_blocks"}, _ARCH_KEYS,
                            "ViTDet")
        self.tap = tap
        self.patch_size = int(spec["patch_size"])
        self.embed_dim = int(spec["embed_dim"])
        self.mean = as_triple(spec.get("mean", IMAGENET_MEAN), "mean")
        self.std = as_triple(spec.get("std", IMAGENET_STD), "std")
        self.net = ViT(self.embed_dim, int(spec["depth"]), int(spec["num_heads"]),
                       [int(i) for i in spec["global_blocks"]], self.patch_size, int(spec["window_size"]),
                       int(spec["img_size"]), int(spec["pretrain_img_size"]), float(spec["mlp_ratio"]))

    def forward(self, pixels: Tensor) -> Tensor:
        return self.net(pixels).flatten(1, 2)                              # (B, H*W, C), row-major

    def num_tokens(self, width: int, height: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def official_module(self) -> nn.Module:
        return _DetectorLayout(self.net)

    def official_checkpoint(self, kind: str, weights: Mapping[str, Tensor], head: Mapping[str, Tensor],
                            info: Mapping[str, Any]) -> tuple[Any, str]:
        # detectron2 model zoo .pkl: a plain pickle {"model": {name: numpy array}, "__author__": ...}
        # (backbones.md 5.1); `weights` already carry the backbone.net. prefix (official_module)
        if kind != "detection":
            raise ValueError(f"ViTDet checkpoints are detectron2 detectors; no official {kind} layout "
                             "(pretrain it for detection)")
        state = {**weights, **{f"roi_heads.box_predictor.{k}": v for k, v in head.items()}}
        arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
        return {"model": arrays, "__author__": "vlmswap mini world", "matching_heuristics": False}, "pickle"

    def non_backbone_key(self, key: str) -> bool:
        # The feature pyramid, RPN and ROI heads work on `last_feat` and never change it. Any
        # other key outside backbone.net (or missing from it) is a layout error, not ignored.
        return key.startswith(_DETECTOR_PREFIXES) or key in _DETECTOR_KEYS

    def adapt_state_dict(self, state: dict[str, Any]) -> dict[str, Tensor]:
        # detectron2 stores numpy arrays; its checkpointer turns them into tensors
        # (detection_checkpoint.py, _convert_ndarray_to_tensor)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for k, v in state.items()}


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> ViTDet:
    # any geometry runs (pos-embed and rel-pos tables are resized as detectron2 does); the
    # geometry only matters to num_tokens
    return ViTDet(arch, tap)
