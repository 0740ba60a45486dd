"""Regenerate the golden fixtures of tests/vision/test_golden.py by running the OFFICIAL code.

For every vision family vlmswap re-implements (VMamba classification and dense, MambaVision, Vim
at strides 16 and 8, ViTDet, ViT-Adapter on its DeiT/AugReg and Uni-Perceiver ViTs, BEiT-Adapter),
this script builds a tiny model with the official class, gives it seeded random weights (every
floating tensor perturbed, so that no norm is the identity and no bias is zero), runs it in float32
on seeded inputs of a square and a non-square size, and writes one safetensors file per model to
tests/vision/golden/:

    weight/<key>        the official module's state_dict, in the official key layout
    input/<case>        (1, 3, H, W) normalized pixels
    output/<case>/<tap> what the official code computes for the tap the product reads
    metadata            family, our arch mapping, the checkpoint container to wrap the weights in,
                        the official class and its arguments, the source repository and commit

The tests need only these files; this script needs the official repositories, checked out at
these commits in one folder (default: scripts/reference/official/, git-ignored):

    official/VMamba        github.com/MzeroMiko/VMamba        2ed52ead062a51a64521ed3871d52914bf532876
    official/MambaVision   github.com/NVlabs/MambaVision      7860a506b2eb844eaaae676f08461ce8c3c26f43
    official/Vim           github.com/hustvl/Vim              dd0358ad1e42701f22afbefa0717cc8825cf9f45
    official/detectron2    github.com/facebookresearch/detectron2 02b5c4e295e990042a714712c21dc79b731e8833
    official/ViT-Adapter   github.com/czczup/ViT-Adapter      fd64a5190f9f4530e8e5961cc87b2a3ad591190b

Run it with a Python that has torch, timm (1.0.31 here), einops and fvcore (VMamba and detectron2
import it), e.g. a scratch venv beside .venv: `python scripts/reference/make_golden.py
[--refs DIR] [--out DIR] [--only vmamba,vim,...]`. Nothing of the official code is installed or
built. A rerun writes the same tensors and metadata (the files' bytes may differ: safetensors does
not fix the order of its header).

What is stubbed (CUDA kernels and framework plumbing only; every line of the models' math runs as
written in the official files):
- `selective_scan_cuda` (mamba_ssm's CUDA extension): `fwd` computes with the fork's own pure-PyTorch
  `selective_scan_ref` (Vim's mamba-1p1p1/mamba_ssm/ops/selective_scan_interface.py) and returns
  (out, states, out * silu(z)) as the kernel does, the states holding only the last state (what the
  forward wrappers read from them). MambaVision's `selective_scan_fn` and Vim's
  `mamba_inner_fn_no_out_proj` run unchanged on top of it (MambaVision imports mamba_ssm; the Vim
  fork's package serves it).
- `causal_conv1d_cuda`: `causal_conv1d_fwd` computes with the package's own `causal_conv1d_ref`
  (Vim's causal-conv1d/causal_conv1d/causal_conv1d_interface.py).
- Vim's Triton `rms_norm_fn` (the fused add + RMSNorm of every Block and of norm_f): replaced in
  models_mamba by the fork's own `rms_norm_ref` (upcast to float32, as the kernel computes); the
  wrapper also records the last call's output, which is norm_f's: the whole normed sequence, whose
  patch tokens are the Vim tap (the official forward returns only the cls token).
- VMamba's csm_triton enters `torch.cuda.device(x.device)` even on its torch path; current torch
  refuses a CPU device there, so that context is a no-op for CPU devices.
- `mamba_ssm.utils.generation` (text generation, unused by VisionMamba): an empty GenerationMixin,
  because the fork's module imports a name transformers 5 no longer has.
- `MultiScaleDeformableAttention` (ViT-Adapter's CUDA op): `ms_deform_attn_forward` computes with the
  repository's own `ms_deform_attn_core_pytorch` (detection/ops/functions/ms_deform_attn_func.py).
- mmcv / mmseg: only the names the backbone files import (BACKBONES.register_module as a plain
  decorator, get_root_logger, load_checkpoint, mmcv.runner.BaseModule as nn.Module); the package
  __init__ files of mmseg_custom and detectron2.modeling are bypassed (their submodules are
  imported from the official folders directly) so that the detectors, datasets and their compiled
  ops are not needed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import sys
import types
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "vision" / "golden"
SOURCES = {
    "VMamba": ("github.com/MzeroMiko/VMamba", "2ed52ead062a51a64521ed3871d52914bf532876"),
    "MambaVision": ("github.com/NVlabs/MambaVision", "7860a506b2eb844eaaae676f08461ce8c3c26f43"),
    "Vim": ("github.com/hustvl/Vim", "dd0358ad1e42701f22afbefa0717cc8825cf9f45"),
    "detectron2": ("github.com/facebookresearch/detectron2", "02b5c4e295e990042a714712c21dc79b731e8833"),
    "ViT-Adapter": ("github.com/czczup/ViT-Adapter", "fd64a5190f9f4530e8e5961cc87b2a3ad591190b"),
}


# --- shared: weights, inputs, writing ----------------------------------------------------------------

@torch.no_grad()
def perturb(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Seeded random weights: every floating parameter and buffer gets N(0, scale^2) noise (so
    LayerNorm weights are not 1, biases and zero-initialized tables are not 0), BatchNorm running
    variances are drawn from [0.5, 1.5). Integer buffers (indices, counters) are left as built."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        if name.endswith("running_var"):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        else:
            tensor.add_(scale * noise)


@torch.no_grad()
def activate_scans(model: nn.Module, seed: int) -> None:
    """Selective-scan step sizes in the regime where the scan matters: every dt bias (VMamba
    dt_projs_bias, Mamba dt_proj(_b).bias) set so that softplus(bias) is uniform in [0.2, 1.5]. The
    official inits leave softplus(bias) at 1e-3..0.1, where the output is nearly D * u and a wrong
    A, B, C or scan order would change it by less than rounding noise."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith(("dt_projs_bias", "dt_proj.bias", "dt_proj_b.bias")):
            step = 0.2 + 1.3 * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
            tensor.copy_(step + torch.log(-torch.expm1(-step)))  # inverse softplus


def pixels(seed: int, height: int, width: int) -> Tensor:
    """A normalized-looking (1, 3, H, W) input."""
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def write(name: str, family: str, arch: Mapping[str, Any], container: str, official: str, source: str,
          weights: Mapping[str, Tensor], cases: Mapping[str, tuple[Tensor, Mapping[str, Tensor]]]) -> None:
    from safetensors.torch import save_file

    tensors = {f"weight/{k}": v.detach().clone().contiguous() for k, v in weights.items()}
    for case, (x, outputs) in cases.items():
        tensors[f"input/{case}"] = x.contiguous()
        for tap, y in outputs.items():
            tensors[f"output/{case}/{tap}"] = y.detach().contiguous()
    repo, commit = SOURCES[source]
    metadata = {"family": family, "arch": json.dumps(arch), "container": container, "official": official,
                "source": f"{repo}@{commit}"}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB): "
          + ", ".join(f"{case} {tuple(x.shape[-2:])}" for case, (x, _) in cases.items()))


def capture_input(module: nn.Module) -> dict[str, Tensor]:
    """Records the input of `module`'s next call under "x" (a forward pre-hook)."""
    seen: dict[str, Tensor] = {}
    module.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0].detach().clone()))
    return seen


def load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def namespace_package(name: str, path: Path) -> types.ModuleType:
    """A package whose submodules are imported from `path` without running its __init__.py."""
    package = types.ModuleType(name)
    package.__path__ = [str(path)]
    sys.modules[name] = package
    return package


def stub(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


# --- mamba_ssm kernels (MambaVision, Vim) --------------------------------------------------------------

def install_mamba_kernels(refs: Path) -> None:
    """Make the Vim fork of mamba_ssm (1.1.1) and causal_conv1d importable on a CPU, with the two CUDA
    extensions computed by the packages' own pure-PyTorch references (module docstring)."""
    if "selective_scan_cuda" in sys.modules:
        return
    vim = refs / "Vim"
    sys.path[:0] = [str(vim / "mamba-1p1p1"), str(vim / "causal-conv1d")]
    conv_kernel = stub("causal_conv1d_cuda")
    scan_kernel = stub("selective_scan_cuda")

    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref

    def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation):
        assert seq_idx is None and initial_states is None and final_states_out is None
        return causal_conv1d_ref(x, weight, bias, activation="silu" if silu_activation else None)

    conv_kernel.causal_conv1d_fwd = causal_conv1d_fwd

    # the fork's generation utilities import GreedySearchDecoderOnlyOutput, gone in transformers 5
    stub("mamba_ssm.utils.generation", GenerationMixin=type("GenerationMixin", (), {}))
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus,
                                       return_last_state=True)
        # the kernel's chunk states (batch, dim, chunks, 2 * dstate), real and imaginary parts
        # interleaved; the callers read only the last chunk's real parts (the last state)
        states = last.new_zeros(*last.shape[:2], 1, 2 * last.shape[-1])
        states[..., 0, 0::2] = last
        return (out, states) if z is None else (out, states, out * F.silu(z))

    scan_kernel.fwd = fwd


# --- VMamba --------------------------------------------------------------------------------------------

def vmamba(refs: Path) -> None:
    """VSSM (classification, stage-3 tap) and Backbone_VSSM (mmseg, outnorm2 tap), forward_type v05_noz,
    as the v2 factories (vmamba_tiny_s1l8: ssm_ratio 1; vmamba_small_s2l15: ssm_ratio 2), scaled down.
    VMamba needs no stub: csms6s falls back to its own selective_scan_torch and csm_triton to its
    torch cross scan when no CUDA extension is there."""
    sys.path.insert(0, str(refs / "VMamba" / "classification" / "models"))
    official = importlib.import_module("vmamba")
    # csm_triton enters `torch.cuda.device(x.device)` around its torch path too, which current torch
    # refuses for a CPU tensor: a no-op context for CPU devices
    cuda_device = torch.cuda.device
    torch.cuda.device = lambda device: contextlib.nullcontext() if torch.device(device).type == "cpu" \
        else cuda_device(device)
    common = dict(ssm_d_state=1, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=False,
                  ssm_drop_rate=0.0, ssm_init="v0", forward_type="v05_noz", mlp_ratio=2.0, mlp_act_layer="gelu",
                  mlp_drop_rate=0.0, gmlp=False, drop_path_rate=0.0, patch_norm=True, norm_layer="ln2d",
                  downsample_version="v3", patchembed_version="v2", posembed=False, patch_size=4, in_chans=3)
    sizes = {"square": (64, 64), "nonsquare": (70, 98)}  # odd sides: the k3 s2 convs round up

    # classification: the tap is layers[2].blocks' output, the input of layers[2].downsample
    kwargs = dict(common, depths=[1, 1, 2, 1], dims=8, ssm_ratio=1.0, num_classes=10)
    torch.manual_seed(0)
    model = official.VSSM(**kwargs).eval()
    perturb(model, seed=1)
    activate_scans(model, seed=1)
    seen = capture_input(model.layers[2].downsample)
    cases = {}
    with torch.no_grad():
        for i, (case, (h, w)) in enumerate(sizes.items()):
            x = pixels(10 + i, h, w)
            model(x)
            cases[case] = (x, {"stage3": seen["x"]})
    write("vmamba_cls", "vmamba", {"dims": 8, "depths": [1, 1, 2, 1], "ssm_ratio": 1.0, "mlp_ratio": 2.0,
                                     "num_classes": 10},
          "vmamba-classification", f"classification/models/vmamba.py VSSM({_args(kwargs)})", "VMamba",
          model.state_dict(), cases)

    # segmentation (mmseg MM_VSSM = Backbone_VSSM): outs[2] = outnorm2(stage 3), and the plain stage 3
    kwargs = dict(common, depths=[1, 1, 2, 1], dims=8, ssm_ratio=2.0, out_indices=(0, 1, 2, 3))
    torch.manual_seed(2)
    model = official.Backbone_VSSM(**kwargs).eval()
    perturb(model, seed=3)
    activate_scans(model, seed=3)
    seen = capture_input(model.layers[2].downsample)
    cases = {}
    with torch.no_grad():
        for i, (case, (h, w)) in enumerate(sizes.items()):
            x = pixels(20 + i, h, w)
            outs = model(x)
            cases[case] = (x, {"stage3": seen["x"], "stage3-outnorm": outs[2]})
    write("vmamba_seg", "vmamba", {"dims": 8, "depths": [1, 1, 2, 1], "ssm_ratio": 2.0, "mlp_ratio": 2.0}, "mmengine",
          f"classification/models/vmamba.py Backbone_VSSM({_args(kwargs)})", "VMamba", model.state_dict(), cases)


def _args(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# --- MambaVision ---------------------------------------------------------------------------------------

def mambavision(refs: Path) -> None:
    """MambaVision with layer scale (as B/L/L2/L3; initialized at 1 rather than 1e-5 so that, after
    the perturbation, the mixers weigh as much as the residual stream), a mixer level of Mamba then
    attention blocks, and windows that need padding at both sizes; the tap is levels[2]'s output
    before its downsample."""
    install_mamba_kernels(refs)
    sys.path.insert(0, str(refs / "MambaVision"))
    official = importlib.import_module("mambavision.models.mamba_vision")
    kwargs = dict(dim=8, in_dim=4, depths=[1, 1, 3, 1], window_size=[8, 8, 3, 2], mlp_ratio=2.0,
                  num_heads=[1, 2, 2, 4], drop_path_rate=0.0, num_classes=10, layer_scale=1.0,
                  layer_scale_conv=None)
    torch.manual_seed(4)
    model = official.MambaVision(**kwargs).eval()
    perturb(model, seed=5)
    activate_scans(model, seed=5)
    seen = capture_input(model.levels[2].downsample)
    sizes = {"square": (80, 80), "nonsquare": (64, 112)}  # stride-16 maps 5x5 and 4x7, window 3
    cases = {}
    with torch.no_grad():
        for i, (case, (h, w)) in enumerate(sizes.items()):
            x = pixels(30 + i, h, w)
            model(x)
            cases[case] = (x, {"stage3": seen["x"]})
    arch = {k: kwargs[k] for k in ("dim", "in_dim", "depths", "window_size", "mlp_ratio", "num_heads",
                                   "num_classes", "layer_scale")}
    write("mambavision", "mambavision", arch, "timm-train", f"mambavision/models/mamba_vision.py MambaVision("
          f"{_args(kwargs)})", "MambaVision", model.state_dict(), cases)


# --- Vim -----------------------------------------------------------------------------------------------

def vim(refs: Path) -> None:
    """VisionMamba as the released midclstok configs (bimamba v2, divide-out, middle cls token, abs
    pos embed, RMSNorm, fused add-norm, residual in fp32), at stride 16 and at stride 8 (the "-ft"
    weights). The official PatchEmbed asserts its img_size, so each geometry is its own model (the
    weights differ only in pos_embed's length). The tap is norm_f's output over the whole sequence."""
    install_mamba_kernels(refs)
    sys.path.insert(0, str(refs / "Vim" / "vim"))
    official = importlib.import_module("models_mamba")
    from mamba_ssm.ops.triton.layer_norm import rms_norm_ref

    last: dict[str, Tensor] = {}

    def rms_norm_fn(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False, **unused):
        # the Triton kernel computes in float32 and returns the residual in float32 when asked
        out = rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
        y, res = out if prenorm else (out, None)
        y = y.to(x.dtype)
        last["y"] = y.detach().clone()
        if not prenorm:
            return y
        return y, res.to(torch.float32 if residual_in_fp32 else x.dtype)

    official.rms_norm_fn = rms_norm_fn
    common = dict(patch_size=16, embed_dim=32, depth=2, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                  final_pool_type="mean", if_abs_pos_embed=True, if_rope=False, if_rope_residual=False,
                  bimamba_type="v2", if_cls_token=True, if_divide_out=True, use_middle_cls_token=True,
                  num_classes=10, drop_path_rate=0.0)
    for stride, sizes in ((16, {"square": (64, 64), "nonsquare": (48, 80)}),     # 4x4 and 3x5 patches
                          (8, {"square": (48, 48), "nonsquare": (40, 64)})):     # 5x5 and 4x7 patches
        for i, (case, (h, w)) in enumerate(sizes.items()):
            kwargs = dict(common, img_size=(h, w), stride=stride)
            torch.manual_seed(40 + stride)
            model = official.VisionMamba(**kwargs).eval()
            perturb(model, seed=41 + stride)
            activate_scans(model, seed=41 + stride)
            x = pixels(50 + stride + i, h, w)
            with torch.no_grad():
                cls = model(x)
            sequence = last["y"]
            # the cls token the official forward returns is the sequence's middle entry
            assert torch.equal(model.head(sequence[:, (sequence.shape[1] - 1) // 2]), cls)
            write(f"vim_stride{stride}_{case}", "vim", {"embed_dim": 32, "depth": 2, "patch_size": 16,
                  "stride": stride, "num_classes": 10}, "vim-classification",
                  f"vim/models_mamba.py VisionMamba({_args(kwargs)})", "Vim", model.state_dict(),
                  {case: (x, {"final-norm": sequence})})


# --- ViTDet --------------------------------------------------------------------------------------------

def vitdet(refs: Path) -> None:
    """detectron2's ViT as mask_rcnn_vitdet builds it (rel pos, abs pos from a cls-carrying pretraining
    grid, window and global blocks), scaled down so that both inputs need window padding, a resized
    abs pos grid and resized global rel-pos tables. The tap is `last_feat`."""
    root = refs / "detectron2"
    sys.path.insert(0, str(root))
    namespace_package("detectron2.modeling", root / "detectron2" / "modeling")
    namespace_package("detectron2.modeling.backbone", root / "detectron2" / "modeling" / "backbone")
    official = importlib.import_module("detectron2.modeling.backbone.vit")
    kwargs = dict(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0, qkv_bias=True,
                  drop_path_rate=0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, use_abs_pos=True,
                  use_rel_pos=True, rel_pos_zero_init=True, window_size=3, window_block_indexes=[0, 2],
                  residual_block_indexes=[], use_act_checkpoint=False, pretrain_img_size=48,
                  pretrain_use_cls_token=True, out_feature="last_feat")
    torch.manual_seed(60)
    model = official.ViT(**kwargs).eval()
    perturb(model, seed=61)
    sizes = {"square": (80, 80), "nonsquare": (64, 112)}  # 5x5 and 4x7 tokens, window 3, 4x4 rel-pos grid
    cases = {}
    with torch.no_grad():
        for i, (case, (h, w)) in enumerate(sizes.items()):
            x = pixels(70 + i, h, w)
            cases[case] = (x, {"last-block": model(x)["last_feat"]})
    arch = {"embed_dim": 32, "depth": 3, "num_heads": 2, "global_blocks": [1], "window_size": 3, "img_size": 64,
            "pretrain_img_size": 48, "mlp_ratio": 4.0}
    write("vitdet", "vitdet", arch, "detectron2", f"detectron2/modeling/backbone/vit.py ViT({_args(kwargs)})",
          "detectron2", model.state_dict(), cases)


# --- ViT-Adapter and BEiT-Adapter ---------------------------------------------------------------------

def install_adapter_code(refs: Path) -> types.ModuleType:
    """The backbones package of ViT-Adapter's segmentation code, importable without mmcv, mmseg and the
    compiled MSDeformAttn op (module docstring); returns mmseg_custom.models.backbones."""
    root = refs / "ViT-Adapter"
    if "mmseg_custom.models.backbones" in sys.modules:
        return sys.modules["mmseg_custom.models.backbones"]
    sys.path[:0] = [str(root / "segmentation"), str(root / "detection")]  # `ops` is detection/ops

    class Registry:
        def register_module(self, *args, **kwargs):
            return (lambda cls: cls) if not args or not isinstance(args[0], type) else args[0]

    class BaseModule(nn.Module):
        def __init__(self, init_cfg=None):
            super().__init__()

    def no_checkpoint(*args, **kwargs):
        raise RuntimeError("the golden models are built without pretrained weights")

    stub("mmcv")
    stub("mmcv.runner", BaseModule=BaseModule, load_checkpoint=no_checkpoint)
    stub("mmseg")
    stub("mmseg.models")
    stub("mmseg.models.builder", BACKBONES=Registry())
    stub("mmseg.utils", get_root_logger=lambda *a, **k: logging.getLogger("mmseg"))
    stub("mmcv_custom", load_checkpoint=no_checkpoint, my_load_checkpoint=no_checkpoint)
    kernel = stub("MultiScaleDeformableAttention")
    functions = importlib.import_module("ops.functions.ms_deform_attn_func")

    def ms_deform_attn_forward(value, spatial_shapes, level_start_index, locations, weights, im2col_step):
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        return functions.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    kernel.ms_deform_attn_forward = ms_deform_attn_forward
    base = root / "segmentation" / "mmseg_custom"
    namespace_package("mmseg_custom", base)
    namespace_package("mmseg_custom.models", base / "models")
    return namespace_package("mmseg_custom.models.backbones", base / "models" / "backbones")


ADAPTER_SIZES = {"square": (64, 64), "nonsquare": (64, 96)}
# our backbone zero-pads other sizes at the bottom/right to multiples of 32 (vit_adapter.py); the
# official code runs on the padded input
UNPADDED = ("unpadded", (50, 90))


def adapter_cases(model: nn.Module, seed: int, unpadded: bool) -> dict[str, tuple[Tensor, dict[str, Tensor]]]:
    sizes = dict(ADAPTER_SIZES, **({UNPADDED[0]: UNPADDED[1]} if unpadded else {}))
    cases = {}
    with torch.no_grad():
        for i, (case, (h, w)) in enumerate(sizes.items()):
            x = pixels(seed + i, h, w)
            padded = F.pad(x, (0, (-w) % 32, 0, (-h) % 32))
            f1, f2, f3, f4 = model(padded)
            cases[case] = (x, {"f1": f1, "f2": f2, "f3": f3, "f4": f4})
    return cases


def vit_adapter(refs: Path) -> None:
    """ViTAdapter (DeiT/AugReg: TIMMVisionTransformer with layer scale) and UniPerceiverAdapter, four
    interactions of one block each (the official forward unpacks exactly four), deform_ratio 0.5 as
    DeiT-B/AugReg-B/L, a pretraining grid (3x3) other than the token grids. Outputs f1..f4."""
    backbones = install_adapter_code(refs)
    vit_adapter_module = importlib.import_module("mmseg_custom.models.backbones.vit_adapter")
    uniperceiver_module = importlib.import_module("mmseg_custom.models.backbones.uniperceiver_adapter")
    groups = [[0, 0], [1, 1], [2, 2], [3, 3]]
    adapter = dict(conv_inplane=8, n_points=2, deform_num_heads=2, init_values=0.0, interaction_indexes=groups,
                   with_cffn=True, cffn_ratio=0.25, deform_ratio=0.5, add_vit_feature=True)
    ours = {"embed_dim": 16, "depth": 4, "num_heads": 2, "deform_num_heads": 2, "interaction_indexes": groups,
            "pretrain_size": 48, "conv_inplane": 8, "n_points": 2, "cffn_ratio": 0.25, "deform_ratio": 0.5,
            "mlp_ratio": 2.0, "init_values": 0.0}

    kwargs = dict(adapter, pretrain_size=48, img_size=48, patch_size=16, embed_dim=16, depth=4, num_heads=2,
                  mlp_ratio=2, drop_path_rate=0.0, use_extra_extractor=True, with_cp=False,
                  window_attn=[False] * 4, window_size=[None] * 4)
    torch.manual_seed(80)
    model = vit_adapter_module.ViTAdapter(**kwargs).eval()
    perturb(model, seed=81)
    write("vit_adapter", "vit-adapter", {"base": "vit", **ours}, "mmengine",
          f"segmentation/mmseg_custom/models/backbones/vit_adapter.py ViTAdapter({_args(kwargs)})", "ViT-Adapter",
          model.state_dict(), adapter_cases(model, 90, unpadded=True))

    kwargs = dict(adapter, pretrain_size=48, img_size=48, patch_size=16, embed_dim=16, depth=4, num_heads=2,
                  mlp_ratio=2, drop_path_rate=0.0, window_attn=[False] * 4, window_size=[None] * 4)
    torch.manual_seed(82)
    model = uniperceiver_module.UniPerceiverAdapter(**kwargs).eval()
    perturb(model, seed=83)
    write("uniperceiver_adapter", "vit-adapter", {"base": "uniperceiver", **ours}, "mmengine",
          f"segmentation/mmseg_custom/models/backbones/uniperceiver_adapter.py UniPerceiverAdapter({_args(kwargs)})",
          "ViT-Adapter", model.state_dict(), adapter_cases(model, 93, unpadded=False))


def beit_adapter(refs: Path) -> None:
    """BEiTAdapter as the ADE20K configs build it (qkv bias as q_bias/v_bias, relative position bias per
    block, no abs pos, layer scale, cls token through the blocks only), four interactions of one
    block. Its attention bias is made for img_size, and the official forward runs only there, so each
    geometry is its own model: img_size 64 and (64, 96), which the official PatchEmbed accepts."""
    install_adapter_code(refs)
    official = importlib.import_module("mmseg_custom.models.backbones.beit_adapter")
    groups = [[0, 0], [1, 1], [2, 2], [3, 3]]
    for i, (case, (h, w)) in enumerate(ADAPTER_SIZES.items()):
        size = h if h == w else (h, w)
        kwargs = dict(img_size=size, patch_size=16, embed_dim=16, depth=4, num_heads=2, mlp_ratio=2, qkv_bias=True,
                      use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6, drop_path_rate=0.0,
                      conv_inplane=8, n_points=2, deform_num_heads=2, cffn_ratio=0.25, deform_ratio=0.5,
                      with_cp=False, interaction_indexes=groups)
        torch.manual_seed(100)
        model = official.BEiTAdapter(**kwargs).eval()
        perturb(model, seed=101)
        x = pixels(110 + i, h, w)
        with torch.no_grad():
            f1, f2, f3, f4 = model(x)
        arch = {"embed_dim": 16, "depth": 4, "num_heads": 2, "deform_num_heads": 2, "interaction_indexes": groups,
                "img_size": size if h == w else [h, w], "conv_inplane": 8, "n_points": 2, "cffn_ratio": 0.25,
                "deform_ratio": 0.5, "mlp_ratio": 2.0, "init_values": 1e-6}
        # released files lack relative_position_index (beit_adapter.py); so does this one
        weights = {k: v for k, v in model.state_dict().items() if not k.endswith("relative_position_index")}
        write(f"beit_adapter_{case}", "beit-adapter", arch, "mmengine",
              f"segmentation/mmseg_custom/models/backbones/beit_adapter.py BEiTAdapter({_args(kwargs)})",
              "ViT-Adapter", weights, {case: (x, {"f1": f1, "f2": f2, "f3": f3, "f4": f4})})


# --- main ----------------------------------------------------------------------------------------------

FAMILIES: dict[str, Callable[[Path], None]] = {
    "vmamba": vmamba, "mambavision": mambavision, "vim": vim, "vitdet": vitdet, "vit-adapter": vit_adapter,
    "beit-adapter": beit_adapter,
}


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, default=Path(__file__).resolve().parent / "official",
                        help="folder with the official checkouts (VMamba, MambaVision, Vim, detectron2, ViT-Adapter)")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the fixtures (default: %(default)s)")
    parser.add_argument("--only", default=",".join(FAMILIES), help="comma-separated subset of " + ", ".join(FAMILIES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    OUT = args.out.resolve()
    for name in args.only.split(","):
        FAMILIES[name](args.refs.resolve())


if __name__ == "__main__":
    main()
