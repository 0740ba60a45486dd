"""Family "timm": any `timm.create_model` model as a frozen encoder, tapped at one of its intermediates.

timm gives every model one way to ask for intermediate features, `forward_intermediates(x,
indices=[i], intermediates_only=True)` (timm/models/*.py in timm 1.0.31): index i is whatever the
model enumerates there, a stage of a hierarchical model (ConvNeXt, Swin, MambaOut, EfficientViT:
strides 4, 8, 16, 32; MaxViT also counts its stem first), a block of a plain ViT. The tap names
that index: `index2` (the third intermediate), `index-1` (the last); the feature map (B, C, h, w)
becomes h*w row-major tokens. Prefix tokens (class, registers) are dropped, as Prismatic drops them
for its ViTs (reference/prismatic_spec.md 2.1); `index<N>+prefix` keeps them in front.

`arch` is a model name, optionally with a weight tag (`convnext_tiny.fb_in1k`: the tag's
`pretrained_cfg` gives the normalization, and with it the letterbox fill), or a mapping
`{model: <name>, <create_model keyword>: <value>, ...}` for a model with other sizes than the named
one (a tiny mini-world member: `{model: convnext_atto, depths: [1, 1, 1, 1], dims: [16, 32, 48, 64]}`),
which may also carry `mean`/`std`. Models that take an `img_size` are built at the cell's geometry.
A model or tag timm does not know is refused with the closest names or the model's tags (an
`ArchError`: `vlmswap validate` names the backbone's `arch` or its checkpoint's `timm` key).

Weights are a timm checkpoint (a timm tag source: the hub's `timm/<name>.<tag>/model.safetensors`;
or a local file of the same state_dict), loaded by `load_official` with exact key matching: the
classifier named by `pretrained_cfg["classifier"]` is not part of the backbone (the model is built
with `num_classes=0`), every other key must match. The model module's own `checkpoint_filter_fn`
runs first, as in `timm.create_model(..., pretrained=True)` (it resamples position tables to the
geometry, or maps an original release's keys to timm's).

Token counts come from the model itself: a twin built on the meta device runs every intermediate
once (shapes only), so a tap that the model does not have is refused with the list of the indices it
has and the tokens each would give at the cell's geometry (`check`, run by `vlmswap validate`).
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import timm
import torch
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError, LayerTap, VisionBackbone, as_triple

__all__ = ["TimmBackbone", "build", "build_model", "check", "check_tag", "classifier", "parse_tap", "survey"]

_OWN_KEYS = {"model", "mean", "std"}  # mapping keys read here; every other one goes to create_model


def parse_tap(tap: str) -> LayerTap:
    """`index2` -> LayerTap(2, False); `index-1+prefix` -> LayerTap(-1, True)."""
    return LayerTap.parse("timm", tap)


def _name_and_kwargs(arch: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(arch, str):
        name, kwargs = arch, {}
    elif isinstance(arch, Mapping):
        if "model" not in arch or not isinstance(arch["model"], str):
            raise ArchError(f"bad timm arch {dict(arch)}: needs `model` (a timm model name, e.g. convnext_tiny); "
                            "other keys go to timm.create_model (e.g. depths, dims), plus optional mean/std")
        if ("mean" in arch) != ("std" in arch):  # the weights' own statistics, or both of the config's
            raise ArchError(f"timm arch {dict(arch)}: give both `mean` and `std`, or neither")
        name, kwargs = arch["model"], {k: v for k, v in arch.items() if k not in _OWN_KEYS}
    else:
        raise ArchError(f"a timm arch is a model name or a mapping with `model`, got {arch!r}")
    model, _, tag = name.partition(".")
    if not timm.is_model(model):
        close = _similar(model)
        raise ArchError(f"unknown timm model {name!r}" + (f"; similar names: {', '.join(close)}" if close else "")
                        + " (timm.list_models() lists them all)")
    if tag:
        check_tag(model, tag)
    if "img_size" in kwargs:
        raise ArchError(f"timm arch {dict(arch)}: img_size follows the cell's geometry; remove it")
    return name, kwargs


def _similar(model: str) -> list[str]:
    """Up to 8 timm model names close to a misspelled one: the closest spellings, then names that share
    its first word (`convnext_tinny` -> convnext_tiny, ..., convnext_atto, ...)."""
    close = difflib.get_close_matches(model, timm.list_models(), n=5)
    family = [m for m in timm.list_models(f"*{model.split('_')[0]}*") if m not in close]
    return (close + family)[:8]


def check_tag(model: str, tag: str) -> None:
    """A weight tag timm knows for `model` (its pretrained_cfg names the weights and their normalization),
    else an error listing the tags it has; timm lists them from its registry, without the network."""
    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{model}.*")]
    if tag in tags:
        return
    close = difflib.get_close_matches(tag, tags, n=1)
    raise ArchError(f"timm model {model!r} has no weight tag {tag!r}"
                    + (f" (did you mean {model}.{close[0]}?)" if close else "")
                    + (f"; its tags: {', '.join(tags)}" if tags else "; timm has no pretrained weights for it")
                    + f" (timm {timm.__version__}, timm.list_pretrained('{model}.*'))", field="weights")


@cache
def _takes_img_size(name: str) -> bool:
    """Whether the model's class is built for one input size (ViT, Swin, MaxViT, ...): those get the
    geometry as `img_size`; fully convolutional ones (ConvNeXt, MambaOut, ...) take any size."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return "img_size" in inspect.signature(type(model).__init__).parameters


def build_model(arch: str | Mapping[str, Any], geometry: Geometry, num_classes: int) -> nn.Module:
    """timm's model for `arch`, at `geometry` where the model fixes its input size, with a
    `num_classes` classifier (0: none)."""
    name, kwargs = _name_and_kwargs(arch)
    if _takes_img_size(name.split(".")[0]):
        kwargs["img_size"] = (geometry.height, geometry.width)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as error:  # a keyword the model does not have
        raise ArchError(f"timm model {name!r} cannot be built with {kwargs}: {error}") from None
    if not hasattr(model, "forward_intermediates"):
        raise ArchError(f"timm model {name!r} ({type(model).__name__}) has no forward_intermediates, so it "
                        "offers no intermediate features to tap; pick another model")
    return model


def _intermediates(model: nn.Module, x: Tensor, indices: list[int] | None, prefix: bool) -> list[Tensor]:
    """(B, N, C) tokens of each requested intermediate, prefix tokens in front when `prefix`."""
    extra: dict[str, Any] = {}
    parameters = inspect.signature(model.forward_intermediates).parameters
    if "stop_early" in parameters:
        extra["stop_early"] = True  # nothing after the deepest requested index runs
    if prefix:
        extra["return_prefix_tokens"] = True
    outs = model.forward_intermediates(x, indices=indices, intermediates_only=True, **extra)
    tokens = []
    for out in outs:
        front = None
        if prefix:
            out, front = out
        grid = out.flatten(2).transpose(1, 2) if out.dim() == 4 else out  # NCHW maps -> row-major tokens
        tokens.append(grid if front is None else torch.cat([front, grid], dim=1))
    return tokens


@dataclass(frozen=True)
class Survey:
    """What every intermediate of a model gives at one geometry (from a meta-device run)."""

    name: str
    geometry: Geometry
    tokens: tuple[int, ...]      # per index, patch tokens only
    channels: tuple[int, ...]
    prefix_tokens: int           # class/register tokens the model carries (0: none)

    def listing(self) -> str:
        return ", ".join(f"index{i}: {n} tokens x {c}" for i, (n, c) in enumerate(zip(self.tokens, self.channels)))


def survey(arch: str | Mapping[str, Any], geometry: Geometry) -> Survey:
    """Build `arch` on the meta device at `geometry` and run all of its intermediates once (shapes only)."""
    name, _ = _name_and_kwargs(arch)
    with torch.device("meta"), torch.no_grad():
        model = build_model(arch, geometry, num_classes=0).eval()
        x = torch.empty(1, 3, geometry.height, geometry.width)
        outs = _intermediates(model, x, None, prefix=False)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if prefix and "return_prefix_tokens" not in inspect.signature(model.forward_intermediates).parameters:
        prefix = 0  # carried internally, but forward_intermediates cannot hand them out
    return Survey(name, geometry, tuple(o.shape[1] for o in outs), tuple(o.shape[2] for o in outs), prefix)


def _resolve(tap: str, facts: Survey) -> tuple[LayerTap, int]:
    """The tap and its absolute index, or an error naming what the model offers at this geometry."""
    parsed = parse_tap(tap)
    n = len(facts.tokens)
    index = parsed.index + n if parsed.index < 0 else parsed.index
    if not 0 <= index < n:
        raise ValueError(f"timm model {facts.name!r} has no intermediate {parsed.index} (tap {tap!r}); its "
                         f"forward_intermediates indices are 0..{n - 1} (or -{n}..-1), at {facts.geometry}: "
                         f"{facts.listing()}")
    if parsed.prefix and not facts.prefix_tokens:
        raise ValueError(f"timm model {facts.name!r} has no prefix tokens to keep (tap {tap!r}); use "
                         f"index{parsed.index} (at {facts.geometry}: {facts.listing()})")
    return parsed, index


def check(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> int:
    """The visual-token count of `arch` at `tap` and `geometry` (meta device), or a ValueError naming
    the model, its intermediate indices and the token count of each."""
    facts = survey(arch, geometry)
    parsed, index = _resolve(tap, facts)
    return facts.tokens[index] + (facts.prefix_tokens if parsed.prefix else 0)


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


class TimmBackbone(VisionBackbone):
    """Tokens of one `forward_intermediates` index of a timm model (tap `index<N>[+prefix]`)."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry):
        super().__init__()
        self.arch, self.geometry = arch, geometry
        facts = survey(arch, geometry)
        self.tap, self.index = _resolve(tap, facts)
        self.embed_dim = facts.channels[self.index]
        self.model = build_model(arch, geometry, num_classes=0)
        self._surveys = {(geometry.width, geometry.height): facts}
        cfg = self.model.pretrained_cfg
        given = arch if isinstance(arch, Mapping) else {}
        self.mean = as_triple(given.get("mean", cfg.get("mean", (0.5, 0.5, 0.5))), "mean")
        self.std = as_triple(given.get("std", cfg.get("std", (0.5, 0.5, 0.5))), "std")
        self.classifier_keys = _classifier_keys(self.model)

    def forward(self, pixels: Tensor) -> Tensor:
        (tokens,) = _intermediates(self.model, pixels, [self.index], self.tap.prefix)
        return tokens

    def num_tokens(self, width: int, height: int) -> int:
        if (width, height) not in self._surveys:
            self._surveys[(width, height)] = survey(self.arch, Geometry(width, height))
        facts = self._surveys[(width, height)]
        return facts.tokens[self.index] + (facts.prefix_tokens if self.tap.prefix else 0)

    def non_backbone_key(self, key: str) -> bool:
        # The classifier (built away by num_classes=0; `pretrained_cfg["classifier"]` names it) and
        # BatchNorm's training counter, which timm's hub weights keep or drop by model.
        return key.startswith(tuple(f"{c}." for c in self.classifier_keys)) or key.endswith(".num_batches_tracked")

    def official_module(self) -> nn.Module:
        return self.model  # timm weights are the bare model's state_dict

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # the model module's own filter, as timm applies it for pretrained=True; keys the model lacks
        # go around it so that load_official names them as unexpected
        filter_fn = getattr(sys.modules[type(self.model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is None:
            return state
        own = self.model.state_dict().keys()
        try:
            known = filter_fn({k: v for k, v in state.items() if k in own}, self.model)
        except (AttributeError, IndexError, TypeError, ValueError) as error:
            raise RuntimeError(f"timm's checkpoint_filter_fn for {type(self.model).__name__} failed: {error}") from None
        return {**known, **{k: v for k, v in state.items() if k not in own}}


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """The classification network mini members are pretrained as (timm's model and head) and its logits."""
    model = build_model(arch, geometry, num_classes)
    return model, model


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> TimmBackbone:
    return TimmBackbone(arch, tap, geometry)
