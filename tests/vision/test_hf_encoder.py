"""Family "hf": any transformers vision model from a config (ViT, DINOv2 with and without registers,
the vision tower of SigLIP and CLIP dual encoders, ConvNeXt), tapped at a hidden state; loaded with
strict keys from the checkpoints transformers writes (the bare model, a classifier, a whole dual
encoder), from a snapshot folder or the hub cache, offline. No download anywhere."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (AutoModel, Dinov2Config, SiglipImageProcessor, SiglipVisionConfig, ViTConfig,
                          ViTForImageClassification)

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry
from vlmswap.vision.base import ArchError
from vlmswap.vision.hf_encoder import HfBackbone, check, resolve
from vlmswap.vision.registry import FAMILIES, build_backbone

VIT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
       "image_size": 64, "patch_size": 16}
DINOV2 = {**{k: v for k, v in VIT.items() if k != "intermediate_size"}, "mlp_ratio": 2}  # Dinov2Config: a ratio
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 99}
IMAGENET = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# (arch mapping, the tower transformers builds for it, prefix tokens per hidden state)
ARCHS = {
    "vit": ({"model_type": "vit", **VIT}, "ViTModel", 1),
    "dinov2": ({"model_type": "dinov2", **DINOV2, "mean": IMAGENET[0], "std": IMAGENET[1]}, "Dinov2Model", 1),
    "dinov2-reg": ({"model_type": "dinov2_with_registers", **DINOV2, "num_register_tokens": 4, "mean": IMAGENET[0],
                    "std": IMAGENET[1]}, "Dinov2WithRegistersModel", 5),
    "siglip": ({"model_type": "siglip", "vision_config": VIT, "text_config": TEXT}, "SiglipVisionModel", 0),
    "siglip-vision": ({"model_type": "siglip_vision_model", **VIT}, "SiglipVisionModel", 0),
    "clip": ({"model_type": "clip", "vision_config": VIT, "text_config": TEXT}, "CLIPVisionModel", 1),
}


def _reference(kind, seed=1):
    """The model transformers itself builds for the arch's config (the dual encoder for siglip/clip)."""
    torch.manual_seed(seed)
    return AutoModel.from_config(resolve(ARCHS[kind][0]).config).eval()


def _vision(model):
    return getattr(model, "vision_model", model)


@pytest.mark.parametrize("kind,tap", [(kind, "layer-2") for kind in ARCHS]
                         + [(kind, "layer1+prefix") for kind in ARCHS if ARCHS[kind][2]])
def test_builds_loads_strictly_and_taps_the_hidden_state(kind, tap):
    arch, tower, prefix = ARCHS[kind]
    g = Geometry.parse("64")
    reference = _reference(kind)
    backbone = build_backbone("hf", arch, tap, g).eval()
    assert type(backbone.model).__name__ == tower
    backbone.load_official(reference.state_dict())  # a dual encoder's checkpoint: its vision tower
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        hidden = _vision(reference)(pixel_values=x, output_hidden_states=True).hidden_states
    index = -2 if tap == "layer-2" else 1
    expected = hidden[index] if "prefix" in tap else hidden[index][:, prefix:]
    assert out.shape == (2, backbone.num_tokens(64, 64), backbone.embed_dim)
    assert out.shape[1] == 16 + (prefix if "prefix" in tap else 0)
    torch.testing.assert_close(out, expected)


def test_a_classifier_checkpoint_loads_into_the_bare_model():
    # ViTForImageClassification keeps the model under `vit.` beside `classifier.`: the subtree is taken
    torch.manual_seed(0)
    classifier = ViTForImageClassification(ViTConfig(**VIT, num_labels=5)).eval()
    backbone = build_backbone("hf", ARCHS["vit"][0], "layer-1", Geometry.parse("64")).eval()
    backbone.load_official(classifier.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.vit(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]
        torch.testing.assert_close(backbone(x), expected)


def test_strict_loading_names_missing_and_unexpected_keys():
    state = _reference("vit").state_dict()
    backbone = build_backbone("hf", ARCHS["vit"][0], "layer-2", Geometry.parse("64"))
    backbone.load_official(state)  # ViTModel's pooler is not on a hidden state's path: ignored
    dropped = {k: v for k, v in state.items() if not k.startswith("layers.2.")}
    with pytest.raises(ValueError, match=r"missing key\(s\): layers\.2\."):
        backbone.load_official(dropped)
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): layers\.3\.attention\.q_proj\.bias"):
        backbone.load_official({**state, "layers.3.attention.q_proj.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match="size mismatch"):
        backbone.load_official({**state, "layers.2.attention.q_proj.bias": torch.zeros(8)})


@pytest.mark.parametrize("geometry", ["96", "96x64"])
def test_other_sizes_interpolate_the_position_embeddings(geometry):
    g = Geometry.parse(geometry)
    for kind in ("vit", "siglip", "dinov2"):
        backbone = build_backbone("hf", ARCHS[kind][0], "layer-2", g).eval()
        with torch.no_grad():
            out = backbone(torch.randn(1, 3, g.height, g.width))
        assert out.shape[1] == backbone.num_tokens(g.width, g.height) == (g.width // 16) * (g.height // 16)


def test_feature_map_models_become_row_major_tokens():
    arch = {"model_type": "convnext", "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "image_size": 64}
    backbone = build_backbone("hf", arch, "layer3", Geometry.parse("64")).eval()  # layer0 = stem (stride 4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        (grid,) = backbone.model(pixel_values=x, output_hidden_states=True).hidden_states[3:4]
    assert grid.shape == (1, 24, 4, 4)
    torch.testing.assert_close(out, grid.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("config,geometry,tap,tokens", [
    (ViTConfig(), "224", "layer-2", 196),                                                  # ViT-B/16
    (Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14), "224", "layer-2",
     256),                                                                                 # DINOv2 ViT-L/14
    (SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        patch_size=14, image_size=384), "384", "layer-2", 729),            # SigLIP so400m/384
    (SiglipVisionConfig(), "1333x800", "layer-2", 83 * 50),
    (ViTConfig(), "224", "layer-2+prefix", 197)])
def test_full_size_models_on_the_meta_device(config, geometry, tap, tokens, tmp_path):
    # the paper's DINOv2-L (256) and SigLIP-384 (729) token counts, from configs alone; the arch is a
    # snapshot folder holding only config.json
    config.save_pretrained(tmp_path)
    arch = {"pretrained": str(tmp_path), "mean": [0.5] * 3, "std": [0.5] * 3}
    g = Geometry.parse(geometry)
    with torch.device("meta"), torch.no_grad():
        backbone = build_backbone("hf", arch, tap, g)
        out = backbone(torch.empty(1, 3, g.height, g.width))
    assert out.shape[1] == backbone.num_tokens(g.width, g.height) == check(arch, tap, g) == tokens


def test_a_snapshot_folder_gives_config_weights_and_the_processors_mean_std(tmp_path):
    # what a hub snapshot holds: config.json, model.safetensors, preprocessor_config.json
    reference = _reference("siglip")
    reference.save_pretrained(tmp_path)
    SiglipImageProcessor(image_mean=[0.25, 0.5, 0.75], image_std=[0.5, 0.25, 0.125]).save_pretrained(tmp_path)
    backbone = build_backbone("hf", str(tmp_path), "layer-2", Geometry.parse("64")).eval()
    assert (backbone.mean, backbone.std) == ((0.25, 0.5, 0.75), (0.5, 0.25, 0.125))
    backbone.load_official(read_checkpoint(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(backbone(x), expected)


def test_a_hub_id_is_read_from_the_hub_cache_offline(tmp_path):
    # the cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<revision>/...}
    snapshot = tmp_path / "hub" / "models--acme--tiny-siglip" / "snapshots" / "0123abcd"
    _reference("siglip").save_pretrained(snapshot)
    SiglipImageProcessor().save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    code = ("from vlmswap.image import Geometry; from vlmswap.vision.registry import build_backbone; "
            "b = build_backbone('hf', 'acme/tiny-siglip', 'layer-2', Geometry.parse('64')); "
            "print(type(b.model).__name__, b.num_tokens(64, 64), b.mean)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "SiglipVisionModel 16 (0.5, 0.5, 0.5)"
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "hf arch 'acme/tiny-siglip': no transformers config found" in missing.stderr


def test_normalization_from_the_model_types_image_processor():
    assert resolve(ARCHS["vit"][0]).mean == (0.5, 0.5, 0.5)            # ViTImageProcessor
    assert resolve(ARCHS["siglip-vision"][0]).std == (0.5, 0.5, 0.5)   # SiglipImageProcessor via "siglip"
    clip = resolve(ARCHS["clip"][0])
    assert clip.mean == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-4)  # CLIPImageProcessor
    assert resolve(ARCHS["dinov2"][0]).mean == tuple(IMAGENET[0])     # given in the arch
    with pytest.raises(ValueError, match="no image processor for model type 'dinov2_with_registers'.*add `mean"):
        resolve({k: v for k, v in ARCHS["dinov2-reg"][0].items() if k not in ("mean", "std")})
    with pytest.raises(ValueError, match="give both `mean` and `std`"):
        resolve({**ARCHS["vit"][0], "mean": [0.5] * 3})


def test_a_snapshot_without_its_processors_mean_std_is_refused(tmp_path):
    # the weights' normalization is never guessed from the model type's defaults
    _reference("vit").config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no preprocessor_config.json with image_mean/image_std"):
        resolve(str(tmp_path))
    assert resolve({"pretrained": str(tmp_path), "mean": [0.5] * 3, "std": [0.5] * 3}).std == (0.5, 0.5, 0.5)


def test_a_tap_the_model_does_not_have_names_its_layers_and_their_token_counts():
    with pytest.raises(ValueError) as error:
        check(ARCHS["vit"][0], "layer4", Geometry.parse("64"))
    message = str(error.value)
    assert "hf model vit config has no hidden state 4 (tap 'layer4')" in message
    assert "indices are 0..3 (or -4..-1; 0 = the embeddings), at 64" in message
    assert "layer0: 16 tokens x 32 (+1 prefix), layer1: 16 tokens x 32 (+1 prefix)" in message
    with pytest.raises(ValueError, match="no prefix tokens at layer2 .tap 'layer-2.prefix'.; use layer-2"):
        check(ARCHS["siglip"][0], "layer-2+prefix", Geometry.parse("64"))
    with pytest.raises(ValueError, match="allowed: layer<N> or layer<N>.prefix"):
        build_backbone("hf", ARCHS["vit"][0], "block-2", Geometry.parse("64"))


def test_bad_archs_are_named():
    g = Geometry.parse("64")
    with pytest.raises(ValueError, match="needs|a mapping with `model_type`"):
        build_backbone("hf", {"hidden_size": 32}, "layer-2", g)
    with pytest.raises(ValueError, match="unknown transformers model_type 'not_a_model'"):
        build_backbone("hf", {"model_type": "not_a_model"}, "layer-2", g)
    with pytest.raises(ValueError, match="unknown transformers model_type 'vit_mea'; close matches: 'vit_mae'"):
        build_backbone("hf", {"model_type": "vit_mea"}, "layer-2", g)


def test_a_field_the_config_does_not_define_is_refused_with_the_closest_one(tmp_path):
    # AutoConfig keeps an unknown keyword as an attribute that no model reads: a misspelled width would
    # build the model at its default width
    with pytest.raises(ArchError, match="dinov2 config: Dinov2Config has no field 'hiden_size'; did you mean "
                                        "'hidden_size'"):
        resolve({**ARCHS["dinov2"][0], "hiden_size": 32})
    with pytest.raises(ArchError, match="Dinov2Config has no field 'intermediate_size'; its fields: .*mlp_ratio"):
        resolve({**ARCHS["dinov2"][0], "intermediate_size": 64})  # ViT's field; Dinov2 has a ratio
    # a sub-config's fields, against its own class
    with pytest.raises(ArchError, match="SiglipVisionConfig has no field 'vision_config.hiden_size'; did you mean "
                                        "'vision_config.hidden_size'"):
        resolve({**ARCHS["siglip"][0], "vision_config": {**VIT, "hiden_size": 32}})
    # the override of a pretrained config (from_pretrained drops an unknown one without a word)
    ViTConfig(**VIT).save_pretrained(tmp_path)
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(ArchError, match="ViTConfig has no field 'num_hiden_layers'; did you mean 'num_hidden_layers'"):
        resolve({"pretrained": str(tmp_path), "num_hiden_layers": 2, **norm})
    assert resolve({"pretrained": str(tmp_path), "num_hidden_layers": 2, **norm}).config.num_hidden_layers == 2
    # fields every config has (PretrainedConfig's) and aliases (attribute_map) are fields too
    assert resolve({**ARCHS["vit"][0], "num_labels": 3, "attn_implementation": "eager", "dtype": "float32"})
    assert resolve({"model_type": "convnext", "num_hidden_layers": 4, "hidden_sizes": [8, 16, 24, 32],
                    "depths": [1, 1, 1, 1]}).config.num_stages == 4


def test_a_field_of_the_wrong_type_is_named():
    # transformers' configs are strict dataclasses: huggingface_hub's error, made one line
    with pytest.raises(ArchError, match=r"hf arch dinov2 config: Field 'hidden_size' expected int, got str "
                                        r"\(value: '64'\); give the value the field's type"):
        resolve({**ARCHS["dinov2"][0], "hidden_size": "64"})
    with pytest.raises(ArchError, match="Field 'patch_size' expected"):
        build_backbone("hf", {**ARCHS["siglip"][0], "vision_config": {**VIT, "patch_size": "16"}}, "layer-2",
                       Geometry.parse("64"))


def test_classifier_pretraining_network_and_its_file_layout(tmp_path):
    from vlmswap.vision.hf_encoder import classifier

    model, logits_of = classifier(ARCHS["dinov2"][0], Geometry.parse("64"), 3)
    assert type(model).__name__ == "Dinov2ForImageClassification"
    assert logits_of(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    backbone = build_backbone("hf", ARCHS["dinov2"][0], "layer-2", Geometry.parse("64"))
    payload, fmt = backbone.official_checkpoint("classification", model.state_dict(), {}, {})
    assert fmt == "safetensors" and "classifier.weight" in payload and "dinov2.embeddings.cls_token" in payload
    backbone.load_official(payload)


def test_the_registry_and_the_module_agree_on_taps():
    family = FAMILIES["hf"]
    assert family.accepts("layer-2") and family.accepts("layer0") and family.accepts("layer12+prefix")
    assert not family.accepts("layer") and not family.accepts("block-2") and not family.accepts("index2")
    assert isinstance(build_backbone("hf", ARCHS["vit"][0], family.taps[0], Geometry.parse("64")), HfBackbone)
    json.dumps(ARCHS["siglip"][0])  # an arch is plain config data
