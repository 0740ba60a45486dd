"""MaxViT (timm MaxxVit): the stage-3 tap, token counts, normalization by weight tag, strict loading."""

import pytest
import torch

from vlmswap.image import Geometry
from vlmswap.vision.maxvit import MaxVitBackbone, build_classifier

TINY = {"embed_dim": [16, 32, 32, 32], "depths": [1, 1, 2, 1], "stem_width": 16, "dim_head": 16}


def _tiny(geometry="64", seed=0, arch=TINY):
    torch.manual_seed(seed)
    return MaxVitBackbone(arch, "stage3", Geometry.parse(geometry)).eval()


def _on_meta(arch, geometry="224"):
    with torch.device("meta"):
        return MaxVitBackbone(arch, "stage3", Geometry.parse(geometry))


@pytest.mark.parametrize("arch,channels,params_m", [
    ("maxvit_tiny_tf_224", 256, 30.9), ("maxvit_small_tf_224", 384, 68.9), ("maxvit_base_tf_224", 384, 119.5),
    ("maxvit_large_tf_224", 512, 211.8), ("maxvit_xlarge_tf_224", 768, 475.0)])
def test_stage3_channels_and_parameter_counts(arch, channels, params_m):
    # reference/backbones.md section 3: stage-3 channels and params per size, with a 1000-class
    # head; XL's 507.0M there is with its default in21k head (21843 classes), 475M with 1000
    # (the paper's size, checkpoint_sources.csv notes)
    backbone = _on_meta(arch)
    assert backbone.embed_dim == channels
    with torch.device("meta"):
        classifier = build_classifier(arch, Geometry.parse("224"), num_classes=1000)
    assert round(sum(p.numel() for p in classifier.parameters()) / 1e6, 1) == params_m


@pytest.mark.parametrize("arch,size,tokens", [
    ("maxvit_tiny_tf_224", 224, 196), ("maxvit_base_tf_384", 384, 576), ("maxvit_xlarge_tf_512", 512, 1024)])
def test_num_tokens_is_the_papers_vision_token_count(arch, size, tokens):
    assert _on_meta(arch, str(size)).num_tokens(size, size) == tokens


def test_normalization_follows_the_weight_tag():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    half = ((0.5,) * 3, (0.5,) * 3)
    for arch, expected in [("maxvit_tiny_tf_224", imagenet), ("maxvit_base_tf_224.in1k", imagenet),
                           ("maxvit_base_tf_224.in21k", half), ("maxvit_tiny_tf_384", half),
                           ("maxvit_large_tf_512.in21k_ft_in1k", half)]:
        backbone = _on_meta(arch, "512" if "512" in arch else "384" if "384" in arch else "224")
        assert (backbone.mean, backbone.std) == expected, arch
    assert (_tiny().mean, _tiny().std) == half


def test_tiny_model_has_the_tf_port_layout():
    sd = build_classifier(TINY, Geometry.parse("64"), num_classes=5).state_dict()
    # keys as in maxvit_*_tf: MBConv + window (block) and grid attention per block, TF rel-pos tables
    # of (heads, 2w-1, 2w-1) with w = 64 // 32, head = norm + pre_logits + fc
    assert sd["stages.2.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"].shape == (2, 3, 3)
    assert sd["stages.2.blocks.0.attn_grid.attn.qkv.weight"].shape == (96, 32)
    assert sd["stages.0.blocks.0.conv.conv2_kxk.weight"].shape == (64, 1, 3, 3)
    assert sd["stem.conv1.bias"].shape == (16,)
    assert {k for k in sd if k.startswith("head.")} == {
        "head.norm.weight", "head.norm.bias", "head.pre_logits.fc.weight", "head.pre_logits.fc.bias",
        "head.fc.weight", "head.fc.bias"}
    assert not any(k.startswith("norm.") for k in sd)  # tf ports: no final norm outside the head


@pytest.mark.parametrize("geometry", ["64", "96x64", "64x128"])
def test_tokens_are_stages_2_output_row_major(geometry):
    g = Geometry.parse(geometry)
    backbone = _tiny(geometry)
    x = torch.randn(2, 3, g.height, g.width)
    with torch.no_grad():
        tokens = backbone(x)
        (grid,) = backbone.model.forward_intermediates(x, indices=[3], intermediates_only=True)  # stages.2
    h, w = g.height // 16, g.width // 16
    assert grid.shape == (2, 32, h, w)
    assert tokens.shape == (2, backbone.num_tokens(g.width, g.height), backbone.embed_dim) == (2, h * w, 32)
    torch.testing.assert_close(tokens, grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(tokens[1, 1 * w + 2], grid[1, :, 1, 2])


def test_stage3_tap_ignores_the_last_stage():
    backbone = _tiny()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)
        for p in backbone.model.stages[3].parameters():
            p.add_(1.0)
        torch.testing.assert_close(backbone(x), before)


def test_named_arch_forward_at_224():
    backbone = MaxVitBackbone("maxvit_tiny_tf_224", "stage3", Geometry.parse("224")).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 196, 256)


def test_bad_arch_geometry_and_tap():
    with pytest.raises(ValueError, match="multiple of 32"):
        _tiny("72")
    with pytest.raises(ValueError, match="unknown timm MaxViT"):
        MaxVitBackbone("maxvit_nonexistent", "stage3", Geometry.parse("224"))
    with pytest.raises(ValueError, match="not a MaxxVit"):
        MaxVitBackbone("resnet18", "stage3", Geometry.parse("224"))
    with pytest.raises(ValueError, match="stem_width"):
        MaxVitBackbone({"embed_dim": [8] * 4, "depths": [1] * 4}, "stage3", Geometry.parse("64"))
    with pytest.raises(ValueError, match="stage3"):
        MaxVitBackbone(TINY, "block-2", Geometry.parse("64"))


# --- strict loading of timm's weights (a plain MaxxVit state_dict with the classification head) ---

def _timm_weights_file(tmp_path, seed=1, size="64", num_classes=5):
    torch.manual_seed(seed)
    source = build_classifier(TINY, Geometry.parse(size), num_classes=num_classes).eval()
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)
    return source, path


def test_loads_timm_weights_from_file_dropping_the_head(tmp_path):
    source, path = _timm_weights_file(tmp_path, num_classes=21843 // 100)  # any head size
    target = _tiny(seed=2)
    target.load_official(torch.load(path, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (expected,) = source.forward_intermediates(x, indices=[3], intermediates_only=True)
        torch.testing.assert_close(target(x), expected.flatten(2).transpose(1, 2))


def test_loads_weights_without_batchnorm_counters(tmp_path):
    _, path = _timm_weights_file(tmp_path)
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    _tiny(seed=2).load_official(state)


def test_relative_position_tables_are_resized_to_the_geometry(tmp_path):
    _, path = _timm_weights_file(tmp_path, size="64")       # partitions of 2: tables (heads, 3, 3)
    target = _tiny("128", seed=2)                            # partitions of 4: tables (heads, 7, 7)
    target.load_official(torch.load(path, weights_only=True))
    table = target.model.stages[2].blocks[0].attn_grid.attn.rel_pos.relative_position_bias_table
    assert table.shape == (2, 7, 7)


def test_strict_loading_errors(tmp_path):
    _, path = _timm_weights_file(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["stages.3.blocks.0.attn_grid.mlp.fc2.bias"]   # the last stage: unused by the tap, still required
    state["stages.4.blocks.0.conv.conv1_1x1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        _tiny().load_official(state)
    message = str(error.value)
    assert "plain state_dict" in message
    assert "1 missing key(s): stages.3.blocks.0.attn_grid.mlp.fc2.bias" in message
    assert "1 unexpected key(s): stages.4.blocks.0.conv.conv1_1x1.weight" in message


def test_unexpected_relative_position_table_is_reported_not_crashing(tmp_path):
    _, path = _timm_weights_file(tmp_path)
    state = torch.load(path, weights_only=True)
    state["stages.7.blocks.0.attn_grid.attn.rel_pos.relative_position_bias_table"] = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="1 unexpected key"):
        _tiny().load_official(state)
