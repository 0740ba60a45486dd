"""The Uni-Perceiver ViT under ViT-Adapter (arch `uniperceiver-adapter-l`), in plain PyTorch.

Written from czczup/ViT-Adapter segmentation/mmseg_custom/models/backbones/uniperceiver_adapter.py
(UniPerceiverAdapter) and base/uniperceiver.py (UnifiedBertEncoder, BertLayer, VisualPatchEmbedding),
read for facts only; the key layout is in vit_adapter.py's docstring. The family's builder,
vit_adapter.ViTAdapter, picks this network for archs with `base: uniperceiver`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vlmswap.vision.adapter import PATCH, AdapterNet, Attention, resize_pos_grid

__all__ = ["BertLayer", "UniPerceiverAdapterNet"]

UNIPERCEIVER_NORM_EPS = 1e-5   # UnifiedBertEncoder: plain nn.LayerNorm, shared with the adapter


class BertLayer(nn.Module):
    """base/uniperceiver.py BertLayer: x + gamma_1 * attn(norm1(x)), x + gamma_2 * ffn(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, "in_proj", "out_proj")
        self.linear1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.act_fn = nn.GELU()
        self.linear2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1 = nn.LayerNorm(dim, eps=UNIPERCEIVER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=UNIPERCEIVER_NORM_EPS)
        self.gamma_1 = nn.Parameter(torch.zeros(dim))
        self.gamma_2 = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.gamma_1 * self.self_attn(self.norm1(x))
        return x + self.gamma_2 * self.linear2(self.act_fn(self.linear1(self.norm2(x))))


class UniPerceiverAdapterNet(AdapterNet):
    """UniPerceiverAdapter: the keys of `backbone.` in the Uni-Perceiver-L UperNet checkpoint."""

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__()
        dim, depth = int(spec["embed_dim"]), int(spec["depth"])
        grid = int(spec["pretrain_size"]) // PATCH
        self.layers = nn.ModuleList(BertLayer(dim, int(spec["num_heads"]), float(spec["mlp_ratio"]))
                                    for _ in range(depth))
        self.visual_embed = nn.Module()
        self.visual_embed.embeddings_norm = nn.LayerNorm(dim, eps=UNIPERCEIVER_NORM_EPS)
        self.visual_embed.patch_embed = nn.Module()
        self.visual_embed.patch_embed.spatial_pos_embed = nn.Embedding(grid * grid, dim)
        self.visual_embed.patch_embed.temporal_pos_embed = nn.Embedding(8, dim)
        self.visual_embed.patch_embed.proj = nn.Conv2d(3, dim, PATCH, PATCH)
        self._build_adapter(dim, int(spec["conv_inplane"]), int(spec["deform_num_heads"]), int(spec["n_points"]),
                            float(spec["deform_ratio"]), float(spec["cffn_ratio"]), float(spec["init_values"]),
                            UNIPERCEIVER_NORM_EPS, spec["interaction_indexes"], depth)

    def embed(self, pixels: Tensor) -> tuple[Tensor, None]:
        # VisualPatchEmbedding: proj + resized spatial positions + temporal position 0, then LayerNorm
        pe = self.visual_embed.patch_embed
        x = pe.proj(pixels)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + resize_pos_grid(pe.spatial_pos_embed.weight, grid)
        x = x + pe.temporal_pos_embed.weight[0]
        return self.visual_embed.embeddings_norm(x), None

    def vit_blocks(self) -> nn.ModuleList:
        return self.layers


