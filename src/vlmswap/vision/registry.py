"""The backbone families: the only list of them, and the one way to build a backbone.

A cell names a backbone by family + arch, and a feature tap; `build_backbone` turns those ids
into a `VisionBackbone` (weights are loaded afterwards with `load_official`). Each family points
at the module that implements it, imported only when a backbone is built, so that reading a study
config (which Snakemake does on every dry run) does not import timm or torch.

Most families offer a fixed list of taps. The generic families (`timm`, `hf`) wrap any model of a
library, so their taps index the model's own layers: `tap_pattern` says which ids are well formed
(checked when a config is read, without importing the library), and the module's `check` says,
on the meta device, whether the model has that layer and how many tokens it gives (`vlmswap
validate` and every build).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmswap.image import Geometry

if TYPE_CHECKING:
    from vlmswap.vision.base import VisionBackbone

__all__ = ["FAMILIES", "Family", "build_backbone"]


@dataclass(frozen=True)
class Family:
    name: str
    module: str             # the module with `build(arch, tap, geometry)`
    taps: tuple[str, ...]   # the feature taps a cell may ask for (generic families: the default one)
    tap_pattern: str | None = None  # generic families: every tap id matching this regex is accepted
    tap_form: str = ""      # what `tap_pattern` accepts, in words (for error messages)

    def accepts(self, tap: str) -> bool:
        """Whether `tap` is a well-formed tap id of this family (not yet whether the model has it)."""
        return tap in self.taps or (self.tap_pattern is not None and re.fullmatch(self.tap_pattern, tap) is not None)

    @property
    def allowed_taps(self) -> str:
        """The taps this family accepts, for error messages."""
        return self.tap_form if self.tap_pattern else ", ".join(self.taps)

    def check(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> int | None:
        """The visual-token count of `arch` at `tap` and `geometry` from a meta-device run, for the
        generic families (their module's `check`); None for the others. Raises ValueError naming the
        model, its layers and each one's token count."""
        module = importlib.import_module(self.module) if self.tap_pattern else None
        if module is None or not hasattr(module, "check"):
            return None  # fixed taps: the list is the check
        return module.check(arch, tap, geometry)

    def build(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> "VisionBackbone":
        return importlib.import_module(self.module).build(arch, tap, geometry)

    def classifier(self, arch: str | Mapping[str, Any], geometry: Geometry, num_classes: int) -> tuple[Any, Any]:
        """The family's own classification network (official layout, head included) and its
        pixels -> logits function, from the module's `classifier`; an error for families whose
        official checkpoints are detectors or segmentors only."""
        module = importlib.import_module(self.module)
        if not hasattr(module, "classifier"):
            with_one = ", ".join(n for n, f in FAMILIES.items() if hasattr(importlib.import_module(f.module), "classifier"))
            raise ValueError(f"family {self.name!r} has no classification network: its official checkpoints are "
                             f"detection/segmentation models, so pretrain it for detection or segmentation "
                             f"(classification: {with_one})")
        return module.classifier(arch, geometry, num_classes)


FAMILIES: dict[str, Family] = {
    "vit": Family("vit", "vlmswap.vision.vit", ("block-2",)),
    # stage2 / stage4: the Appendix B stage ablation of the hierarchical families
    "vmamba": Family("vmamba", "vlmswap.vision.vmamba", ("stage3", "stage3-outnorm", "stage2", "stage4")),
    # named by config/experiments.yaml; taps as ../shared/paper/checkpoint_sources.csv describes them
    "maxvit": Family("maxvit", "vlmswap.vision.maxvit", ("stage3", "stage2", "stage4")),
    "mambavision": Family("mambavision", "vlmswap.vision.mambavision", ("stage3", "stage2", "stage4")),
    "vim": Family("vim", "vlmswap.vision.vim", ("final-norm",)),
    "vitdet": Family("vitdet", "vlmswap.vision.vitdet", ("last-block",)),
    "vit-adapter": Family("vit-adapter", "vlmswap.vision.vit_adapter", ("adapter-stride32",)),
    "beit-adapter": Family("beit-adapter", "vlmswap.vision.beit_adapter", ("adapter-stride32",)),
    "fused": Family("fused", "vlmswap.vision.fused", ("block-2",)),
    # any timm model / any transformers vision model, tapped by the index of one of its own layers
    "timm": Family("timm", "vlmswap.vision.timm_encoder", ("index-1",), r"index-?[0-9]+(\+prefix)?",
                   "index<N> or index<N>+prefix (N: an index of the model's forward_intermediates, negative "
                   "from the end, e.g. index2, index-1; +prefix keeps the class/register tokens)"),
    "hf": Family("hf", "vlmswap.vision.hf_encoder", ("layer-2",), r"layer-?[0-9]+(\+prefix)?",
                 "layer<N> or layer<N>+prefix (N: an index of the model's hidden_states, 0 = the embeddings, "
                 "negative from the end, e.g. layer-2; +prefix keeps the class/register tokens)"),
}


def build_backbone(family: str, arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> "VisionBackbone":
    """An untrained backbone of `family`/`arch` returning tokens at `tap` for `geometry` inputs."""
    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; allowed: {', '.join(sorted(FAMILIES))}")
    spec = FAMILIES[family]
    if not spec.accepts(tap):
        raise ValueError(f"unknown tap {tap!r} for family {family!r}; allowed: {spec.allowed_taps}")
    return spec.build(arch, tap, geometry)
