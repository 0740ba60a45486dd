"""The adapter half of ViT-Adapter and BEiT-Adapter, shared by every network of the family:
multi-scale deformable attention (MSDeformAttn), the spatial prior module, the injector /
extractor interactions, the f1..f4 outputs, and the backbone wrapper tapped at `adapter-stride32`.

Written from czczup/ViT-Adapter (segmentation/mmseg_custom/models/backbones/adapter_modules.py,
detection/ops/modules/ms_deform_attn.py and ms_deform_attn_core_pytorch); the module tree, key
names and the order of operations are described in vit_adapter.py's docstring. The ViT under the
adapter is each network's own file: vit_adapter.py (DeiT / AugReg), uniperceiver_adapter.py
(Uni-Perceiver), beit_adapter.py (BEiT).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmswap.vision.base import VisionBackbone, as_triple, init_linear_and_norms

__all__ = ["TAPS", "AdapterBackbone", "AdapterNet", "Attention", "ConvFFN", "Extractor", "Injector",
           "InteractionBlock", "MSDeformAttn", "SpatialPriorModule", "deformable_sample", "level_shapes",
           "pad_to_multiple", "reference_points", "resize_pos_grid"]

TAPS = ("adapter-stride32",)
STRIDE = 32                             # the coarsest map: the tap, and the size divisor
PATCH = 16                              # the ViT patch; the adapter's levels are fixed around it
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # mmseg (123.675, 116.28, 103.53) / 255
IMAGENET_STD = (0.229, 0.224, 0.225)    # mmseg (58.395, 57.12, 57.375) / 255
HALF = (0.5, 0.5, 0.5)                  # mmseg (127.5, 127.5, 127.5) / 255, the AugReg-B/L configs
BN_EPS = 1e-5                           # nn.SyncBatchNorm default


# --- multi-scale deformable attention ---------------------------------------------------------------

def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """The (H, W) of c2, c3, c4 (strides 8, 16, 32) for an input whose sides are multiples of 32;
    c3's grid is also the ViT token grid (deform_inputs)."""
    return [(height // 8, width // 8), (height // 16, width // 16), (height // 32, width // 32)]


def reference_points(shapes: Sequence[tuple[int, int]], device=None, dtype=torch.float32) -> Tensor:
    """(sum H*W, 2): the (x, y) pixel centres ((j + 0.5) / W, (i + 0.5) / H) of each map, row-major,
    maps in order (get_reference_points)."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        points.append(torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], -1).reshape(h * w, 2))
    return torch.cat(points, 0)


def deformable_sample(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """Multi-scale deformable attention without the projections.

    value (B, S, M, D) holds the maps of `shapes` (row-major, in order; S = sum H*W) for M heads;
    locations (B, Q, M, L, P, 2) are (x, y) in [0, 1] with pixel centres at (i + 0.5) / size;
    weights (B, Q, M, L, P). Each location is sampled bilinearly from its level with zeros outside
    the map (grid_sample, align_corners False), weighted and summed over levels and points:
    returns (B, Q, M * D) in value's dtype. The arithmetic is at least float32, as the official op
    casts half-precision inputs (MSDeformAttnFunction is custom_fwd(cast_inputs=torch.float32)): in
    bfloat16 a location in [0, 1] would be off by up to ~0.2 pixels on a 112-wide map."""
    out_dtype = value.dtype
    work = torch.promote_types(value.dtype, torch.float32)
    value, locations, weights = value.to(work), locations.to(work), weights.to(work)
    b, _, m, d = value.shape
    q, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    if len(shapes) != levels:
        raise ValueError(f"{levels} sampling levels but {len(shapes)} value maps")
    grid = 2 * locations - 1                                   # grid_sample's [-1, 1] coordinates
    per_level = value.split([h * w for h, w in shapes], dim=1)
    out = value.new_zeros(b * m, d, q)
    for level, ((h, w), v) in enumerate(zip(shapes, per_level)):
        maps = v.permute(0, 2, 3, 1).reshape(b * m, d, h, w)
        g = grid[:, :, :, level].transpose(1, 2).reshape(b * m, q, points, 2)
        sampled = F.grid_sample(maps, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*M, D, Q, P)
        a = weights[:, :, :, level].transpose(1, 2).reshape(b * m, 1, q, points)
        out = out + (sampled * a).sum(-1)
    return out.view(b, m * d, q).transpose(1, 2).to(out_dtype)


class MSDeformAttn(nn.Module):
    """Deformable attention of queries over `n_levels` value maps (Deformable DETR's MSDeformAttn,
    with ViT-Adapter's `ratio` shrinking the value dimension)."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, ratio: float):
        super().__init__()
        value_dim = int(d_model * ratio)
        if d_model % n_heads or value_dim % n_heads:
            raise ValueError(f"MSDeformAttn: d_model {d_model} and value dim {value_dim} must divide by "
                             f"n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # _reset_parameters: zero offset weights, offset biases on a circle of head directions
        # (scaled to the unit square, times point index + 1), uniform attention, xavier projections
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        direction = torch.stack([angle.cos(), angle.sin()], -1)
        direction = direction / direction.abs().amax(-1, keepdim=True)
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        bias = direction[:, None, None, :] * scale[None, None, :, None]              # (M, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, points: Tensor, feat: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        """query (B, Q, C) at reference `points` (Q, 2), attending over `feat` (B, S, C) laid out as
        the maps `shapes` -> (B, Q, C)."""
        b, q, _ = query.shape
        if sum(h * w for h, w in shapes) != feat.shape[1]:
            raise ValueError(f"MSDeformAttn: {feat.shape[1]} value tokens do not fill the maps {list(shapes)}")
        m, levels, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat).view(b, feat.shape[1], m, -1)
        offsets = self.sampling_offsets(query).view(b, q, m, levels, p, 2)
        weights = self.attention_weights(query).view(b, q, m, levels * p).softmax(-1).view(b, q, m, levels, p)
        work = torch.promote_types(offsets.dtype, torch.float32)             # see deformable_sample
        normalizer = torch.tensor([[w, h] for h, w in shapes], device=query.device, dtype=work)
        locations = points.to(work)[None, :, None, None, None, :] + offsets.to(work) / normalizer[:, None, :]
        return self.output_proj(deformable_sample(value, shapes, locations, weights))


# --- the adapter modules -----------------------------------------------------------------------------

class DWConv(nn.Module):
    """A 3x3 depthwise convolution applied separately to each map of a concatenated token sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        b, _, c = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([self.dwconv(part.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
                          for part, (h, w) in zip(parts, shapes)], dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Injector(nn.Module):
    """ViT tokens attend to the spatial prior (3 levels); the result is added with a learned scale."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, eps: float, init_values: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=eps)
        self.feat_norm = nn.LayerNorm(dim, eps=eps)
        self.attn = MSDeformAttn(dim, 3, heads, points, ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor, points: Tensor, c: Tensor, c_shapes: Sequence[tuple[int, int]]) -> Tensor:
        return x + self.gamma * self.attn(self.query_norm(x), points, self.feat_norm(c), c_shapes)


class Extractor(nn.Module):
    """The spatial prior attends to the ViT tokens (1 level), then a ConvFFN; both residual."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, eps: float, cffn_ratio: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=eps)
        self.feat_norm = nn.LayerNorm(dim, eps=eps)
        self.attn = MSDeformAttn(dim, 1, heads, points, ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, c: Tensor, points: Tensor, x: Tensor, grid: tuple[int, int],
                c_shapes: Sequence[tuple[int, int]]) -> Tensor:
        c = c + self.attn(self.query_norm(c), points, self.feat_norm(x), [grid])
        return c + self.ffn(self.ffn_norm(c), c_shapes)


class InteractionBlock(nn.Module):
    """injector -> a group of ViT blocks -> extractor (-> 2 extra extractors on the last one).
    With a cls token (BEiT: InteractionBlockWithCls, same parameters) the token is put in front
    of the patch tokens for the blocks only."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, eps: float, cffn_ratio: float,
                 init_values: float, extra_extractor: bool):
        super().__init__()
        self.injector = Injector(dim, heads, points, ratio, eps, init_values)
        self.extractor = Extractor(dim, heads, points, ratio, eps, cffn_ratio)
        self.extra_extractors = (nn.Sequential(*(Extractor(dim, heads, points, ratio, eps, cffn_ratio)
                                                 for _ in range(2))) if extra_extractor else None)

    def forward(self, x: Tensor, c: Tensor, cls: Tensor | None, blocks: Sequence[nn.Module], grid: tuple[int, int],
                c_shapes: Sequence[tuple[int, int]], x_points: Tensor, c_points: Tensor
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        x = self.injector(x, x_points, c, c_shapes)
        if cls is not None:
            x = torch.cat([cls, x], dim=1)
        for block in blocks:
            x = block(x, grid)
        if cls is not None:
            cls, x = x[:, :1], x[:, 1:]
        extractors = [self.extractor, *(self.extra_extractors or ())]
        for extractor in extractors:
            c = extractor(c, c_points, x, grid, c_shapes)
        return x, c, cls


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Convolutional maps at strides 4/8/16/32, each projected to the ViT width."""

    def __init__(self, inplanes: int, dim: int):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes, 1),
                                  *_conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, pixels: Tensor, with_c1: bool = True) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """c1 as a (B, C, H/4, W/4) map (None unless `with_c1`), c2..c4 as (B, HW, C) tokens."""
        s1 = self.stem(pixels)
        s2 = self.conv2(s1)
        s3 = self.conv3(s2)
        s4 = self.conv4(s3)
        c1 = self.fc1(s1) if with_c1 else None
        return (c1, *(fc(s).flatten(2).transpose(1, 2) for fc, s in ((self.fc2, s2), (self.fc3, s3), (self.fc4, s4))))


def pad_to_multiple(pixels: Tensor, multiple: int = STRIDE) -> Tensor:
    """Zero padding at the bottom/right up to multiples of `multiple` (none if already there)."""
    h, w = pixels.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    return F.pad(pixels, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixels


class AdapterNet(nn.Module):
    """The adapter around a plain ViT. A subclass builds the ViT parts under their official names
    and then calls `_build_adapter`; it provides `embed` and `vit_blocks`."""

    interaction_indexes: list[list[int]]

    def _build_adapter(self, dim: int, conv_inplane: int, deform_heads: int, n_points: int, deform_ratio: float,
                       cffn_ratio: float, init_values: float, eps: float, interaction_indexes: Sequence[Sequence[int]],
                       depth: int) -> None:
        groups = [[int(i) for i in g] for g in interaction_indexes]
        if not groups or any(len(g) != 2 or g[0] > g[1] for g in groups) or groups[0][0] != 0 \
                or groups[-1][1] != depth - 1 or any(a[1] + 1 != b[0] for a, b in zip(groups, groups[1:])):
            raise ValueError(f"interaction_indexes {groups} must cut blocks 0..{depth - 1} into consecutive "
                             "[first, last] groups")
        self.interaction_indexes = groups
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim)
        self.interactions = nn.Sequential(*(
            InteractionBlock(dim, deform_heads, n_points, deform_ratio, eps, cffn_ratio, init_values,
                             extra_extractor=i == len(groups) - 1) for i in range(len(groups))))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1 = nn.BatchNorm2d(dim, eps=BN_EPS)
        self.norm2 = nn.BatchNorm2d(dim, eps=BN_EPS)
        self.norm3 = nn.BatchNorm2d(dim, eps=BN_EPS)
        self.norm4 = nn.BatchNorm2d(dim, eps=BN_EPS)
        for module in (self.up, self.spm, self.interactions):
            module.apply(_init_adapter_weights)
        for module in self.interactions.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def embed(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Patch tokens (B, N, C) with positions, and the cls token (B, 1, C) or None."""
        raise NotImplementedError

    def vit_blocks(self) -> nn.ModuleList | nn.Sequential:
        raise NotImplementedError

    def forward(self, pixels: Tensor, all_levels: bool = False) -> list[Tensor]:
        """[f4] (B, C, H/32, W/32), or [f1, f2, f3, f4] with `all_levels`; the input's sides must
        be multiples of 32 (see `pad_to_multiple`)."""
        b, _, h, w = pixels.shape
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"the adapter needs input sides that are multiples of {STRIDE}, got {h}x{w}")
        c_shapes = level_shapes(h, w)
        grid = c_shapes[1]
        x_points = reference_points([grid], pixels.device)
        c_points = reference_points(c_shapes, pixels.device)
        c1, c2, c3, c4 = self.spm(pixels, with_c1=all_levels)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        x, cls = self.embed(pixels)
        blocks = self.vit_blocks()
        outs = []
        for interaction, (first, last) in zip(self.interactions, self.interaction_indexes):
            x, c, cls = interaction(x, c, cls, blocks[first:last + 1], grid, c_shapes, x_points, c_points)
            outs.append(x.transpose(1, 2).reshape(b, -1, *grid))
        maps = [part.transpose(1, 2).reshape(b, -1, hh, ww)
                for part, (hh, ww) in zip(c.split([hh * ww for hh, ww in c_shapes], dim=1), c_shapes)]
        # the official forward unpacks exactly four outputs; with fewer interactions (tiny archs)
        # the last one plays x4's part
        f4 = self.norm4(maps[2] + F.interpolate(outs[-1], scale_factor=0.5, mode="bilinear", align_corners=False))
        if not all_levels:
            return [f4]
        if len(outs) != 4:
            raise ValueError("all four levels need four interactions")
        f1 = self.norm1(self.up(maps[0]) + c1 + F.interpolate(outs[0], scale_factor=4, mode="bilinear",
                                                              align_corners=False))
        f2 = self.norm2(maps[0] + F.interpolate(outs[1], scale_factor=2, mode="bilinear", align_corners=False))
        f3 = self.norm3(maps[1] + outs[2])
        return [f1, f2, f3, f4]


def _init_adapter_weights(module: nn.Module) -> None:
    # ViTAdapter._init_weights: Linear and norms as the other backbones (BatchNorm included), convs
    # normal with std sqrt(2 / fan_out) and zero bias
    init_linear_and_norms(module, norms=(nn.LayerNorm, nn.BatchNorm2d))
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def resize_pos_grid(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """(g*g, C) positions of a g x g grid -> (1, h*w, C) bicubically resized (align_corners False),
    as _get_pos_embed does (always through F.interpolate, the identity at the same size)."""
    g = math.isqrt(grid.shape[0])
    if g * g != grid.shape[0]:
        raise ValueError(f"{grid.shape[0]} positions are not a square grid")
    maps = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    return F.interpolate(maps, size=size, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)




class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv: str, proj: str):
        super().__init__()
        self.num_heads = num_heads
        self._qkv, self._proj = qkv, proj
        setattr(self, qkv, nn.Linear(dim, 3 * dim))
        setattr(self, proj, nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = getattr(self, self._qkv)(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)           # softmax(q k^T / sqrt(head_dim)) v
        return getattr(self, self._proj)(out.transpose(1, 2).reshape(b, n, c))




# --- the backbone ------------------------------------------------------------------------------------

class AdapterBackbone(VisionBackbone):
    """An adapter network tapped at f4 (stride 32, after norm4), as row-major tokens."""

    family = "vit-adapter"

    def __init__(self, net: AdapterNet, spec: Mapping[str, Any], tap: str, arch_name: str | None):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family {self.family!r}; allowed: {', '.join(TAPS)}")
        self.tap = tap
        self.arch_name = arch_name
        self.spec = dict(spec)
        self.embed_dim = int(spec["embed_dim"])
        self.mean = as_triple(spec.get("mean", IMAGENET_MEAN), "mean")
        self.std = as_triple(spec.get("std", IMAGENET_STD), "std")
        self.net = net

    def forward(self, pixels: Tensor) -> Tensor:
        (f4,) = self.net(pad_to_multiple(pixels, STRIDE))
        return f4.flatten(2).transpose(1, 2)                                # (B, h*w, C), row-major

    def features(self, pixels: Tensor) -> list[Tensor]:
        """The official outputs [f1, f2, f3, f4] (strides 4, 8, 16, 32) of the padded input."""
        return self.net(pad_to_multiple(pixels, STRIDE), all_levels=True)

    def num_tokens(self, width: int, height: int) -> int:
        # pad to multiples of 32; the stem conv (stride 2), the max pool and conv2..conv4 halve it
        # exactly five times (and so do patch_embed (16) and the 0.5 resize)
        return math.ceil(height / STRIDE) * math.ceil(width / STRIDE)

    def official_module(self) -> nn.Module:
        return self.net

    def non_backbone_key(self, key: str) -> bool:
        # BatchNorm's num_batches_tracked (SyncBN in spm and norm1..4): a training counter the
        # eval-mode forward never reads. Everything under `backbone.` else must match, f1..f3's
        # `up`/`norm1..3`/`spm.fc1` included: they are part of the official layout.
        return key.endswith(".num_batches_tracked")


