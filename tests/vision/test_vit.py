"""Family "vit": the Prismatic tap (second-to-last block, no norm, no prefix tokens) and loading."""

import pytest
import timm
import torch

from vlmswap.image import Geometry
from vlmswap.vision.registry import build_backbone

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}


def _tiny(geometry="64", seed=0, arch=TINY):
    torch.manual_seed(seed)
    return build_backbone("vit", arch, "block-2", Geometry.parse(geometry)).eval()


def test_tap_is_the_second_to_last_block_without_prefix_tokens():
    backbone = _tiny(arch={**TINY, "reg_tokens": 2})
    model = backbone.model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = backbone(x)
        # independently, with timm's own API: block index len-2, no final norm, prefix dropped
        (expected,) = model.forward_intermediates(x, indices=[len(model.blocks) - 2], norm=False,
                                                  output_fmt="NLC", intermediates_only=True)
        # and by hand, the get_intermediate_layers way
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for block in model.blocks[:3]:
            h = block(h)
    assert model.num_prefix_tokens == 3
    assert tokens.shape == (2, 64, 32)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(tokens, h[:, 3:])


@pytest.mark.parametrize("geometry", ["64", "96x64", "40x72"])
def test_num_tokens_matches_forward(geometry):
    g = Geometry.parse(geometry)
    backbone = _tiny(geometry)
    with torch.no_grad():
        tokens = backbone(torch.randn(1, 3, g.height, g.width))
    assert tokens.shape == (1, backbone.num_tokens(g.width, g.height), backbone.embed_dim)


def test_named_arch_normalization_and_tokens():
    small = build_backbone("vit", "vit_small_patch16_224", "block-2", Geometry.parse("224"))
    assert (small.mean, small.std, small.embed_dim) == ((0.5,) * 3, (0.5,) * 3, 384)  # augreg
    assert small.num_tokens(224, 224) == 196
    assert isinstance(small.model.head, torch.nn.Identity)  # num_classes=0
    dino = build_backbone("vit", "vit_small_patch14_reg4_dinov2", "block-2", Geometry.parse("224"))
    assert dino.mean == (0.485, 0.456, 0.406) and dino.num_tokens(224, 224) == 256
    with torch.no_grad():
        assert dino.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 256, 384)  # registers dropped


def test_mapping_arch_normalization():
    assert _tiny().mean == (0.5, 0.5, 0.5)
    custom = _tiny(arch={**TINY, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    assert custom.mean == (0.1, 0.2, 0.3) and custom.std == (1.0, 1.0, 1.0)


def test_unknown_arch_and_tap():
    with pytest.raises(ValueError, match="unknown timm ViT architecture"):
        build_backbone("vit", "vit_nonexistent_patch3", "block-2", Geometry.parse("224"))
    with pytest.raises(ValueError, match="block-2"):
        build_backbone("vit", TINY, "last", Geometry.parse("64"))
    with pytest.raises(ValueError, match="bad ViT arch"):
        build_backbone("vit", {**TINY, "depht": 3}, "block-2", Geometry.parse("64"))


def _classifier_state(seed=1, size=64):
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(img_size=size, num_classes=5, **TINY)
    return model


def test_loads_a_timm_classification_state_dict_dropping_the_head():
    source = _classifier_state()
    target = _tiny(seed=2)
    target.load_official(source.state_dict())  # plain state_dict with head.*
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (expected,) = source.eval().forward_intermediates(x, indices=[2], norm=False, intermediates_only=True,
                                                          output_fmt="NLC")
        torch.testing.assert_close(target(x), expected)


def test_position_embeddings_are_resampled_to_the_geometry():
    source = _classifier_state(size=64)            # trained at 64: 8x8 grid
    target = _tiny("96", seed=2)                   # used at 96: 12x12 grid
    target.load_official(source.state_dict())
    assert target.model.pos_embed.shape == (1, 1 + 144, 32)
    torch.testing.assert_close(target.model.cls_token, source.cls_token)


def test_strict_loading_errors():
    sd = _classifier_state().state_dict()
    del sd["blocks.3.mlp.fc2.bias"]              # the final block: unused by the tap, still required
    sd["blocks.9.norm1.weight"] = torch.zeros(32)
    with pytest.raises(ValueError) as error:
        _tiny().load_official(sd)
    message = str(error.value)
    assert "plain state_dict" in message
    assert "1 missing key(s): blocks.3.mlp.fc2.bias" in message
    assert "1 unexpected key(s): blocks.9.norm1.weight" in message


def test_fc_norm_is_backbone_only_when_the_model_has_it():
    avg = {**TINY, "global_pool": "avg", "fc_norm": True}
    target = _tiny(arch=avg)
    torch.manual_seed(3)
    source = timm.models.vision_transformer.VisionTransformer(img_size=64, num_classes=5, **avg)
    sd = source.state_dict()
    assert "fc_norm.weight" in sd and "fc_norm.weight" in target.model.state_dict()
    del sd["fc_norm.weight"]
    with pytest.raises(ValueError, match="fc_norm.weight"):
        target.load_official(sd)
    token_pooled = _tiny()                      # fc_norm is Identity here: a checkpoint's fc_norm is head-side
    sd = _classifier_state().state_dict()
    sd["fc_norm.weight"], sd["fc_norm.bias"] = torch.ones(32), torch.zeros(32)
    token_pooled.load_official(sd)


def test_openai_clip_is_built_with_quick_gelu_and_siglip_is_not():
    # prismatic_spec.md 2.1: Prismatic passes act_layer="quick_gelu" for OpenAI CLIP; timm would
    # otherwise build it with the standard GELU
    from timm.layers import QuickGELU

    with torch.device("meta"):
        clip = build_backbone("vit", "vit_base_patch16_clip_224.openai", "block-2", Geometry.parse("224"))
        siglip = build_backbone("vit", "vit_base_patch16_siglip_224.webli", "block-2", Geometry.parse("224"))
    assert isinstance(clip.model.blocks[0].mlp.act, QuickGELU)
    assert not isinstance(siglip.model.blocks[0].mlp.act, QuickGELU)
    assert clip.mean == (0.48145466, 0.4578275, 0.40821073)
