"""Family "beit-adapter": BEiT-Adapter (BEiT / BEiTv2 large, ADE20K UperNet and Mask2Former) in plain PyTorch.

Written from czczup/ViT-Adapter @ fd64a5190f9f4530e8e5961cc87b2a3ad591190b, read for facts only:
- segmentation/mmseg_custom/models/backbones/beit_adapter.py (BEiTAdapter),
- segmentation/mmseg_custom/models/backbones/base/beit.py (BEiT, Block, Attention, PatchEmbed),
- segmentation/mmseg_custom/models/backbones/adapter_modules.py (InteractionBlockWithCls and the
  modules shared with ViT-Adapter, implemented in vlmswap.vision.adapter and imported here),
- segmentation/configs/ade20k/upernet_beit_adapter_large_640_160k_ade20k_ss.py,
  mask2former_beit_adapter_large_640_160k_ade20k_ss.py, mask2former_beit_adapter_large_896_80k_ade20k_ss.py,
  mask2former_beitv2_adapter_large_896_80k_ade20k_ss.py (identical backbone dicts apart from img_size),
- reference/backbones.md section 5.2.

Network (state_dict keys under `backbone.`; the adapter parts are those of adapter.py):
- `patch_embed.proj` (Conv2d, kernel = stride = 16), `cls_token` (1, 1, C). No absolute position
  embedding (use_abs_pos_emb=False in every config: BEiT has no `pos_embed` key), no shared
  relative position bias, no final norm.
- `blocks.N` (24 for large, C 1024, 16 heads): x + gamma_1 * attn(norm1(x)), then x + gamma_2 *
  mlp(norm2(x)); LayerNorm eps 1e-6, MLP ratio 4 (`mlp.fc1`/`mlp.fc2`), GELU; layer scale
  `gamma_1`/`gamma_2` (init_values 1e-6 in the configs).
- attention: `qkv` without bias plus `q_bias` and `v_bias` (k gets a zero bias), scale
  head_dim^-0.5, plus a per-block relative position bias: `relative_position_bias_table`
  ((2S-1)^2 + 3, heads) for the S x S window S = img_size / 16 (40 at 640, 56 at 896), the last three
  rows for cls->token, token->cls and cls->cls, looked up through `relative_position_index`
  ((S*S + 1)^2, int64), a buffer registered persistent, so it is in the official module's
  state_dict (and in ours). The released checkpoints leave it out, though: mmseg reports "missing
  keys in source state_dict: backbone.blocks.N.attn.relative_position_index" for
  mask2former_beit(v2)_adapter_large_896_80k_ade20k and others (czczup/ViT-Adapter issues #16,
  #51, #57, #74), and the official non-strict load then keeps the index computed at construction.
  Loading does the same here: an absent index is filled with the computed one, a present one is
  loaded as is (as mmseg would); every other key is matched strictly.
- the interactions are InteractionBlockWithCls: the cls token joins the patch tokens for the ViT
  blocks only (injector and extractors see patch tokens); the cls token is never position-embedded.
  The adapter's LayerNorms use BEiT's norm_layer (eps 1e-6), its injector gamma init_values 1e-6.

Tap `adapter-stride32`: f4 (stride 32, after norm4) as row-major tokens: 20 x 20 = 400 at 640,
28 x 28 = 784 at 896.

Input sizes: the official attention reshapes the looked-up bias to (S*S + 1) x (S*S + 1), so it
only runs on img_size x img_size inputs (slide inference with img_size crops). At that size this
module is exact. Any other size (after the zero padding to multiples of 32 that vit_adapter.py
documents) is an extension the official code does not have: the table's (2S-1) x (2S-1) part is
resized bicubically (align_corners False) per head to (2h-1) x (2w-1) for the h x w token grid, the
three cls rows kept, and the index rebuilt for that grid.

Normalization: mmseg img_norm_cfg ImageNet mean/std on 0-255 in all four configs (/255 here).

Arch ids: beit-adapter-l-640 (BEiT-L, img_size 640), beit-adapter-l-896 and beitv2-adapter-l-896
(img_size 896; the BEiTv2 config is the same network). A mapping arch takes embed_dim, depth,
num_heads, deform_num_heads, interaction_indexes, img_size (one side, or [height, width] as the
official PatchEmbed also accepts: the tables are then made for that rectangle), and optionally
conv_inplane, n_points, cffn_ratio, deform_ratio, mlp_ratio, init_values, mean, std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp  # fc1 -> GELU (exact) -> fc2, the official key names
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import init_linear_and_norms, resolve_arch
from vlmswap.vision.adapter import IMAGENET_MEAN, IMAGENET_STD, PATCH, TAPS, AdapterBackbone, AdapterNet

__all__ = ["ARCHS", "TAPS", "BEiTAdapter", "BEiTAdapterNet", "BEiTBlock", "build", "crop_size",
           "relative_position_bias", "relative_position_index"]

_GROUPS_24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
_LARGE = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "deform_num_heads": 16, "deform_ratio": 0.5,
          "interaction_indexes": _GROUPS_24, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
ARCHS: dict[str, dict[str, Any]] = {
    "beit-adapter-l-640": {**_LARGE, "img_size": 640},
    "beit-adapter-l-896": {**_LARGE, "img_size": 896},
    "beitv2-adapter-l-896": {**_LARGE, "img_size": 896},
}
_DEFAULTS = {"conv_inplane": 64, "n_points": 4, "cffn_ratio": 0.25, "deform_ratio": 1.0, "mlp_ratio": 4.0,
             "init_values": 1e-6}
_REQUIRED = {"embed_dim", "depth", "num_heads", "deform_num_heads", "interaction_indexes", "img_size"}
_ARCH_KEYS = _REQUIRED | set(_DEFAULTS) | {"mean", "std"}
NORM_EPS = 1e-6  # BEiT: partial(nn.LayerNorm, eps=1e-6), shared with the adapter


def relative_position_index(height: int, width: int) -> Tensor:
    """((h*w + 1), (h*w + 1)) int64 indices into a ((2h-1)(2w-1) + 3)-row table for an h x w grid
    with a leading cls token: token pairs by their row/column offset (dy + h - 1) * (2w - 1) +
    (dx + w - 1); cls query -> tokens: n - 3, token -> cls key: n - 2, cls -> cls: n - 1."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    dy = rows[:, None] - rows[None, :] + height - 1
    dx = cols[:, None] - cols[None, :] + width - 1
    n = (2 * height - 1) * (2 * width - 1) + 3
    index = torch.empty(height * width + 1, height * width + 1, dtype=torch.long)
    index[1:, 1:] = dy * (2 * width - 1) + dx
    index[0, 1:] = n - 3
    index[1:, 0] = n - 2
    index[0, 0] = n - 1
    return index


def relative_position_bias(table: Tensor, window: tuple[int, int], grid: tuple[int, int],
                           index: Tensor | None = None) -> Tensor:
    """(heads, h*w + 1, h*w + 1) bias for an h x w token grid from a table made for `window`.
    At the window's own size this is the official lookup (through `index`, the stored buffer,
    when given); at any other size the table is first resized (see the module docstring)."""
    (wh, ww), (h, w) = window, grid
    if (h, w) != (wh, ww):
        heads = table.shape[1]
        pairs = table[:-3].reshape(2 * wh - 1, 2 * ww - 1, heads).permute(2, 0, 1)[None]
        pairs = F.interpolate(pairs, size=(2 * h - 1, 2 * w - 1), mode="bicubic", align_corners=False)
        table = torch.cat([pairs[0].permute(1, 2, 0).reshape(-1, heads), table[-3:]], dim=0)
        index = None
    if index is None:
        index = relative_position_index(h, w).to(table.device)
    n = h * w + 1
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


def crop_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an `img_size` given as one side or as [height, width] (BEiT's PatchEmbed
    takes either, through timm's to_2tuple)."""
    if isinstance(img_size, (int, float, str)):
        return int(img_size), int(img_size)
    sides = tuple(int(v) for v in img_size)
    if len(sides) != 2:
        raise ValueError(f"img_size must be one side or [height, width], got {list(img_size)}")
    return sides  # type: ignore[return-value]


class BEiTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1) + 3, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(*window))  # persistent
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        rel = relative_position_bias(self.relative_position_bias_table, self.window, grid,
                                     self.relative_position_index)
        # softmax(q * head_dim^-0.5 k^T + rel) v: SDPA's default scale, the float mask added before softmax
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rel.to(q.dtype)[None])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class BEiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: tuple[int, int], init_values: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = BEiTAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, 1 + h*w, C), the cls token first."""
        x = x + self.gamma_1 * self.attn(self.norm1(x), grid)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class BEiTAdapterNet(AdapterNet):
    """BEiTAdapter: the keys of `backbone.` in the BEiT-Adapter UperNet / Mask2Former checkpoints."""

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__()
        dim, depth = int(spec["embed_dim"]), int(spec["depth"])
        height, width = crop_size(spec["img_size"])
        self.window = (height // PATCH, width // PATCH)     # PatchEmbed.patch_shape
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            BEiTBlock(dim, int(spec["num_heads"]), float(spec["mlp_ratio"]), self.window, float(spec["init_values"]))
            for _ in range(depth))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_linear_and_norms)  # BEiT._init_weights; the relative position tables stay zero
        self._build_adapter(dim, int(spec["conv_inplane"]), int(spec["deform_num_heads"]), int(spec["n_points"]),
                            float(spec["deform_ratio"]), float(spec["cffn_ratio"]), float(spec["init_values"]),
                            NORM_EPS, spec["interaction_indexes"], depth)

    def embed(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        return x, self.cls_token.expand(x.shape[0], -1, -1)

    def vit_blocks(self) -> nn.ModuleList:
        return self.blocks


class BEiTAdapter(AdapterBackbone):
    """BEiT-Adapter tapped at `adapter-stride32`."""

    family = "beit-adapter"

    def __init__(self, arch: str | Mapping[str, Any], tap: str = "adapter-stride32"):
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'beit-adapter'; allowed: {', '.join(TAPS)}")
        spec = resolve_arch(arch, ARCHS, _DEFAULTS, _REQUIRED, _ARCH_KEYS, "BEiT-Adapter")
        super().__init__(BEiTAdapterNet(spec), spec, tap, arch if isinstance(arch, str) else None)

    @property
    def img_size(self) -> int | tuple[int, int]:
        """The crop size the relative position tables were made for (exact official behaviour): an
        int for a square crop, else (height, width)."""
        height, width = crop_size(self.spec["img_size"])
        return height if height == width else (height, width)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # released checkpoints carry no relative_position_index (module docstring): where a block's
        # table is there and its index is not, use the index the official constructor computes
        state = dict(state)
        for name, module in self.net.named_modules():
            if isinstance(module, BEiTAttention) and f"{name}.relative_position_bias_table" in state:
                state.setdefault(f"{name}.relative_position_index", relative_position_index(*module.window))
        # the tables fix the crop size (640 or 896): name the arch that fits instead of a bare mismatch
        key = "blocks.0.attn.relative_position_bias_table"
        table, own = state.get(key), self.net.state_dict().get(key)
        if isinstance(table, Tensor) and own is not None and table.shape != own.shape:
            side = (round((table.shape[0] - 3) ** 0.5) + 1) // 2
            fits = [n for n, a in ARCHS.items() if a["img_size"] == side * PATCH and a["embed_dim"] == self.embed_dim]
            raise ValueError(f"{type(self).__name__}: the checkpoint's {key} {tuple(table.shape)} is for a "
                             f"{side}x{side} window (img_size {side * PATCH}), this arch "
                             f"({self.arch_name or 'mapping'}) has {tuple(own.shape)} (img_size {self.img_size})"
                             + (f"; use arch {' or '.join(fits)}" if fits else ""))
        return state


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> BEiTAdapter:
    # img_size x img_size is the official geometry; others run with resized relative position
    # tables (module docstring); the geometry only matters to num_tokens
    return BEiTAdapter(arch, tap)
