"""What every vision backbone offers the VLM: tokens, their count, its normalization, its loader.

A backbone family (one file each: vit.py, vmamba.py) subclasses `VisionBackbone`, builds its
network with the official parameter names, and declares which keys of an official checkpoint
are not part of the backbone (`non_backbone_key`). Loading is then the same for all families:
unwrap the checkpoint container, drop those keys, and require an exact key match
(DESIGN.md, fidelity rules: "strict=True on the backbone keys").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from vlmswap.checkpoint import CheckpointError

if TYPE_CHECKING:
    from PIL import Image

    from vlmswap.image import Geometry, PixelTransform

__all__ = ["ArchError", "CheckpointMismatch", "LayerTap", "VisionBackbone", "as_triple", "init_linear_and_norms",
           "resolve_arch", "unwrap_checkpoint"]

_SHOWN = 10  # offending keys listed in an error message


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint whose weights do not fit the backbone the config builds (other keys,
    another container, other shapes). `index`: which of a fused backbone's checkpoints; the caller
    that knows the files (vlm.materialize_backbone) puts the file's name in front."""

    def __init__(self, message: str, index: int = 0):
        super().__init__(message)
        self.index = index


def unwrap_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The state_dict inside an official checkpoint object, and a name for the container format.

    - classification trainers (VMamba, Vim, DeiT): {"model": state_dict, "optimizer": ..., ...};
      "model" is read, not "model_ema", as VMamba's own Backbone_VSSM.load_pretrained does
      (backbones.md 1.5);
    - mmengine detection/segmentation: {"state_dict": {...}, "meta": ...} with the backbone
      under `backbone.` (backbones.md 1.5); other prefixes (neck., decode_head., ...) are ignored;
    - a plain state_dict (timm's hub weights).
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatch(f"a checkpoint must be a mapping, got {type(checkpoint).__name__}")
    if isinstance(checkpoint.get("model"), Mapping):
        return dict(checkpoint["model"]), "classification checkpoint (weights under 'model')"
    if isinstance(checkpoint.get("state_dict"), Mapping):
        inner = checkpoint["state_dict"]
        if any(k.startswith("backbone.") for k in inner):
            return ({k[len("backbone."):]: v for k, v in inner.items() if k.startswith("backbone.")},
                    "mmengine checkpoint (weights under 'state_dict', backbone under 'backbone.')")
        return dict(inner), "checkpoint with weights under 'state_dict'"
    if checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return dict(checkpoint), "plain state_dict"
    # e.g. {"model_ema": state_dict}: weights under a name no official loader reads; which ones are meant is
    # the user's call (VMamba's own loader reads "model", not "model_ema")
    nested = [str(k) for k, v in checkpoint.items()
              if isinstance(v, Mapping) and v and all(isinstance(t, Tensor) for t in v.values())]
    hint = (f"; it holds weights under {nested[0]!r}: if those are the ones meant, save them as a plain state_dict "
            "or under 'model'" if nested else "")
    raise CheckpointMismatch("unrecognized checkpoint container: expected a state_dict or a dict with 'model' or "
                             f"'state_dict'; top-level keys: {_listing(sorted(map(str, checkpoint)))}{hint}")


def _listing(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _shared_prefix(keys: Sequence[str], expected: set[str]) -> str | None:
    """The dotted prefix every key has, when stripping it finds the backbone's keys (`module.` of a
    DistributedDataParallel or DataParallel save, `model.` of a wrapper)."""
    parts = min(keys, default="").split(".")
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n]) + "."
        if not all(k.startswith(prefix) for k in keys):
            return None
        if {k[len(prefix):] for k in keys} & expected:
            return prefix
    return None


def _size_mismatches(error: RuntimeError) -> str:
    """torch's multi-line load_state_dict error as one line: `size mismatch: key (checkpoint [..], backbone [..])`."""
    found = re.findall(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[(.*?)\]\)", str(error))
    if not found:
        return " ".join(line.strip() for line in str(error).splitlines())
    return f"{len(found)} size mismatch(es): " + _listing([f"{k} (checkpoint [{a}], backbone [{b}])" for k, a, b in found])


class VisionBackbone(nn.Module):
    """A frozen image encoder: (B, 3, H, W) normalized pixels -> (B, N, D) tokens at the cell's tap."""

    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    in_channels: int = 3  # of `pixels`' output (a fused backbone stacks one RGB view per tower)

    def forward(self, pixels: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def transform(self) -> "PixelTransform":
        """This backbone's image transform as plain data (for data-loader workers): one view with its
        mean/std; the letterbox fill is the mean in 0..255, as Prismatic pads."""
        from vlmswap.image import PixelTransform

        return PixelTransform(((self.mean, self.std),))

    def pixels(self, image: "Image.Image", geometry: "Geometry") -> Tensor:
        """The (C, H, W) input `forward` expects for one image (`transform` applied)."""
        return self.transform(image, geometry)

    def num_tokens(self, width: int, height: int) -> int:
        """Tokens `forward` returns for a (height, width) input, from the layer arithmetic alone."""
        raise NotImplementedError

    def non_backbone_key(self, key: str) -> bool:
        """True for keys of an official checkpoint (and of this module) that loading ignores:
        classification heads and anything else the tapped features do not depend on."""
        return False

    def official_module(self) -> nn.Module:
        """The module whose state_dict has the official key layout (default: the backbone itself)."""
        return self

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Family hook between unwrapping and matching (e.g. resampling position embeddings)."""
        return state

    def official_checkpoint(self, kind: str, weights: Mapping[str, Tensor], head: Mapping[str, Tensor],
                            info: Mapping[str, Any]) -> tuple[Any, str]:
        """A checkpoint object in the layout this family's official `kind` files use, and how to
        write it ("torch": torch.save, "pickle": a plain pickle, "safetensors": a safetensors file of
        the tensors). Used to save mini members.

        `weights` is an official-layout state_dict (for classification the whole classifier, head
        included, else `official_module()`'s), `head` the dense pretraining head's tensors (put
        under the framework's head prefix: mmdet `roi_head.bbox_head.`, mmseg `decode_head.`), `info` a few plain values (epochs, accuracy, arch) for the metadata.
        Default: classification as timm hub weights (a plain state_dict); detection/segmentation
        as an mmdet/mmseg (mmengine) file, the backbone under `backbone.` beside the heads.
        """
        if kind == "classification":
            return {**weights, **head}, "torch"
        prefix = {"detection": "roi_head.bbox_head.", "segmentation": "decode_head."}[kind]
        state = {**{f"backbone.{k}": v for k, v in weights.items()}, **{prefix + k: v for k, v in head.items()}}
        return {"meta": {"mmengine_version": "vlmswap-mini", **info}, "state_dict": state}, "torch"

    def load_checkpoints(self, checkpoints: Sequence[Mapping[str, Any]]) -> None:
        """Load the backbone's official checkpoint object(s): one, except for a fused backbone."""
        if len(checkpoints) != 1:
            raise ValueError(f"{type(self).__name__} takes one checkpoint, got {len(checkpoints)}")
        self.load_official(checkpoints[0])

    def load_official(self, checkpoint: Mapping[str, Any]) -> None:
        """Load the backbone weights of an official checkpoint object, with exact key matching."""
        state, container = unwrap_checkpoint(checkpoint)
        try:
            state = self.adapt_state_dict({k: v for k, v in state.items() if not self.non_backbone_key(k)})
        except (RuntimeError, KeyError) as error:  # e.g. a position table that cannot be resampled to this model
            raise CheckpointMismatch(f"{type(self).__name__}: the checkpoint does not match the backbone "
                                     f"(container: {container}): {type(error).__name__}: {error}") from None
        target = self.official_module()
        expected = {k for k in target.state_dict() if not self.non_backbone_key(k)}
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
            prefix = _shared_prefix(list(state), expected)
            if prefix:
                ddp = " (as DistributedDataParallel and DataParallel save them)" if prefix == "module." else ""
                problems.insert(0, f"every key starts with {prefix!r}{ddp}: strip that prefix from the keys "
                                   "and save the file again")
            raise CheckpointMismatch(f"{type(self).__name__}: the checkpoint does not match the backbone "
                                     f"(container: {container}); " + "; ".join(problems))
        try:
            target.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise CheckpointMismatch(f"{type(self).__name__}: the checkpoint does not match the backbone "
                                     f"(container: {container}): {_size_mismatches(error)}") from None


@dataclass(frozen=True)
class LayerTap:
    """A tap of the generic families (timm, hf): the index of one of the model's own layers (negative
    counts from the end) and whether the prefix (class/register) tokens are kept: `index2`, `layer-2`,
    `layer-2+prefix`."""

    index: int
    prefix: bool

    @classmethod
    def parse(cls, family: str, tap: str) -> "LayerTap":
        from vlmswap.vision.registry import FAMILIES

        spec = FAMILIES[family]
        if spec.tap_pattern is None or not re.fullmatch(spec.tap_pattern, tap):
            raise ValueError(f"unknown tap {tap!r} for family {family!r}; allowed: {spec.allowed_taps}")
        body, _, suffix = tap.partition("+")
        return cls(int(re.sub(r"^[a-z]+", "", body)), suffix == "prefix")


class ArchError(ValueError):
    """A backbone's `arch` that its family cannot build (`field` "arch"), or the timm weight tag it is
    built with (`field` "weights"): `vlmswap validate` names the config key from `field`, where a
    tap the model lacks (a plain ValueError) is the cell's."""

    def __init__(self, message: str, field: str = "arch"):
        super().__init__(message)
        self.field = field


def as_triple(values: Any, what: str) -> tuple[float, float, float]:
    """A mean/std given as a sequence of 3 numbers."""
    triple = tuple(float(v) for v in values)
    if len(triple) != 3:
        raise ValueError(f"{what} needs 3 values (RGB), got {list(values)}")
    return triple  # type: ignore[return-value]


def resolve_arch(arch: str | Mapping[str, Any], archs: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any],
                 required: set[str], allowed: set[str], what: str) -> dict[str, Any]:
    """A family's arch spec: a named size from `archs`, or a mapping (a tiny mini-world member) with
    every `required` key and only `allowed` ones; `defaults` fill what either leaves out."""
    if isinstance(arch, str):
        if arch not in archs:
            raise ArchError(f"unknown {what} architecture {arch!r}; named ones: {', '.join(archs)} "
                            f"(or a mapping with {', '.join(sorted(required))})")
        return {**defaults, **archs[arch]}
    unknown = set(arch) - allowed
    if unknown or not required <= set(arch):
        raise ArchError(f"bad {what} arch {dict(arch)}: needs {', '.join(sorted(required))}; allowed keys: "
                        f"{', '.join(sorted(allowed))}" + (f"; unknown: {sorted(unknown)}" if unknown else ""))
    return {**defaults, **arch}


def init_linear_and_norms(module: nn.Module, norms: tuple[type[nn.Module], ...] = (nn.LayerNorm,)) -> None:
    """The `_init_weights` most official backbones apply (module.apply): every nn.Linear weight
    trunc-normal with std 0.02 and zero bias, the `norms` layers weight 1 and bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, norms):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
