"""Family "vim": Vision Mamba (Vim) in plain PyTorch, with the official parameter names.

Written from hustvl/Vim @ dd0358a, `vim/models_mamba.py` (VisionMamba, Block, the register_model
factories) and its forked `mamba-1p1p1/mamba_ssm/modules/mamba_simple.py` (Mamba with
bimamba_type "v2", if_divide_out) and `mamba-1p1p1/mamba_ssm/ops/triton/layer_norm.py`
(RMSNorm, rms_norm_ref), read for facts only (module tree, key names, shapes, constants, order of
operations), and reference/backbones.md section 4. The released checkpoints store 415 tensors
for every size (section 4.2) and load here with strict key matching. The fork cannot be used on
a CPU (its non-fused path even drops the backward direction, backbones.md 4.4); the scan is
`vision.scan.selective_scan` and the causal depthwise conv is F.conv1d with left context.

Network (released configs: rms_norm, residual_in_fp32, fused_add_norm, bimamba v2, divide-out,
middle cls token, abs pos embed, no RoPE, if_bidirectional False):
- `patch_embed.proj`: Conv2d(3, D, kernel 16, stride 16; stride 8 for the "-ft" weights), no
  padding: a (H, W) input gives ((H-16)//s + 1) x ((W-16)//s + 1) patches in row-major order.
- `cls_token` inserted at index M // 2 of the M patches; `pos_embed` (1, M+1, D) added after.
  The official PatchEmbed asserts the input size, and the pos_embed is never resampled at run
  time, so a backbone is built for one geometry and refuses other input sizes.
- `layers[i]` ("Add -> RMSNorm -> Mixer"): residual = residual + hidden (the first layer: the
  embeddings), kept in float32; hidden = mixer(norm(residual)).
- mixer: in_proj D -> 4D = (x, z). Forward direction: causal depthwise conv1d (kernel 4) -> SiLU
  -> x_proj -> (dt, B, C), dt_proj (bias inside the scan, softplus) -> selective scan with
  A = -exp(A_log) and D -> * SiLU(z). Backward direction: the same on the reversed sequence (x and
  z) with conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b, reversed back. (fwd + bwd) / 2 -> out_proj.
- `norm_f`: RMSNorm(residual + hidden). `head`: the classifier on the cls token (not used here).

Tap `final-norm` (../shared/paper/checkpoint_sources.csv, rows of family vim): the norm_f output
with the middle cls token dropped, the patches in row-major order: 196 tokens at 224 for stride 16
(cls at 98), 729 = 27 x 27 for stride 8 (cls at 364), since (224 - 16) // 8 + 1 = 27.

`arch` is a named size (vim-t, vim-s, vim-b, vim-t-stride8, vim-s-stride8) or a mapping for a tiny
mini-world member: embed_dim, depth, and optionally patch_size, stride, d_state, num_classes,
mean, std.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import VisionBackbone, as_triple, resolve_arch
from vlmswap.vision.scan import selective_scan

__all__ = ["ARCHS", "TAPS", "BidirectionalMamba", "RMSNorm", "VisionMamba", "build", "classifier"]

TAPS = ("final-norm",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # vim/datasets.py: DeiT preprocessing, timm IMAGENET_DEFAULT_*
IMAGENET_STD = (0.229, 0.224, 0.225)

# The register_model factories of models_mamba.py: depth 24, d_state 16, patch 16 for every size.
ARCHS: dict[str, dict[str, Any]] = {
    "vim-t": {"embed_dim": 192, "depth": 24, "patch_size": 16, "stride": 16},
    "vim-s": {"embed_dim": 384, "depth": 24, "patch_size": 16, "stride": 16},
    "vim-b": {"embed_dim": 768, "depth": 24, "patch_size": 16, "stride": 16},
    # the "+"/"-ft" weights (vim_{t,s}_midclstok_ft_*): vim/scripts/ft-vim-{t,s}.sh fine-tune the
    # *_patch16_stride8_224_* models: 16x16 patches taken every 8 pixels, overlapping
    "vim-t-stride8": {"embed_dim": 192, "depth": 24, "patch_size": 16, "stride": 8},
    "vim-s-stride8": {"embed_dim": 384, "depth": 24, "patch_size": 16, "stride": 8},
}
_ARCH_KEYS = {"embed_dim", "depth", "patch_size", "stride", "d_state", "num_classes", "mean", "std"}
D_CONV, EXPAND = 4, 2   # Mamba defaults, unchanged by Vim's create_block
NORM_EPS = 1e-5         # VisionMamba norm_epsilon


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (the fork's rms_norm_ref / Triton
    kernel), returned in `dtype`. Weight only: the official module registers bias as None."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        x = x.float()
        y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(dtype or self.weight.dtype)


class BidirectionalMamba(nn.Module):
    """The fork's Mamba with bimamba_type "v2" and if_divide_out=True: two selective scans over
    the sequence, one per direction, with separate conv/projection/SSM parameters and a shared
    in_proj, z gate and out_proj."""

    def __init__(self, dim: int, d_state: int = 16):
        super().__init__()
        inner = EXPAND * dim
        rank = math.ceil(dim / 16)  # dt_rank "auto"
        self.inner, self.rank, self.d_state = inner, rank, d_state
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        for suffix in ("", "_b"):
            # padding d_conv - 1 on both sides, of which the forward keeps the first L outputs: causal
            setattr(self, f"conv1d{suffix}", nn.Conv1d(inner, inner, D_CONV, groups=inner, padding=D_CONV - 1))
            setattr(self, f"x_proj{suffix}", nn.Linear(inner, rank + 2 * d_state, bias=False))
            setattr(self, f"dt_proj{suffix}", nn.Linear(rank, inner, bias=True))
        self.A_log = nn.Parameter(torch.empty(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.A_b_log = nn.Parameter(torch.empty(inner, d_state))
        self.D_b = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """mamba_simple.Mamba.__init__: S4D-real A (both directions), unit D, and the special dt
        init for the forward dt_proj only (the fork leaves dt_proj_b at nn.Linear's default)."""
        bound = self.rank ** -0.5
        self.dt_proj.weight.uniform_(-bound, bound)
        dt = torch.exp(torch.rand(self.inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True  # VisionMamba's init zeroes every other Linear bias
        s4d = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.inner, 1)
        self.A_log.copy_(s4d)
        self.A_b_log.copy_(s4d)
        self.D.fill_(1.0)
        self.D_b.fill_(1.0)

    def direction(self, x: Tensor, z: Tensor, backward: bool) -> Tensor:
        """One direction on (b, inner, L) x and z, both already in that direction's order:
        causal conv -> SiLU -> selective scan -> * SiLU(z) (mamba_inner_fn_no_out_proj)."""
        suffix = "_b" if backward else ""
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        x_proj: nn.Linear = getattr(self, f"x_proj{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        A = -torch.exp((self.A_b_log if backward else self.A_log).float())
        D = self.D_b if backward else self.D
        length = x.shape[-1]
        x = F.silu(conv(x)[..., :length])
        x_dbl = x_proj(x.transpose(1, 2))                                          # (b, L, rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)                          # bias: inside the scan
        y = selective_scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D.float(),
                           dt_proj.bias.float(), delta_softplus=True)
        return y * F.silu(z)

    def forward(self, hidden: Tensor) -> Tensor:
        """(b, L, dim) -> (b, L, dim)."""
        xz = self.in_proj(hidden).transpose(1, 2)                                  # (b, 2*inner, L)
        x, z = xz.chunk(2, dim=1)
        forward = self.direction(x, z, backward=False)
        backward = self.direction(x.flip(-1), z.flip(-1), backward=True).flip(-1)
        return self.out_proj(((forward + backward) / 2).transpose(1, 2))


class Block(nn.Module):
    """Add -> RMSNorm -> Mixer, passing (hidden, residual) on; the residual stays in float32."""

    def __init__(self, dim: int, d_state: int):
        super().__init__()
        self.mixer = BidirectionalMamba(dim, d_state)
        self.norm = RMSNorm(dim)

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        residual = hidden.float() if residual is None else residual + hidden.float()
        return self.mixer(self.norm(residual, dtype=hidden.dtype)), residual


def _grid(size: int, patch: int, stride: int) -> int:
    """Patches along one side: a conv with kernel `patch`, stride `stride`, no padding."""
    return (size - patch) // stride + 1 if size >= patch else 0


class VisionMamba(VisionBackbone):
    """VisionMamba with the official module tree, built for one input geometry."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry,
                 num_classes: int | None = None):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'vim'; allowed: {', '.join(TAPS)}")
        spec = resolve_arch(arch, ARCHS, {}, {"embed_dim", "depth"}, _ARCH_KEYS, "Vim")
        dim, depth = int(spec["embed_dim"]), int(spec["depth"])
        self.patch_size = int(spec.get("patch_size", 16))
        self.stride = int(spec.get("stride", self.patch_size))
        d_state = int(spec.get("d_state", 16))
        num_classes = int(spec.get("num_classes", 1000) if num_classes is None else num_classes)

        self.tap = tap
        self.embed_dim = dim
        self.mean = as_triple(spec.get("mean", IMAGENET_MEAN), "mean")
        self.std = as_triple(spec.get("std", IMAGENET_STD), "std")
        self.grid = (_grid(geometry.height, self.patch_size, self.stride),
                     _grid(geometry.width, self.patch_size, self.stride))
        patches = self.grid[0] * self.grid[1]
        if patches == 0:
            raise ValueError(f"geometry {geometry} is smaller than one {self.patch_size}-pixel patch")
        self.cls_position = patches // 2  # the middle cls token (use_middle_cls_token)

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, self.patch_size, stride=self.stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.head = nn.Linear(dim, num_classes)
        self.layers = nn.ModuleList(Block(dim, d_state) for _ in range(depth))
        self.norm_f = RMSNorm(dim)
        self._init_weights(depth)

    @torch.no_grad()
    def _init_weights(self, depth: int) -> None:
        # VisionMamba.__init__: segm_init_weights on patch_embed and head (lecun-normal conv,
        # trunc-normal 0.02 linear, zero biases), trunc-normal 0.02 pos_embed and cls_token; then
        # the Mamba init: zero every Linear bias except dt_proj's, and out_proj.weight
        # kaiming-uniform(a=sqrt(5)) / sqrt(depth) (rescale_prenorm_residual, 1 residual per layer).
        proj = self.patch_embed.proj
        fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
        std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # timm lecun_normal_: truncated at 2 std
        nn.init.trunc_normal_(proj.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(proj.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None \
                    and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(depth)

    def features(self, pixels: Tensor) -> Tensor:
        """(B, M + 1, D): the norm_f output over the whole sequence, cls token at `cls_position`."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"Vim expects (B, 3, H, W) pixels, got {tuple(pixels.shape)}")
        grid = (_grid(pixels.shape[2], self.patch_size, self.stride),
                _grid(pixels.shape[3], self.patch_size, self.stride))
        if grid != self.grid:
            # the official PatchEmbed asserts the input size; its pos_embed has one fixed grid
            raise ValueError(f"this Vim backbone was built for a {self.grid[0]}x{self.grid[1]} patch grid, "
                             f"got a {pixels.shape[2]}x{pixels.shape[3]} input ({grid[0]}x{grid[1]} patches)")
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)          # (B, M, D) row-major
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        i = self.cls_position
        x = torch.cat([x[:, :i], cls, x[:, i:]], dim=1) + self.pos_embed
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        final = hidden.float() if residual is None else residual + hidden.float()  # residual None: depth 0
        return self.norm_f(final, dtype=hidden.dtype)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.features(pixels)
        i = self.cls_position
        return torch.cat([x[:, :i], x[:, i + 1:]], dim=1)                     # patches, row-major

    def classify(self, pixels: Tensor) -> Tensor:
        """Class logits of the official classifier: head(norm_f output at the cls token)."""
        return self.head(self.features(pixels)[:, self.cls_position])

    def num_tokens(self, width: int, height: int) -> int:
        return _grid(height, self.patch_size, self.stride) * _grid(width, self.patch_size, self.stride)

    def official_checkpoint(self, kind: str, weights: Mapping[str, Tensor], head: Mapping[str, Tensor],
                            info: Mapping[str, Any]) -> tuple[Any, str]:
        # vim/main.py saves {model, optimizer, lr_scheduler, epoch, model_ema, scaler, args}
        # with an argparse Namespace (backbones.md 4.3)
        if kind != "classification":
            return super().official_checkpoint(kind, weights, head, info)
        state = {**weights, **head}
        return {"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": info.get("epochs", 1) - 1,
                "model_ema": state, "scaler": {}, "args": argparse.Namespace(**{"model": "vim-mini", **info})}, "torch"

    def non_backbone_key(self, key: str) -> bool:
        # head.* is the ImageNet classifier on the cls token: the tap never uses it. Everything
        # else must match, cls_token included (it is mixed into every patch token by the scans).
        return key.startswith("head.")

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # No pos_embed resampling: the official model runs only at its training size (the
        # fine-tuning script's resampler treats index 0 as the cls token, which is wrong for the
        # middle cls token), so a size mismatch is an error here rather than a silent guess.
        pos = state.get("pos_embed")
        if pos is not None and tuple(pos.shape) != tuple(self.pos_embed.shape):
            raise ValueError(f"VisionMamba: the checkpoint's pos_embed {tuple(pos.shape)} is for another patch "
                             f"grid than this backbone's {self.grid[0]}x{self.grid[1]} (+1 cls) = "
                             f"{tuple(self.pos_embed.shape)}; Vim weights only run at their training geometry "
                             "(224) and stride")
        return state


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[VisionMamba, Callable[[Tensor], Tensor]]:
    """The classification network (head on the middle cls token) mini members are pretrained as."""
    model = VisionMamba(arch, "final-norm", geometry, num_classes=num_classes)
    return model, model.classify


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> VisionMamba:
    return VisionMamba(arch, tap, geometry)
