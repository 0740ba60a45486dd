"""The registry is the only list of families and rejects unknown ids with the allowed values."""

import importlib

import pytest

from vlmswap.image import Geometry
from vlmswap.vision.base import VisionBackbone
from vlmswap.vision.registry import FAMILIES, build_backbone


def test_families_and_taps():
    # every family of the paper study has its module; the registry is the only list of them
    assert set(FAMILIES) == {"vit", "vmamba", "maxvit", "mambavision", "vim", "vitdet", "vit-adapter",
                             "beit-adapter", "fused", "timm", "hf"}
    assert all(hasattr(importlib.import_module(family.module), "build") for family in FAMILIES.values())
    assert FAMILIES["vit"].taps == ("block-2",)
    assert FAMILIES["vmamba"].taps == ("stage3", "stage3-outnorm", "stage2", "stage4")
    assert FAMILIES["vit-adapter"].taps == FAMILIES["beit-adapter"].taps == ("adapter-stride32",)
    assert all(name == family.name for name, family in FAMILIES.items())
    # the generic families index the model's own layers: a form, not a list
    assert {n for n, f in FAMILIES.items() if f.tap_pattern} == {"timm", "hf"}
    assert FAMILIES["timm"].accepts("index7") and not FAMILIES["vit"].accepts("index7")


def test_only_generic_families_are_checked_on_the_meta_device():
    g = Geometry.parse("224")
    assert FAMILIES["vmamba"].check("vmamba-t", "stage3", g) is None  # fixed taps: the list is the check
    assert FAMILIES["timm"].check("convnext_tiny", "index2", g) == 196


def test_unknown_family_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown backbone family 'resnet'; allowed: beit-adapter, fused"):
        build_backbone("resnet", "resnet50", "stage3", Geometry.parse("224"))


def test_reading_the_registry_does_not_import_timm():
    import subprocess
    import sys

    code = "import sys, vlmswap.vision.registry; print('timm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_tap_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: stage3, stage3-outnorm, stage2, stage4"):
        build_backbone("vmamba", "vmamba-t", "block-2", Geometry.parse("224"))


@pytest.mark.parametrize("family,arch,tap", [
    ("vit", {"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}, "block-2"),
    ("vmamba", {"dims": 8, "depths": [1, 1, 1, 1], "ssm_ratio": 1.0}, "stage3"),
])
def test_builds_a_vision_backbone(family, arch, tap):
    backbone = build_backbone(family, arch, tap, Geometry.parse("32"))
    assert isinstance(backbone, VisionBackbone)
    assert len(backbone.mean) == len(backbone.std) == 3 and backbone.embed_dim > 0
