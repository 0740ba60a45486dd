"""Numeric fidelity: every family we re-implement reproduces what its OFFICIAL code computes.

Each file in tests/vision/golden/ was written by scripts/reference/make_golden.py from the official
repository named in its metadata: a tiny model built with the official class, seeded random weights
in the official key layout, square and non-square inputs, and the official output at the tap the
product reads. Here the weights are wrapped in the family's checkpoint container and loaded
strictly through `load_official` (the path training uses); our backbone then runs on the stored
inputs and must agree within the stated tolerance. Nothing here needs the official code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import Tensor

from vlmswap.image import Geometry
from vlmswap.vision.registry import build_backbone

GOLDEN = Path(__file__).parent / "golden"
# the families whose networks are our own code (vit and maxvit are timm's, fused combines others)
OWN_NETWORKS = {"vmamba", "mambavision", "vim", "vitdet", "vit-adapter", "beit-adapter"}

# float32 everywhere: both sides sum the same terms in different orders (einsum vs grouped conv1d,
# a chunked vs a sequential scan, SDPA vs softmax(q k^T) v), so they differ by rounding only. Every
# element must agree within TOLERANCE x the largest magnitude of the official output; the largest
# difference measured is 5.5e-7 of it (VMamba), the typical one 1e-7.
TOLERANCE = 1e-5


def read_golden(name: str) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """(metadata, official weights, inputs by case, official outputs by case and tap) of one fixture."""
    with safe_open(GOLDEN / f"{name}.safetensors", "pt") as f:
        meta: dict[str, Any] = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["arch"] = json.loads(meta["arch"])
    weights = {k.removeprefix("weight/"): v for k, v in tensors.items() if k.startswith("weight/")}
    inputs = {k.removeprefix("input/"): v for k, v in tensors.items() if k.startswith("input/")}
    outputs: dict[str, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("output/"):
            case, tap = k.removeprefix("output/").split("/", 1)
            outputs.setdefault(case, {})[tap] = v
    return meta, weights, inputs, outputs


def checkpoint(container: str, weights: Mapping[str, Tensor]) -> dict[str, Any]:
    """The official weights as the official training code saves them (reference/backbones.md)."""
    weights = dict(weights)
    if container in ("vmamba-classification", "vim-classification"):  # {model, optimizer, epoch, ...}
        return {"model": weights, "optimizer": {}, "epoch": 0}
    if container == "timm-train":                                       # MambaVision's .pth.tar
        return {"epoch": 0, "arch": "mamba_vision", "state_dict": weights, "state_dict_ema": weights}
    if container == "mmengine":                                         # mmseg/mmdet: backbone under `backbone.`
        return {"meta": {}, "state_dict": {f"backbone.{k}": v for k, v in weights.items()}}
    if container == "detectron2":                                       # model zoo .pkl: numpy arrays
        return {"model": {f"backbone.net.{k}": v.numpy() for k, v in weights.items()}, "__author__": "golden"}
    raise ValueError(f"unknown container {container!r}")


def map_tokens(official: Tensor) -> Tensor:
    """A (B, C, h, w) official map as the tap's row-major tokens (B, h*w, C)."""
    return official.flatten(2).transpose(1, 2)


def drop_middle_cls(official: Tensor) -> Tensor:
    """Vim: the official norm_f output (B, M + 1, D) without the cls token at M // 2."""
    middle = (official.shape[1] - 1) // 2
    return torch.cat([official[:, :middle], official[:, middle + 1:]], dim=1)


BOTH = ("square", "nonsquare")
# fixture, tap, official output name, how the tap reads the official output, input cases
CASES: list[tuple[str, str, str, Callable[[Tensor], Tensor], tuple[str, ...]]] = [
    ("vmamba_cls", "stage3", "stage3", map_tokens, BOTH),
    ("vmamba_seg", "stage3-outnorm", "stage3-outnorm", map_tokens, BOTH),
    ("vmamba_seg", "stage3", "stage3", map_tokens, BOTH),
    ("mambavision", "stage3", "stage3", map_tokens, BOTH),
    ("vitdet", "last-block", "last-block", map_tokens, BOTH),
    # "unpadded": 50x90 pixels, which we zero-pad to 64x96; the official output is of the padded input
    ("vit_adapter", "adapter-stride32", "f4", map_tokens, (*BOTH, "unpadded")),
    ("uniperceiver_adapter", "adapter-stride32", "f4", map_tokens, BOTH),
    # BEiT's attention bias is made for img_size (64, or [64, 96]): one model per size; the files
    # lack relative_position_index, as the released ones do
    *((f"beit_adapter_{case}", "adapter-stride32", "f4", map_tokens, (case,)) for case in BOTH),
    # Vim models are built for one geometry (pos_embed), so each size is its own file
    *((f"vim_stride{stride}_{case}", "final-norm", "final-norm", drop_middle_cls, (case,))
      for stride in (16, 8) for case in BOTH),
]
PARAMS = [pytest.param(fixture, tap, output, read, case, id=f"{fixture}-{tap}-{case}")
          for fixture, tap, output, read, cases in CASES for case in cases]


def assert_matches(ours: Tensor, reference: Tensor) -> None:
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0.0, atol=TOLERANCE * reference.abs().max().item())


@pytest.mark.parametrize("fixture,tap,output,read,case", PARAMS)
def test_matches_the_official_implementation(fixture, tap, output, read, case):
    meta, weights, inputs, outputs = read_golden(fixture)
    x = inputs[case]
    geometry = Geometry(width=x.shape[-1], height=x.shape[-2])
    torch.manual_seed(0)  # our fresh weights differ from the fixture's: loading must replace all of them
    model = build_backbone(meta["family"], meta["arch"], tap, geometry).eval()
    model.load_official(checkpoint(meta["container"], weights))
    with torch.no_grad():
        ours = model(x)
    assert ours.shape[1] == model.num_tokens(geometry.width, geometry.height)
    assert_matches(ours, read(outputs[case][output]))
    if "f1" in outputs[case]:
        # adapters: all four official outputs (f1..f4, strides 4 to 32), not only the tapped f4; the
        # other levels exercise c1, `up` and norm1..3, which the layout pins but the tap never reads
        with torch.no_grad():
            pyramid = model.features(x)
        for level, ours_level in zip(("f1", "f2", "f3", "f4"), pyramid, strict=True):
            assert_matches(ours_level, outputs[case][level])


def test_every_own_family_is_checked_on_square_and_non_square_inputs():
    square: dict[str, set[bool]] = {}
    for fixture, _, _, _, cases in CASES:
        meta, _, inputs, _ = read_golden(fixture)
        for case in cases:
            h, w = inputs[case].shape[-2:]
            square.setdefault(meta["family"], set()).add(h == w)
    assert set(square) == OWN_NETWORKS
    assert all(seen == {True, False} for seen in square.values()), square


def test_every_fixture_names_its_official_source():
    names = {c[0] for c in CASES}
    assert names == {p.stem for p in GOLDEN.glob("*.safetensors")}
    for name in names:
        meta = read_golden(name)[0]
        assert meta["source"].startswith("github.com/") and len(meta["source"].split("@")[1]) == 40

