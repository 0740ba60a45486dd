"""Family "mambavision": NVlabs MambaVision in plain PyTorch, with the official parameter names.

Written from NVlabs/MambaVision @ 7860a50, mambavision/models/mamba_vision.py (read for facts only:
module tree, key names, shapes, constants) and reference/backbones.md section 2, so that the
released `.pth.tar` checkpoints load with strict key matching. The one external piece of the
official model, mamba_ssm's CUDA `selective_scan_fn`, is replaced by `vision.scan.selective_scan`
(same arguments; the official call passes z=None, so no gating inside the scan).

Network (channel-first maps (B, C, H, W) between levels):
- `patch_embed.conv_down`: conv3x3 s2 (no bias), BN(eps 1e-4), ReLU, conv3x3 s2, BN(eps 1e-4),
  ReLU: stride 4.
- `levels[0]`, `levels[1]`: ConvBlocks (conv3x3 + BN + tanh-GELU + conv3x3 + BN, residual).
- `levels[2]`, `levels[3]`: the map is zero-padded on the right/bottom to a multiple of the level's
  window, cut into windows (windows in raster order, raster order inside a window); each window is
  one sequence through the blocks; then the windows are put back and the padding cropped. The
  padding tokens are not masked: they take part in attention and in the scan, as in the official
  code. The first half of each level's blocks mix with MambaVisionMixer, the rest with attention.
- `levels[i].downsample` (i < 3): conv3x3 s2 (no bias) doubling the channels, run AFTER the blocks.
- `norm` (BN), avgpool, `head`: the classifier.

Tap `stage3` = output of `levels[2]` before its downsample: stride 16, 4*dim channels, row-major
tokens (../shared/paper/checkpoint_sources.csv, rows of family mambavision): 196 at 224,
256 at 256, 1024 at 512. `stage2` / `stage4` (the Appendix B stage ablation): the outputs of
`levels[1]` and `levels[3]` before their downsample (stride 8 and 32; 784 and 49 tokens at 224).

`arch` is an official factory name (mamba_vision_T ... mamba_vision_L3_512_21k) or a mapping of
the factory's keyword values for a tiny mini-world member (dim, in_dim, depths, num_heads,
window_size, and optionally mlp_ratio, layer_scale, num_classes, mean, std).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp  # fc1 -> GELU (exact) -> fc2, the official key names
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError, VisionBackbone, as_triple, init_linear_and_norms, resolve_arch
from vlmswap.vision.scan import selective_scan

__all__ = ["ARCHS", "TAPS", "MambaVision", "MambaVisionMixer", "build", "classifier", "window_partition",
           "window_reverse"]

TAPS = ("stage3", "stage2", "stage4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # default_cfgs of every released model (backbones.md 2.3)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The factory defaults of mamba_vision.py (backbones.md 2.2). The *_21k names without a size
# share their 224 architecture; the 512/256 ones change only the windows (and L3 everything).
_SMALL_HEADS, _LARGE_HEADS = [2, 4, 8, 16], [4, 8, 16, 32]
_WINDOWS_224, _WINDOWS_512, _WINDOWS_256 = [8, 8, 14, 7], [8, 8, 32, 16], [8, 8, 16, 8]
_T = {"dim": 80, "in_dim": 32, "depths": [1, 3, 8, 4], "num_heads": _SMALL_HEADS, "window_size": _WINDOWS_224}
_B = {"dim": 128, "in_dim": 64, "depths": [3, 3, 10, 5], "num_heads": _SMALL_HEADS, "window_size": _WINDOWS_224,
      "layer_scale": 1e-5}
_L = {"dim": 196, "in_dim": 64, "depths": [3, 3, 10, 5], "num_heads": _LARGE_HEADS, "window_size": _WINDOWS_224,
      "layer_scale": 1e-5}
_L2 = {**_L, "depths": [3, 3, 12, 5]}
_L3 = {"dim": 256, "in_dim": 64, "depths": [3, 3, 20, 10], "num_heads": _LARGE_HEADS, "layer_scale": 1e-5}
ARCHS: dict[str, dict[str, Any]] = {
    "mamba_vision_T": _T,
    "mamba_vision_T2": {**_T, "depths": [1, 3, 11, 4]},
    "mamba_vision_S": {**_T, "dim": 96, "in_dim": 64, "depths": [3, 3, 7, 5]},
    "mamba_vision_B": _B,
    "mamba_vision_B_21k": _B,
    "mamba_vision_L": _L,
    "mamba_vision_L_21k": _L,
    "mamba_vision_L2": _L2,
    "mamba_vision_L2_512_21k": {**_L2, "window_size": _WINDOWS_512},
    "mamba_vision_L3_256_21k": {**_L3, "window_size": _WINDOWS_256},
    "mamba_vision_L3_512_21k": {**_L3, "window_size": _WINDOWS_512},
}
_ARCH_KEYS = {"dim", "in_dim", "depths", "num_heads", "window_size", "mlp_ratio", "layer_scale", "num_classes",
              "mean", "std"}
D_STATE, D_CONV = 8, 3   # Block builds MambaVisionMixer(d_state=8, d_conv=3, expand=1)


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) with H, W multiples of `window` -> (B * windows, window * window, C): windows in
    raster order, positions in raster order inside each window (official window_partition)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """The inverse of `window_partition`: (B * windows, window * window, C) -> (B, C, height, width)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, height, width)


def _halve(size: int) -> int:
    """Output size of a k3 s2 p1 convolution: floor((size + 2 - 3) / 2) + 1."""
    return (size + 1) // 2


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> tanh-GELU -> conv3x3 -> BN, residual (levels 0 and 1). `gamma` exists only
    with a conv layer scale, which no released model uses (layer_scale_conv=None)."""

    def __init__(self, dim: int, layer_scale: float | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + y


class MambaVisionMixer(nn.Module):
    """The MambaVision token mixer over a (B, L, dim) sequence (expand 1, d_state 8, d_conv 3).

    in_proj (no bias) splits into x and z of dim/2 channels each. x: depthwise conv1d (k3, "same"
    padding, i.e. NOT causal; no bias), SiLU, x_proj -> (dt, B, C); dt_proj is applied with its
    bias and the same bias is passed again as the scan's delta_bias, so the scan sees
    softplus(W dt + 2 bias): the released weights were trained that way (backbones.md 2.1).
    1-D selective scan with A = -exp(A_log), skip D, no z gate. z: its own depthwise conv1d and
    SiLU, no SSM. out_proj (no bias) of concat[y, z].
    """

    def __init__(self, dim: int, d_state: int = D_STATE, d_conv: int = D_CONV):
        super().__init__()
        half = dim // 2
        self.half, self.d_state = half, d_state
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, bias=False)
        self._init_dt()

    @torch.no_grad()
    def _init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        # official dt init (random uniform weight, inverse-softplus log-uniform bias); note that
        # MambaVision._init_weights later zeroes every Linear bias, this one included, as the
        # official model does
        std = self.dt_rank ** -0.5
        self.dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(torch.rand(self.half) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden: Tensor) -> Tensor:
        xz = self.in_proj(hidden).transpose(1, 2)                              # (B, dim, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(F.conv1d(x, self.conv1d_x.weight, self.conv1d_x.bias, padding="same", groups=self.half))
        z = F.silu(F.conv1d(z, self.conv1d_z.weight, self.conv1d_z.bias, padding="same", groups=self.half))
        x_dbl = self.x_proj(x.transpose(1, 2))                                 # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt).transpose(1, 2)                                  # bias applied here ...
        y = selective_scan(x, dt, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
                           self.D.float(), delta_bias=self.dt_proj.bias.float(),  # ... and again here
                           delta_softplus=True)
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention inside a window: qkv (bias), scaled dot product, proj; no q/k norm."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ArchError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm residual block on a window sequence: x + g1 * mixer(norm1(x)), x + g2 * mlp(norm2(x)).
    gamma_1/gamma_2 are parameters only with a layer scale (B, L, L2, L3: 1e-5)."""

    def __init__(self, dim: int, num_heads: int, attention: bool, mlp_ratio: float, layer_scale: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = Attention(dim, num_heads) if attention else MambaVisionMixer(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.mixer(self.norm1(x))
        x = x + (y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + (y if self.gamma_2 is None else self.gamma_2 * y)


def attention_blocks(depth: int) -> range:
    """Which blocks of a mixer level use attention: the last half (official MambaVision.__init__)."""
    return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


class Downsample(nn.Module):
    """conv3x3 s2 p1 without bias, doubling the channels (key `reduction.0.weight`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(x)


class Level(nn.Module):
    """One MambaVision level (the official MambaVisionLayer): conv blocks, or windowed mixer blocks,
    then an optional downsample."""

    def __init__(self, dim: int, depth: int, conv: bool, num_heads: int, window: int, mlp_ratio: float,
                 layer_scale: float | None, downsample: bool):
        super().__init__()
        self.conv, self.window = conv, window
        if conv:
            self.blocks = nn.ModuleList(ConvBlock(dim) for _ in range(depth))
        else:
            attention = attention_blocks(depth)
            self.blocks = nn.ModuleList(Block(dim, num_heads, i in attention, mlp_ratio, layer_scale)
                                        for i in range(depth))
        self.downsample = Downsample(dim) if downsample else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        """The level's output before its downsample, (B, C, H, W)."""
        if self.conv:
            for block in self.blocks:
                x = block(x)
            return x
        _, _, h, w = x.shape
        ws = self.window
        x = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))  # zeros right/bottom, not masked
        hp, wp = x.shape[-2:]
        x = window_partition(x, ws)
        for block in self.blocks:
            x = block(x)
        return window_reverse(x, ws, hp, wp)[:, :, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class MambaVision(VisionBackbone):
    """The official module tree (patch_embed, levels, norm, head). `forward` returns stage-3 tokens;
    `classify` runs the whole classification network."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str = "stage3", num_classes: int | None = None):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'mambavision'; allowed: {', '.join(TAPS)}")
        spec = resolve_arch(arch, ARCHS, {}, {"dim", "in_dim", "depths", "num_heads", "window_size"}, _ARCH_KEYS,
                            "MambaVision")
        dim, in_dim = int(spec["dim"]), int(spec["in_dim"])
        depths = [int(d) for d in spec["depths"]]
        heads = [int(h) for h in spec["num_heads"]]
        windows = [int(w) for w in spec["window_size"]]
        if not len(depths) == len(heads) == len(windows) == 4:
            raise ArchError(f"MambaVision has 4 levels: depths, num_heads, window_size need 4 values each: {spec}")
        mlp_ratio = float(spec.get("mlp_ratio", 4.0))
        layer_scale = spec.get("layer_scale")
        layer_scale = None if layer_scale is None else float(layer_scale)
        num_classes = int(spec.get("num_classes", 1000) if num_classes is None else num_classes)

        self.tap = tap
        self.stage = int(tap[len("stage")])  # 2, 3 or 4: the tapped level, counted from 1
        self.dims = [dim * 2 ** i for i in range(4)]
        self.embed_dim = self.dims[self.stage - 1]
        self.mean = as_triple(spec.get("mean", IMAGENET_MEAN), "mean")
        self.std = as_triple(spec.get("std", IMAGENET_STD), "std")

        self.patch_embed = nn.Module()
        self.patch_embed.conv_down = nn.Sequential(
            nn.Conv2d(3, in_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(in_dim, eps=1e-4), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU())
        self.levels = nn.ModuleList(
            Level(self.dims[i], depths[i], conv=i < 2, num_heads=heads[i], window=windows[i], mlp_ratio=mlp_ratio,
                  layer_scale=layer_scale, downsample=i < 3)
            for i in range(4))
        self.norm = nn.BatchNorm2d(self.dims[3])
        self.head = nn.Linear(self.dims[3], num_classes) if num_classes > 0 else nn.Identity()
        # MambaVision._init_weights: the mixer's dt_proj included; LayerNorm and BatchNorm (1, 0)
        self.apply(partial(init_linear_and_norms, norms=(nn.LayerNorm, nn.BatchNorm2d)))

    def stage3(self, pixels: Tensor) -> Tensor:
        """(B, 4*dim, H/16, W/16): the output of levels[2] before its downsample."""
        return self.stage_output(pixels, 3)

    def stage_output(self, pixels: Tensor, stage: int) -> Tensor:
        """(B, 2^(k-1)*dim, H/2^(k+1), W/2^(k+1)): the output of levels[k-1] before its downsample."""
        x = self.patch_embed.conv_down(pixels)
        for level in self.levels[: stage - 1]:
            x = level(x)
        return self.levels[stage - 1].forward_blocks(x)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.stage_output(pixels, self.stage).flatten(2).transpose(1, 2)  # row-major tokens (B, h*w, C_k)

    def classify(self, pixels: Tensor) -> Tensor:
        """Class logits of the full classification network."""
        x = self.patch_embed.conv_down(pixels)
        for level in self.levels:
            x = level(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.norm(x), 1), 1))

    def num_tokens(self, width: int, height: int) -> int:
        for _ in range(self.stage + 1):  # two stem convs, then the downsamples of the levels before the tap
            width, height = _halve(width), _halve(height)
        return width * height

    def official_checkpoint(self, kind: str, weights: Mapping[str, Tensor], head: Mapping[str, Tensor],
                            info: Mapping[str, Any]) -> tuple[Any, str]:
        # the timm trainer's .pth.tar: {epoch, arch, state_dict, state_dict_ema, optimizer, version,
        # args (an argparse Namespace), metric} (backbones.md 2.4)
        if kind != "classification":
            return super().official_checkpoint(kind, weights, head, info)
        state = {**weights, **head}
        return {"epoch": info.get("epochs", 1) - 1, "arch": "mamba_vision_mini", "state_dict": state,
                "state_dict_ema": state, "optimizer": {}, "version": 2,
                "args": argparse.Namespace(**info), "metric": info.get("accuracy")}, "torch"

    def non_backbone_key(self, key: str) -> bool:
        # - head.* and norm.* (the BatchNorm before pooling): the classifier, after levels[3].
        # - BatchNorm's num_batches_tracked: a training counter, unused by the eval-mode forward;
        #   the official loader also tolerates its absence (_load_state_dict drops it from the
        #   missing keys).
        # Everything else, levels[2].downsample and levels[3] included, must match: it pins the layout.
        return key.startswith(("head.", "norm.")) or key.endswith(".num_batches_tracked")

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # the official _load_checkpoint strips a DataParallel `module.` prefix and keeps only the
        # `encoder.`-prefixed keys of a wrapped model; keys that become non-backbone are dropped again
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        if state and min(state).startswith("encoder"):
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        return {k: v for k, v in state.items() if not self.non_backbone_key(k)}


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[MambaVision, Callable[[Tensor], Tensor]]:
    """The classification network mini members are pretrained as, and its logits."""
    model = MambaVision(arch, "stage3", num_classes=num_classes)
    return model, model.classify


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> MambaVision:
    # convolutions plus padded windows: any geometry runs; it only matters to num_tokens
    return MambaVision(arch, tap)
