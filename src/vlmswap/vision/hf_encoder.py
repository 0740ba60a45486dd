"""Family "hf": any transformers vision model as a frozen encoder, tapped at one of its hidden states.

The model is `AutoModel.from_config(config)` (transformers 5.23.0); for a CLIP/SigLIP-style dual
encoder (a config with a `vision_config`) it is the vision tower alone (`SiglipVisionModel`,
`CLIPVisionModel`, ...). The tap is an index into the forward's `hidden_states` (`output_hidden_states=
True`): 0 is the embeddings, i the output of layer i, negative indices count from the end, so
`layer-2` is the second-to-last layer's output without the final norm, the tokens Prismatic takes
from its ViTs (reference/prismatic_spec.md 2.1). Prefix tokens (class, registers) are dropped;
`layer<N>+prefix` keeps them in front. Hidden states that are feature maps (B, C, h, w) (ConvNeXt)
become h*w row-major tokens. Prefix tokens are counted as the tokens beyond the patch grid
((H // patch_size) * (W // patch_size)), as ViT-style models put them in front of the patches.

`arch` is a hub id or a local snapshot folder (its `config.json`, and the mean/std of its
`preprocessor_config.json`; offline, the hub cache is read: HF_HUB_OFFLINE=1), or a mapping: either
`{model_type: <type>, <config field>: <value>, ...}` (a config built in place, e.g. a tiny
`{model_type: vit, hidden_size: 64, ...}` mini-world member, or `{model_type: siglip, vision_config:
{...}}`), or `{pretrained: <hub id or folder>, <field>: <override>, ...}`; both may carry `mean` and
`std`, else a hub id or folder must have them in its preprocessor_config.json, and a config built in
place takes its model type's image-processor defaults. Only the normalization comes from the
image processor: resizing stays ours (Prismatic's letterbox). A field the config class does not define
is refused with the closest one (AutoConfig would keep it as an attribute that no model reads), as is
a value of the wrong type.

Weights are a transformers checkpoint (`model.safetensors` of the model, of its classifier, or of the
whole dual encoder), loaded by `load_official` with exact key matching on the vision model: the
checkpoint's keys under the model's `base_model_prefix` or `vision_model.` are taken when the model
itself has no such prefix (as `from_pretrained` does); the text tower, logit scale and classifier
outside it are not part of the backbone, nor is a pooler (not on the path to any hidden state).
Inputs at another size than the config's `image_size` interpolate the position embeddings
(`interpolate_pos_encoding=True`, where the model has it).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import Tensor, nn

from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError, LayerTap, VisionBackbone, as_triple

__all__ = ["HfBackbone", "HfModel", "Survey", "build", "check", "classifier", "parse_tap", "resolve", "survey"]

_OWN_KEYS = {"model_type", "pretrained", "mean", "std"}  # mapping keys read here; the rest are config fields
_NOT_BACKBONE = ("pooler.",)
# what every config takes beside its fields, read by PreTrainedConfig.__post_init__ (transformers 5.23.0)
_GENERIC_KWARGS = {"attn_implementation", "experts_implementation"}


def parse_tap(tap: str) -> LayerTap:
    """`layer2` -> LayerTap(2, False); `layer-1+prefix` -> LayerTap(-1, True)."""
    return LayerTap.parse("hf", tap)


@dataclass(frozen=True)
class HfModel:
    """What an `arch` resolves to: the full config (a dual encoder's, or the model's own), the vision
    model's config, a name for messages, and the normalization."""

    name: str
    config: Any
    vision_config: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _snapshot_norm(source: str) -> tuple[Any, Any] | None:
    """mean/std of the preprocessor_config.json of a snapshot folder or a hub id (the hub cache offline)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(source)
    except OSError:
        return None
    if settings.get("image_mean") is None or settings.get("image_std") is None:
        return None
    return settings["image_mean"], settings["image_std"]


def _model_type_norm(model_types: list[str]) -> tuple[Any, Any] | None:
    """mean/std of the default image processor of the first of `model_types` that has one."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    for model_type in model_types:
        names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
        for name in (names.values() if isinstance(names, Mapping) else [names]) if names else ():
            processor = getattr(transformers, name, None) if name else None
            if getattr(processor, "image_mean", None) is not None:
                return processor.image_mean, processor.image_std
    return None


def _fields_of(config_class: type) -> set[str]:
    """The fields a config class defines: its __init__'s keywords (a dataclass since transformers 5: its
    own fields and PreTrainedConfig's), their aliases (`attribute_map`) and its settable properties
    (num_labels, output_attentions, ...). Any other keyword would be stored as an attribute and read by
    no model."""
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = {n for n, p in inspect.signature(config_class.__init__).parameters.items() if p.kind in keywords}
    known |= set(getattr(config_class, "attribute_map", {}))
    known |= {n for n, v in inspect.getmembers(config_class) if isinstance(v, property) and v.fset is not None}
    return {n for n in known if not n.startswith("_")} - {"self"} | _GENERIC_KWARGS


def _check_fields(config_class: type, fields: Mapping[str, Any], name: str, where: str = "") -> None:
    """Every given field is one the config class defines (a sub-config's fields, `vision_config: {...}`,
    against its own class), else an error with the closest field."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    known = _fields_of(config_class)
    for key, value in fields.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)  # a weak match misleads
            own = sorted(known - _fields_of(PretrainedConfig))
            raise ArchError(f"hf arch {name}: {config_class.__name__} has no field '{where}{key}'"
                            + (f"; did you mean '{where}{close[0]}'?" if close else f"; its fields: {', '.join(own)}")
                            + " (a field it does not define would be ignored)")
        sub = getattr(config_class, "sub_configs", {}).get(key)
        if isinstance(value, Mapping) and sub is not None:
            if not (isinstance(sub, type) and issubclass(sub, PretrainedConfig)):  # AutoConfig: by its model_type
                sub = CONFIG_MAPPING[value["model_type"]] if value.get("model_type") in CONFIG_MAPPING else None
            if sub is not None:
                _check_fields(sub, {k: v for k, v in value.items() if k != "model_type"}, name, f"{where}{key}.")


def resolve(arch: str | Mapping[str, Any]) -> HfModel:
    """The configs and normalization of `arch` (a hub id / snapshot folder, or a mapping)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    given: Mapping[str, Any] = arch if isinstance(arch, Mapping) else {}
    model_type = given.get("model_type")
    if model_type is not None and model_type not in CONFIG_MAPPING_NAMES:
        close = difflib.get_close_matches(str(model_type), CONFIG_MAPPING_NAMES, n=3)
        raise ArchError(f"hf arch {dict(given)}: unknown transformers model_type {model_type!r}"
                        + (f"; close matches: {', '.join(map(repr, close))}" if close else "")
                        + f" (transformers {transformers.__version__} has {len(CONFIG_MAPPING_NAMES)} types)")
    fields = {k: v for k, v in given.items() if k not in _OWN_KEYS}
    source = arch if isinstance(arch, str) else given.get("pretrained")
    name = str(source) if source is not None else f"{model_type} config"
    try:
        if source is not None:
            config = AutoConfig.from_pretrained(str(source), **fields)
        elif "model_type" in given:
            config = AutoConfig.for_model(given["model_type"], **fields)
        else:
            raise ArchError(f"bad hf arch {arch!r}: a hub id or snapshot folder, or a mapping with `model_type` "
                            "(a config built in place) or `pretrained` (a hub id or folder), plus config fields")
    except OSError as error:  # not on the hub, not cached, no config.json in the folder
        raise ArchError(f"hf arch {source!r}: no transformers config found ({error}); give a hub id that is in "
                        "the hub cache (or reachable), or a folder with config.json") from None
    except (KeyError, TypeError) as error:  # an unknown model_type or field
        raise ArchError(f"bad hf arch {dict(given)}: {error}") from None
    except StrictDataclassError as error:  # a field of the wrong type (transformers' configs are strict dataclasses)
        cause = error.__cause__ or error
        raise ArchError(f"hf arch {name}: {' '.join(str(cause).split())}; give the value the field's "
                        "type (YAML reads '64' as a string, 64 as an int)") from None
    _check_fields(type(config), fields, name)
    vision = getattr(config, "vision_config", None) or config
    types = [config.model_type, vision.model_type, vision.model_type.removesuffix("_vision_model")]
    if ("mean" in given) != ("std" in given):
        raise ArchError(f"hf arch {name}: give both `mean` and `std`, or neither")
    if "mean" in given:
        mean, std = given["mean"], given["std"]
    elif source is not None:  # the weights' own processor, never a guess
        norm = _snapshot_norm(str(source))
        if norm is None:
            raise ArchError(f"hf arch {name}: no preprocessor_config.json with image_mean/image_std (in the folder "
                            "or the hub cache); add `mean: [...]` and `std: [...]` to the arch")
        mean, std = norm
    else:  # a config built in place: the defaults of its model type's image processor
        norm = _model_type_norm(types)
        if norm is None:
            raise ArchError(f"hf arch {name}: no image processor for model type {config.model_type!r} gives a "
                            "mean/std; add `mean: [...]` and `std: [...]` to the arch")
        mean, std = norm
    return HfModel(name, config, vision, as_triple(mean, "mean"), as_triple(std, "std"))


def build_model(spec: HfModel) -> nn.Module:
    """The vision model of `spec`, with fresh weights."""
    from transformers import AutoModel

    try:
        return AutoModel.from_config(spec.vision_config)
    except ValueError as error:  # a config type AutoModel has no class for
        raise ArchError(f"hf arch {spec.name}: transformers has no model for config "
                        f"{type(spec.vision_config).__name__}: {error}") from None


def _patch_grid(vision_config: Any, geometry: Geometry) -> int | None:
    patch = getattr(vision_config, "patch_size", None)
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return (geometry.height // ph) * (geometry.width // pw)


def _forward_kwargs(model: nn.Module, vision_config: Any, geometry: Geometry) -> dict[str, Any]:
    size = getattr(vision_config, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size) if size else None
    if size != (geometry.height, geometry.width) and "interpolate_pos_encoding" in inspect.signature(
            model.forward).parameters:
        return {"interpolate_pos_encoding": True}  # position embeddings resampled to this input, as HF does
    return {}


def _hidden_states(model: nn.Module, pixels: Tensor, kwargs: Mapping[str, Any]) -> tuple[Tensor, ...]:
    out = model(pixel_values=pixels, output_hidden_states=True, return_dict=True, **kwargs)
    if getattr(out, "hidden_states", None) is None:
        raise ArchError(f"{type(model).__name__} returns no hidden_states, so it has no layer to tap")
    return tuple(out.hidden_states)


def _tokens(hidden: Tensor) -> Tensor:
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden  # maps -> row-major tokens


@dataclass(frozen=True)
class Survey:
    """What every hidden state of a model gives at one geometry (from a meta-device run)."""

    name: str
    geometry: Geometry
    tokens: tuple[int, ...]      # per index, patch tokens only
    channels: tuple[int, ...]
    prefix: tuple[int, ...]      # class/register tokens in front, per index

    def listing(self) -> str:
        return ", ".join(f"layer{i}: {n} tokens x {c}" + (f" (+{p} prefix)" if p else "")
                         for i, (n, c, p) in enumerate(zip(self.tokens, self.channels, self.prefix)))


def survey(spec: HfModel, geometry: Geometry) -> Survey:
    """Build the vision model on the meta device and run it once at `geometry` (shapes only)."""
    with torch.device("meta"), torch.no_grad():
        model = build_model(spec).eval()
        hidden = _hidden_states(model, torch.empty(1, 3, geometry.height, geometry.width),
                                _forward_kwargs(model, spec.vision_config, geometry))
    grid = _patch_grid(spec.vision_config, geometry)
    tokens, channels, prefix = [], [], []
    for h in hidden:
        t = _tokens(h)
        extra = t.shape[1] - grid if grid is not None and h.dim() == 3 and t.shape[1] > grid else 0
        tokens.append(t.shape[1] - extra)
        channels.append(t.shape[2])
        prefix.append(extra)
    return Survey(spec.name, geometry, tuple(tokens), tuple(channels), tuple(prefix))


def _resolve_tap(tap: str, facts: Survey) -> tuple[LayerTap, int]:
    parsed = parse_tap(tap)
    n = len(facts.tokens)
    index = parsed.index + n if parsed.index < 0 else parsed.index
    if not 0 <= index < n:
        raise ValueError(f"hf model {facts.name} has no hidden state {parsed.index} (tap {tap!r}); its "
                         f"hidden_states indices are 0..{n - 1} (or -{n}..-1; 0 = the embeddings), at "
                         f"{facts.geometry}: {facts.listing()}")
    if parsed.prefix and not facts.prefix[index]:
        raise ValueError(f"hf model {facts.name} has no prefix tokens at layer{index} (tap {tap!r}); use "
                         f"layer{parsed.index} (at {facts.geometry}: {facts.listing()})")
    return parsed, index


def check(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> int:
    """The visual-token count of `arch` at `tap` and `geometry` (meta device), or a ValueError naming
    the model, its hidden-state indices and the token count of each."""
    facts = survey(resolve(arch), geometry)
    parsed, index = _resolve_tap(tap, facts)
    return facts.tokens[index] + (facts.prefix[index] if parsed.prefix else 0)


class HfBackbone(VisionBackbone):
    """Tokens of one hidden state of a transformers vision model (tap `layer<N>[+prefix]`)."""

    def __init__(self, arch: str | Mapping[str, Any], tap: str, geometry: Geometry):
        super().__init__()
        self.spec = resolve(arch)
        facts = survey(self.spec, geometry)
        self.tap, self.index = _resolve_tap(tap, facts)
        self.embed_dim = facts.channels[self.index]
        self.mean, self.std = self.spec.mean, self.spec.std
        self.model = build_model(self.spec)
        self._surveys = {(geometry.width, geometry.height): facts}
        self._kwargs = _forward_kwargs(self.model, self.spec.vision_config, geometry)

    def _facts(self, width: int, height: int) -> Survey:
        if (width, height) not in self._surveys:
            self._surveys[(width, height)] = survey(self.spec, Geometry(width, height))
        return self._surveys[(width, height)]

    def forward(self, pixels: Tensor) -> Tensor:
        tokens = _tokens(_hidden_states(self.model, pixels, self._kwargs)[self.index])
        if self.tap.prefix:
            return tokens
        return tokens[:, self._facts(pixels.shape[-1], pixels.shape[-2]).prefix[self.index]:]

    def num_tokens(self, width: int, height: int) -> int:
        facts = self._facts(width, height)
        return facts.tokens[self.index] + (facts.prefix[self.index] if self.tap.prefix else 0)

    def non_backbone_key(self, key: str) -> bool:
        # a pooler (ViTModel's) is on no hidden state's path; BatchNorm's counter is a training statistic
        return key.startswith(_NOT_BACKBONE) or key.endswith(".num_batches_tracked")

    def official_module(self) -> nn.Module:
        return self.model

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # a classifier's or a dual encoder's checkpoint holds the vision model under a prefix (ViT
        # classifiers `vit.`, SigLIP/CLIP `vision_model.`): take that subtree, as from_pretrained does
        own = self.model.state_dict().keys()
        if not state.keys() & own:
            for prefix in (self.model.base_model_prefix, "vision_model"):
                tree = {k[len(prefix) + 1:]: v for k, v in state.items() if prefix and k.startswith(prefix + ".")}
                if tree.keys() & own:
                    state = tree
                    break
        return {k: v for k, v in state.items() if not self.non_backbone_key(k)}

    def official_checkpoint(self, kind: str, weights: Mapping[str, Tensor], head: Mapping[str, Tensor],
                            info: Mapping[str, Any]) -> tuple[Any, str]:
        # transformers checkpoints are safetensors files (model.safetensors); dense objectives keep
        # the default mmengine-style container
        if kind == "classification":
            return {k: v.contiguous() for k, v in {**weights, **head}.items()}, "safetensors"
        return super().official_checkpoint(kind, weights, head, info)


def classifier(arch: str | Mapping[str, Any], geometry: Geometry,
               num_classes: int) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """The classification network mini members are pretrained as (transformers' *ForImageClassification
    for the config) and its logits."""
    from transformers import AutoModelForImageClassification

    spec = resolve(arch)
    config = spec.config
    config.num_labels = num_classes
    try:
        model = AutoModelForImageClassification.from_config(config)
    except ValueError as error:
        raise ValueError(f"hf arch {spec.name}: transformers has no image classifier for "
                         f"{type(config).__name__}, so it cannot be pretrained for classification: {error}") from None
    kwargs = _forward_kwargs(model, spec.vision_config, geometry)
    return model, lambda pixels: model(pixel_values=pixels, **kwargs).logits


def build(arch: str | Mapping[str, Any], tap: str, geometry: Geometry) -> HfBackbone:
    return HfBackbone(arch, tap, geometry)
