"""Family "vmamba": VMamba v2 (VSSM, SS2D forward_type v05_noz) in plain PyTorch.

Written from the architecture notes in reference/backbones.md section 1.2, with exactly the
parameter names and shapes of the official checkpoints (section 1.4), so that the released
classification, COCO and ADE20K weights load with strict key matching. Channel-first throughout
(norm_layer "ln2d"): tensors are (B, C, H, W); LayerNorm2d normalizes over C; Linear2d is a
1x1 projection whose weight is stored (out, in) like nn.Linear.

Taps (section 1.3): `stage3` = output of `layers[2].blocks`, before `layers[2].downsample`, no
norm (196 tokens at 224); `stage3-outnorm` = the same through `outnorm2`, as the mmdet/mmseg
Backbone_VSSM returns it (those weights exist only in detection/segmentation checkpoints).
`stage2` / `stage4` (the Appendix B stage ablation): the outputs of `layers[1].blocks` (stride 8,
784 tokens at 224) and of `layers[3]` (stride 32, 49 tokens at 224; its downsample is Identity),
no norm, like `stage3`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError, VisionBackbone, as_triple, init_linear_and_norms, resolve_arch
from vlmswap.vision.scan import cross_merge, cross_scan, selective_scan

__all__ = ["ARCHS", "TAPS", "VMamba", "build", "classifier"]

TAPS = ("stage3", "stage3-outnorm", "stage2", "stage4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # classification/data/build.py (backbones.md 1.2)
IMAGENET_STD = (0.229, 0.224, 0.225)

# README main table: T = s1l8, S = s2l15, B = s2l15 (backbones.md 1.1)
ARCHS: dict[str, dict[str, Any]] = {
    "vmamba-t": {"dims": 96, "depths": [2, 2, 8, 2], "ssm_ratio": 1.0},
    "vmamba-s": {"dims": 96, "depths": [2, 2, 15, 2], "ssm_ratio": 2.0},
    "vmamba-b": {"dims": 128, "depths": [2, 2, 15, 2], "ssm_ratio": 2.0},
}
_ARCH_KEYS = {"dims", "depths", "ssm_ratio", "mlp_ratio", "d_state", "num_classes", "mean", "std"}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor (eps 1e-5, affine)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A 1x1 projection of a (B, C, H, W) tensor; weight stored (out, in) as in nn.Linear."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the official Linear2d accepts (out, in) or (out, in, 1, 1) weights the same way
        key = prefix + "weight"
        if key in state_dict and state_dict[key].dim() != 2 and state_dict[key].numel() == self.weight.numel():
            state_dict[key] = state_dict[key].reshape(self.weight.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SS2D(nn.Module):
    """2D selective scan, forward_type v05_noz: in_proj -> depthwise conv -> SiLU -> 4-direction
    selective scan -> out_norm -> out_proj; no z gate (backbones.md 1.2)."""

    def __init__(self, dim: int, ssm_ratio: float, d_state: int = 1, directions: int = 4):
        super().__init__()
        inner = int(ssm_ratio * dim)
        rank = math.ceil(dim / 16)  # dt_rank "auto" uses the block width, not d_inner
        self.inner, self.rank, self.d_state, self.directions = inner, rank, d_state, directions
        self.in_proj = Linear2d(dim, inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=3, padding=1, groups=inner, bias=False)
        self.x_proj_weight = nn.Parameter(torch.empty(directions, rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(directions, inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(directions, inner))
        self.A_logs = nn.Parameter(torch.empty(directions * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(directions * inner))
        self.out_norm = LayerNorm2d(inner)
        self.out_proj = Linear2d(inner, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """The official "v0" initialization (mamba_init): S4D-real A, unit D, dt log-uniform."""
        bound = self.inner ** -0.5
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-self.rank ** -0.5, self.rank ** -0.5)
        dt = torch.exp(torch.rand(self.directions, self.inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(
            self.directions * self.inner, 1))
        self.Ds.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(self.conv2d(self.in_proj(x)))
        b, d, h, w = x.shape
        xs = cross_scan(x)                                                    # (b, 4, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        ys = selective_scan(xs.reshape(b, -1, h * w), dts.reshape(b, -1, h * w), -self.A_logs.float().exp(),
                            Bs, Cs, self.Ds.float(), self.dt_projs_bias.reshape(-1).float(), delta_softplus=True)
        y = cross_merge(ys.view(b, self.directions, d, h * w), h, w).view(b, d, h, w)
        return self.out_proj(self.out_norm(y))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """Pre-norm residual block: x + op(norm(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, ssm_ratio: float, mlp_ratio: float, d_state: int):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, ssm_ratio, d_state)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.op(self.norm(x))
        return x + self.mlp(self.norm2(x))


def _downsample(dim_in: int, dim_out: int) -> nn.Sequential:
    """Downsample "v3": indices 0..3 = Identity, Conv2d(k3 s2 p1), Identity, LN2d (key layout)."""
    return nn.Sequential(nn.Identity(), nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1), nn.Identity(),
                         LayerNorm2d(dim_out))


def _halve(size: int) -> int:
    """Output size of a k3 s2 p1 convolution: floor((size + 2 - 3) / 2) + 1."""
    return (size + 1) // 2


class VMamba(VisionBackbone):
    """VSSM with the official module tree (patch_embed, layers, classifier) plus `outnorm2` for the
    outnorm tap. `forward` returns stage-3 tokens; `classify` runs the whole classification model."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str = "stage3", num_classes: int | None = None):
        super().__init__()
        if tap not in TAPS:
            raise ValueError(f"unknown tap {tap!r} for family 'vmamba'; allowed: {', '.join(TAPS)}")
        spec = resolve_arch(arch, ARCHS, {}, {"dims", "depths", "ssm_ratio"}, _ARCH_KEYS, "VMamba")
        depths = [int(d) for d in spec["depths"]]
        dims = spec["dims"]
        dims = [int(dims) * 2 ** i for i in range(len(depths))] if isinstance(dims, int) else [int(d) for d in dims]
        if len(dims) != len(depths) or len(depths) < 3:
            raise ArchError(f"VMamba needs >= 3 stages (the tap is stage 3) and one dim per stage: {spec}")
        ssm_ratio, mlp_ratio = float(spec["ssm_ratio"]), float(spec.get("mlp_ratio", 4.0))
        d_state = int(spec.get("d_state", 1))
        num_classes = int(spec.get("num_classes", 1000) if num_classes is None else num_classes)

        self.tap = tap
        self.stage = int(tap[len("stage")])  # 2, 3 or 4: the tapped stage, counted from 1
        if self.stage > len(depths):
            raise ValueError(f"VMamba tap {tap!r} needs {self.stage} stages; the arch has {len(depths)}: {spec}")
        self.dims = dims
        self.embed_dim = dims[self.stage - 1]
        self.mean = as_triple(spec.get("mean", IMAGENET_MEAN), "mean")
        self.std = as_triple(spec.get("std", IMAGENET_STD), "std")

        # patch embed "v2": two k3 s2 p1 convs; Identity placeholders keep the official indices
        c = dims[0]
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, c // 2, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(c // 2), nn.Identity(),
            nn.GELU(), nn.Conv2d(c // 2, c, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(c))
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            blocks = nn.Sequential(*(VSSBlock(dims[i], ssm_ratio, mlp_ratio, d_state) for _ in range(depth)))
            last = i == len(depths) - 1
            downsample = nn.Identity() if last else _downsample(dims[i], dims[i + 1])
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=downsample)))
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm2d(dims[-1]), permute=nn.Identity(), avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1), head=nn.Linear(dims[-1], num_classes)))
        if tap == "stage3-outnorm":
            self.outnorm2 = LayerNorm2d(dims[2])
        self.apply(init_linear_and_norms)  # VSSM._init_weights (Linear2d is an nn.Linear)

    def stage3(self, pixels: Tensor) -> Tensor:
        """(B, C3, H/16, W/16): the output of layers[2].blocks, before its downsample."""
        return self.stage_output(pixels, 3)

    def stage_output(self, pixels: Tensor, stage: int) -> Tensor:
        """(B, C_k, H/2^(k+1), W/2^(k+1)): the output of layers[k-1].blocks, before its downsample."""
        x = self.patch_embed(pixels)
        for layer in self.layers[: stage - 1]:
            x = layer(x)
        return self.layers[stage - 1].blocks(x)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.stage_output(pixels, self.stage)
        if self.tap == "stage3-outnorm":
            x = self.outnorm2(x)
        return x.flatten(2).transpose(1, 2)  # row-major tokens (B, h*w, C3)

    def classify(self, pixels: Tensor) -> Tensor:
        """Class logits of the full classification network (used to pretrain mini members)."""
        x = self.patch_embed(pixels)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x)

    def num_tokens(self, width: int, height: int) -> int:
        for _ in range(self.stage + 1):  # two stem convs, then the downsamples of the stages before the tap
            width, height = _halve(width), _halve(height)
        return width * height

    def non_backbone_key(self, key: str) -> bool:
        # Loading policy (one place, for both checkpoint kinds):
        # - classifier.* is ignored on both sides: detection/segmentation checkpoints have none
        #   (Backbone_VSSM deletes it), and the tapped tokens never depend on it.
        # - outnorm{0,1,3} (det/seg only) are ignored: no tap uses them.
        # - outnorm2 is required exactly when the tap applies it (a classification checkpoint at
        #   the outnorm tap is therefore an error, not a silently random norm); at the plain stage3
        #   tap it is ignored, so det/seg checkpoints can also be read at the no-norm tap.
        # - everything else (stem, all four stages, downsamples) must match, including the
        #   unused layers[2].downsample and layers[3]: they pin the official layout.
        if key.startswith("classifier."):
            return True
        if key.startswith("outnorm"):
            return not (self.tap == "stage3-outnorm" and key.startswith("outnorm2."))
        return False


    def official_checkpoint(self, kind: str, weights: Mapping[str, Tensor], head: Mapping[str, Tensor],
                            info: Mapping[str, Any]) -> tuple[Any, str]:
        # classification: the trainer's container {model, model_ema, optimizer, epoch, max_accuracy,
        # config} (backbones.md 1.5), `config` a non-tensor object as the official yacs CfgNode is;
        # detection/segmentation: mmengine files (the default)
        if kind != "classification":
            # mmdet/mmseg Backbone_VSSM: no classifier, one outnorm per stage (only outnorm2 is
            # trained here, at the outnorm tap; the others are fresh LayerNorms, as no tap reads them)
            dense = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
            for i, dim in enumerate(self.dims):
                dense.setdefault(f"outnorm{i}.weight", torch.ones(dim))
                dense.setdefault(f"outnorm{i}.bias", torch.zeros(dim))
            return super().official_checkpoint(kind, dense, head, info)
        arch = info.get("arch")
        vssm = SimpleNamespace(**arch) if isinstance(arch, Mapping) else arch
        config = SimpleNamespace(MODEL=SimpleNamespace(TYPE="vssm", VSSM=vssm),
                                 TRAIN=SimpleNamespace(EPOCHS=info.get("epochs")))
        state = {**weights, **head}
        return {"model": state, "model_ema": state, "optimizer": {}, "epoch": info.get("epochs", 1) - 1,
                "max_accuracy": info.get("accuracy"), "config": config}, "torch"


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[VMamba, Callable[[Tensor], Tensor]]:
    """The classification VSSM mini members are pretrained as, and its logits. Built at the plain
    stage3 tap: a classification file must never supply an outnorm."""
    model = VMamba(arch, "stage3", num_classes=num_classes)
    return model, model.classify


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> VMamba:
    # VMamba is fully convolutional: the geometry only matters to num_tokens
    return VMamba(arch, tap)
