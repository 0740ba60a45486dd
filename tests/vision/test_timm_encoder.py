"""Family "timm": any timm model by name (+ keyword overrides), tapped at a forward_intermediates index;
built, loaded with strict keys from timm's own weight layout, and run for convolutional (ConvNeXt),
hierarchical-transformer (Swin), SSM-like (MambaOut), efficient-attention (EfficientViT) and plain ViT
models; token counts from a meta-device run, checked against the forward."""

import pytest
import torch
from safetensors.torch import save_file

from vlmswap.checkpoint import read_checkpoint
from vlmswap.hub import fetch
from vlmswap.image import Geometry, fill_color
from vlmswap.vision.base import ArchError
from vlmswap.vision.registry import FAMILIES, build_backbone
from vlmswap.vision.timm_encoder import TimmBackbone, build_model, check, parse_tap

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# tiny configs of real timm architectures of different kinds (timm.create_model name + overrides)
TINY = {
    "convnext": {"model": "convnext_atto", "depths": [1, 1, 1, 1], "dims": [16, 24, 32, 48]},
    "swin": {"model": "swin_tiny_patch4_window7_224", "depths": [1, 1, 1, 1], "embed_dim": 16,
             "num_heads": [1, 1, 2, 2], "window_size": 4},
    "mambaout": {"model": "mambaout_femto", "depths": [1, 1, 1, 1], "dims": [16, 24, 32, 48]},
    "efficientvit": {"model": "efficientvit_b0", "widths": [8, 16, 24, 32, 48], "depths": [1, 1, 1, 1, 1],
                     "head_dim": 8},
    "vit": {"model": "vit_tiny_patch16_224", "depth": 3, "embed_dim": 32, "num_heads": 2, "reg_tokens": 2},
}


def _classifier_weights(kind, geometry, seed=1):
    """An official-layout timm checkpoint: the classifier's plain state_dict, head included."""
    torch.manual_seed(seed)
    model = build_model(TINY[kind], geometry, num_classes=7).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind,tap,tokens,channels", [
    ("convnext", "index2", 16, 32), ("swin", "index2", 16, 64), ("mambaout", "index-2", 16, 32),
    ("efficientvit", "index2", 16, 32), ("vit", "index-2", 16, 32), ("vit", "index1+prefix", 19, 32)])
def test_builds_loads_strictly_and_taps_the_intermediate(kind, tap, tokens, channels):
    g = Geometry.parse("64")
    reference, weights = _classifier_weights(kind, g)
    backbone = build_backbone("timm", TINY[kind], tap, g).eval()
    backbone.load_official(weights)  # strict on every key but the classifier
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        index = parse_tap(tap).index
        expected = reference.forward_intermediates(x, indices=[index], intermediates_only=True,
                                                   **({"return_prefix_tokens": True} if "prefix" in tap else {}))[0]
    assert out.shape == (2, backbone.num_tokens(64, 64), backbone.embed_dim) == (2, tokens, channels)
    if "prefix" in tap:  # class + 2 register tokens in front of the row-major patch grid
        grid, prefix = expected
        torch.testing.assert_close(out, torch.cat([prefix, grid.flatten(2).transpose(1, 2)], 1))
    else:
        torch.testing.assert_close(out, expected.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("kind", ["convnext", "mambaout", "efficientvit"])
@pytest.mark.parametrize("geometry", ["96", "128x64"])
def test_token_count_from_the_meta_run_equals_the_forward(kind, geometry):
    g = Geometry.parse(geometry)
    backbone = build_backbone("timm", TINY[kind], "index2", g).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, g.height, g.width))
    assert out.shape[1] == backbone.num_tokens(g.width, g.height) == (g.width // 16) * (g.height // 16)
    assert check(TINY[kind], "index2", g) == out.shape[1]


@pytest.mark.parametrize("name,geometry,tap,tokens", [
    ("convnext_tiny", "224", "index2", 196), ("swin_tiny_patch4_window7_224", "224", "index2", 196),
    ("mambaout_tiny", "224", "index2", 196), ("vit_base_patch16_224", "224", "index-2", 196),
    ("vit_base_patch16_224", "224", "index-2+prefix", 197), ("maxvit_tiny_tf_224", "224", "index3", 196),
    ("convnext_tiny", "1333x800", "index2", 83 * 50)])
def test_full_size_models_on_the_meta_device(name, geometry, tap, tokens):
    # no weights, no arithmetic: the counts a paper-size cell would have
    g = Geometry.parse(geometry)
    with torch.device("meta"), torch.no_grad():
        backbone = build_backbone("timm", name, tap, g)
        out = backbone(torch.empty(1, 3, g.height, g.width))
    assert out.shape[1] == backbone.num_tokens(g.width, g.height) == tokens
    assert check(name, tap, g) == tokens


def test_normalization_and_letterbox_fill_follow_the_weight_tag():
    clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    half = ((0.5,) * 3, (0.5,) * 3)
    for arch, (mean, std) in [("convnext_tiny.fb_in1k", IMAGENET), ("vit_base_patch16_224.augreg_in21k", half),
                              ("vit_base_patch16_clip_224.openai", clip)]:
        with torch.device("meta"):
            backbone = build_backbone("timm", arch, "index-2", Geometry.parse("224"))
        assert (backbone.mean, backbone.std) == (mean, std), arch
        ((view_mean, view_std),) = backbone.transform.views
        assert (view_mean, view_std) == (mean, std)
        assert fill_color(backbone.mean) == tuple(int(255 * m) for m in mean)
    given = {**TINY["convnext"], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    backbone = build_backbone("timm", given, "index2", Geometry.parse("32"))
    assert (backbone.mean, backbone.std) == ((0.5,) * 3, (0.25,) * 3)


def test_a_tap_the_model_does_not_have_names_its_indices_and_their_token_counts():
    g = Geometry.parse("224")
    with pytest.raises(ValueError) as error:
        check("convnext_tiny", "index4", g)
    message = str(error.value)
    assert "timm model 'convnext_tiny' has no intermediate 4" in message
    assert "indices are 0..3 (or -4..-1), at 224" in message
    assert ("index0: 3136 tokens x 96, index1: 784 tokens x 192, index2: 196 tokens x 384, "
            "index3: 49 tokens x 768") in message
    with pytest.raises(ValueError, match="has no intermediate 4"):  # building says the same
        build_backbone("timm", TINY["convnext"], "index4", Geometry.parse("32"))
    with pytest.raises(ValueError, match="'convnext_tiny' has no prefix tokens to keep .tap 'index2.prefix'.; "
                                         "use index2"):
        check("convnext_tiny", "index2+prefix", g)
    with pytest.raises(ValueError, match="allowed: index<N> or index<N>.prefix"):
        build_backbone("timm", "convnext_tiny", "stage3", g)


def test_bad_archs_are_named():
    g = Geometry.parse("32")
    with pytest.raises(ArchError, match="unknown timm model 'convnext_tinyy'; similar names: convnext_tiny, "):
        build_backbone("timm", "convnext_tinyy", "index2", g)
    with pytest.raises(ValueError, match="needs `model`"):
        build_backbone("timm", {"depths": [1, 1, 1, 1]}, "index2", g)
    with pytest.raises(ValueError, match="cannot be built with .*'widths'"):
        build_backbone("timm", {"model": "convnext_atto", "widths": [8]}, "index2", g)
    with pytest.raises(ValueError, match="img_size follows the cell's geometry"):
        build_backbone("timm", {"model": "vit_tiny_patch16_224", "img_size": 64}, "index2", g)
    # what `vlmswap validate` runs (check, on the meta device) says it too, not only the build
    with pytest.raises(ArchError, match="give both `mean` and `std`, or neither"):
        check({**TINY["convnext"], "std": [0.25, 0.25, 0.25]}, "index2", g)


def test_a_misspelled_model_name_suggests_the_closest_names_first():
    # the closest spellings (difflib over timm.list_models()), then the names sharing the first word
    with pytest.raises(ArchError) as error:
        check("convnext_tinny.fb_in1k", "index2", Geometry.parse("224"))
    assert error.value.field == "arch"
    assert "unknown timm model 'convnext_tinny.fb_in1k'; similar names: convnext_tiny, " in str(error.value)
    assert "convnext_atto" in str(error.value)
    with pytest.raises(ArchError, match="similar names: vit_base_patch16_224, "):
        check("vit_base_patch16_244", "index-2", Geometry.parse("224"))


def test_a_weight_tag_timm_does_not_know_is_named_with_the_models_tags():
    # timm.create_model raised a RuntimeError for it; the tags come from timm's registry, no network
    with pytest.raises(ArchError) as error:
        check("convnext_tiny.fb_in1kk", "index2", Geometry.parse("224"))
    assert error.value.field == "weights"
    message = str(error.value)
    assert "timm model 'convnext_tiny' has no weight tag 'fb_in1kk' (did you mean convnext_tiny.fb_in1k?)" in message
    assert "; its tags: " in message and "fb_in22k_ft_in1k" in message
    assert "timm.list_pretrained('convnext_tiny.*')" in message
    tagged = {**TINY["convnext"], "model": "convnext_atto.d2_in1kk"}  # a mapping arch with its checkpoint's tag
    with pytest.raises(ArchError, match="'convnext_atto' has no weight tag 'd2_in1kk'.*its tags: d2_in1k"):
        build_backbone("timm", tagged, "index2", Geometry.parse("32"))
    assert check({**tagged, "model": "convnext_atto.d2_in1k"}, "index2", Geometry.parse("32")) == 4


def test_strict_loading_names_missing_and_unexpected_keys():
    g = Geometry.parse("32")
    _, weights = _classifier_weights("convnext", g)
    backbone = build_backbone("timm", TINY["convnext"], "index2", g)
    partial = {k: v for k, v in weights.items() if not k.startswith("stages.3.")}
    with pytest.raises(ValueError, match=r"missing key\(s\): stages\.3\."):
        backbone.load_official(partial)
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): extra\.weight"):
        backbone.load_official({**weights, "extra.weight": torch.zeros(1)})
    other = build_model({**TINY["convnext"], "dims": [16, 24, 32, 64]}, g, num_classes=0).state_dict()
    with pytest.raises(ValueError, match="size mismatch"):
        backbone.load_official(other)


def test_weights_trained_at_another_size_are_resampled_by_timms_own_filter():
    # a ViT checkpoint at 32 px loaded into a 64 px cell: pos_embed resampled as pretrained=True does
    _, weights = _classifier_weights("vit", Geometry.parse("32"))
    backbone = build_backbone("timm", TINY["vit"], "index-2", Geometry.parse("64"))
    backbone.load_official(weights)
    assert backbone.model.pos_embed.shape[1] == 3 + 16


def test_a_timm_tag_source_is_fetched_read_and_loaded(tmp_path):
    # the hub stores timm weights as timm/<name>.<tag>/model.safetensors; a mirror folder has the same
    # layout, and the fetched file (named .ckpt by the workflow) is read by its content
    tag = "convnext_atto.d2_in1k"
    torch.manual_seed(0)
    official = build_model("convnext_atto", Geometry.parse("224"), num_classes=1000)
    (tmp_path / "mirror" / "timm" / tag).mkdir(parents=True)
    save_file(official.state_dict(), str(tmp_path / "mirror" / "timm" / tag / "model.safetensors"))
    dest = tmp_path / "checkpoints" / "convnext-atto@in1k.ckpt"
    fetch({"timm": tag}, dest, mirror=tmp_path / "mirror", offline=True, log=lambda _: None)

    backbone = build_backbone("timm", tag, "index2", Geometry.parse("64")).eval()
    backbone.load_official(read_checkpoint(dest))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (expected,) = official.eval().forward_intermediates(x, indices=[2], intermediates_only=True)
        torch.testing.assert_close(backbone(x), expected.flatten(2).transpose(1, 2))


def test_the_registry_and_the_module_agree_on_taps():
    family = FAMILIES["timm"]
    assert family.accepts("index2") and family.accepts("index-1") and family.accepts("index0+prefix")
    assert not family.accepts("index") and not family.accepts("stage3") and not family.accepts("index2+cls")
    assert all(family.accepts(t) for t in family.taps)
    assert parse_tap("index-1+prefix").index == -1 and parse_tap("index-1+prefix").prefix
    assert isinstance(build_backbone("timm", TINY["convnext"], family.taps[0], Geometry.parse("32")), TimmBackbone)


def test_a_timm_tag_source_names_the_weights_of_a_mapping_arch_too():
    # the tag's pretrained_cfg (mean/std) belongs to the weights; a mapping keeps its keyword overrides
    from types import SimpleNamespace

    from vlmswap.study import Backbone
    from vlmswap.vlm import backbone_arch

    def arch_for(arch, source):
        study = SimpleNamespace(backbones={"c": Backbone("c", "timm", arch, "C", "", {"in1k": source})})
        return backbone_arch(study, SimpleNamespace(backbone="c", objective="in1k"))

    mapping = {"model": "convnext_atto", "drop_path_rate": 0.1}
    assert arch_for(mapping, {"timm": "convnext_atto.d2_in1k"}) == {**mapping, "model": "convnext_atto.d2_in1k"}
    assert arch_for(mapping, {"timm": "convnext_femto.d1_in1k"}) == mapping  # another model: not silently swapped
    assert arch_for(mapping, {"url": "file:///x.pth"}) == mapping
    assert arch_for("convnext_atto", {"timm": "convnext_atto.d2_in1k"}) == "convnext_atto.d2_in1k"
