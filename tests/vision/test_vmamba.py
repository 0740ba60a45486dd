"""VMamba v2: official key layout, token shapes and counts, taps, and strict checkpoint loading."""

import pytest
import torch

from vlmswap.image import Geometry
from vlmswap.vision.registry import build_backbone
from vlmswap.vision.vmamba import VMamba

TINY = {"dims": 16, "depths": [1, 1, 2, 1], "ssm_ratio": 1.0}


def _tiny(tap="stage3", seed=0, **extra):
    torch.manual_seed(seed)
    return VMamba({**TINY, **extra}, tap).eval()


@pytest.fixture(scope="module")
def vmamba_t_state():
    return VMamba("vmamba-t").state_dict()


def test_vmamba_t_matches_the_official_state_dict(vmamba_t_state):
    # reference/backbones.md 1.1 and 1.4: 276 tensors, 30.25 M parameters, these shapes
    sd = vmamba_t_state
    assert len(sd) == 276
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == 30.25
    expected = {
        "patch_embed.0.weight": (48, 3, 3, 3), "patch_embed.0.bias": (48,), "patch_embed.2.weight": (48,),
        "patch_embed.5.weight": (96, 48, 3, 3), "patch_embed.7.bias": (96,),
        "layers.2.blocks.0.op.x_proj_weight": (4, 26, 384), "layers.2.blocks.0.op.dt_projs_weight": (4, 384, 24),
        "layers.2.blocks.0.op.dt_projs_bias": (4, 384), "layers.2.blocks.0.op.A_logs": (1536, 1),
        "layers.2.blocks.0.op.Ds": (1536,), "layers.2.blocks.0.op.out_norm.weight": (384,),
        "layers.2.blocks.0.op.in_proj.weight": (384, 384), "layers.2.blocks.0.op.conv2d.weight": (384, 1, 3, 3),
        "layers.2.blocks.0.op.out_proj.weight": (384, 384), "layers.2.blocks.7.mlp.fc1.weight": (1536, 384),
        "layers.2.blocks.7.mlp.fc2.weight": (384, 1536), "layers.2.blocks.7.norm2.bias": (384,),
        "layers.2.downsample.1.weight": (768, 384, 3, 3), "layers.2.downsample.3.weight": (768,),
        "classifier.norm.weight": (768,), "classifier.head.weight": (1000, 768), "classifier.head.bias": (1000,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    block = {k.removeprefix("layers.0.blocks.0.") for k in sd if k.startswith("layers.0.blocks.0.")}
    assert block == {
        "norm.weight", "norm.bias", "op.x_proj_weight", "op.A_logs", "op.Ds", "op.dt_projs_weight",
        "op.dt_projs_bias", "op.out_norm.weight", "op.out_norm.bias", "op.in_proj.weight", "op.conv2d.weight",
        "op.out_proj.weight", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
        "mlp.fc2.bias"}
    assert "layers.3.downsample.1.weight" not in sd  # the last stage has no downsample


@pytest.mark.parametrize("arch,dims3,dt_rank,inner", [("vmamba-s", 384, 24, 768), ("vmamba-b", 512, 32, 1024)])
def test_vmamba_s_and_b_layout(arch, dims3, dt_rank, inner):
    model = VMamba(arch)
    sd = model.state_dict()
    assert len(sd) == 402  # backbones.md 1.4
    assert sd["layers.2.blocks.14.op.x_proj_weight"].shape == (4, dt_rank + 2, inner)
    assert sd["layers.2.blocks.14.op.in_proj.weight"].shape == (inner, dims3)  # no z gate: not 2*inner
    assert model.embed_dim == dims3
    expected_m = {"vmamba-s": 50.15, "vmamba-b": 88.56}[arch]
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == expected_m


def test_vmamba_t_stage3_tokens_at_224():
    backbone = build_backbone("vmamba", "vmamba-t", "stage3", Geometry.parse("224"))
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)
    with torch.no_grad():
        tokens = backbone.eval()(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 196, 384) and backbone.embed_dim == 384
    assert backbone.num_tokens(224, 224) == 196


@pytest.mark.parametrize("width,height", [(64, 64), (96, 64), (65, 37), (33, 100)])
def test_num_tokens_matches_forward(width, height):
    backbone = _tiny()
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, height, width))
    assert tokens.shape == (2, backbone.num_tokens(width, height), 64)


def test_num_tokens_follows_the_conv_arithmetic():
    backbone = _tiny()
    assert backbone.num_tokens(1333, 800) == 84 * 50 == 4200
    assert backbone.num_tokens(512, 512) == 32 * 32
    assert backbone.num_tokens(96, 64) == 6 * 4


def test_tokens_are_the_stage3_map_in_row_major_order():
    backbone = _tiny()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        grid = backbone.stage3(x)          # (1, C, 4, 6)
        tokens = backbone(x)
    assert grid.shape == (1, 64, 6, 4)
    h, w = grid.shape[-2:]
    for i, j in [(0, 1), (2, 3), (5, 0)]:
        torch.testing.assert_close(tokens[0, i * w + j], grid[0, :, i, j])


def test_stage3_tap_ignores_later_layers_and_outnorm_tap_normalizes():
    plain = _tiny("stage3")
    normed = _tiny("stage3-outnorm")
    normed.load_state_dict(plain.state_dict(), strict=False)  # same weights; outnorm2 stays LN(1, 0)
    with torch.no_grad():
        normed.outnorm2.weight.fill_(2.0)
        x = torch.randn(1, 3, 64, 64)
        before = plain(x)
        for p in plain.layers[3].parameters():  # nothing after the tap influences the tokens
            p.add_(1.0)
        torch.testing.assert_close(plain(x), before)
        expected = 2.0 * torch.nn.functional.layer_norm(before, (64,))
        torch.testing.assert_close(normed(x), expected, atol=1e-5, rtol=1e-5)


def test_classify_runs_the_whole_network():
    backbone = _tiny(num_classes=7)
    assert backbone.classify(torch.randn(3, 3, 64, 64)).shape == (3, 7)


def test_registry_passes_tap_and_rejects_unknown_arch():
    with pytest.raises(ValueError, match="vmamba-t"):
        build_backbone("vmamba", "vmamba-xl", "stage3", Geometry.parse("224"))
    with pytest.raises(ValueError, match="depths"):
        build_backbone("vmamba", {"dims": 8}, "stage3", Geometry.parse("64"))
    with pytest.raises(ValueError, match="stage3-outnorm"):
        build_backbone("vmamba", TINY, "stage5", Geometry.parse("64"))


# --- strict loading of official containers -------------------------------------------------------

def _classification_checkpoint(model):
    sd = model.state_dict()
    return {"model": sd, "model_ema": {k: torch.zeros_like(v) for k, v in sd.items()}, "optimizer": {},
            "epoch": 3, "max_accuracy": 80.0, "config": object()}


def _mmengine_checkpoint(model, outnorms=True):
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    if outnorms:
        for i, dim in enumerate(model.dims):
            sd[f"backbone.outnorm{i}.weight"] = torch.full((dim,), 1.5 + i)
            sd[f"backbone.outnorm{i}.bias"] = torch.zeros(dim)
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(4, 16, 1, 1)
    sd["decode_head.conv_seg.weight"] = torch.zeros(2, 4, 1, 1)
    return {"meta": {"mmengine_version": "0.10"}, "state_dict": sd, "message_hub": object()}


def _same_tokens(a, b):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_loads_classification_container_from_model_not_ema():
    source = _tiny(seed=1)
    target = _tiny(seed=2)
    target.load_official(_classification_checkpoint(source))
    _same_tokens(source, target)


def test_loads_plain_state_dict():
    source, target = _tiny(seed=1), _tiny(seed=2)
    target.load_official(source.state_dict())
    _same_tokens(source, target)


def test_loads_mmengine_backbone_and_uses_outnorm2_at_the_outnorm_tap():
    source = _tiny(seed=1)
    checkpoint = _mmengine_checkpoint(source)
    plain = _tiny("stage3", seed=2)
    plain.load_official(checkpoint)           # outnorms present but unused by this tap: ignored
    _same_tokens(source, plain)
    normed = _tiny("stage3-outnorm", seed=2)
    normed.load_official(checkpoint)
    assert torch.equal(normed.outnorm2.weight, torch.full((64,), 3.5))


def test_outnorm_tap_refuses_a_checkpoint_without_outnorm2():
    with pytest.raises(ValueError, match=r"missing key\(s\): outnorm2.bias, outnorm2.weight") as error:
        _tiny("stage3-outnorm").load_official(_classification_checkpoint(_tiny()))
    assert "classification checkpoint" in str(error.value)


def test_missing_backbone_key_is_reported_with_the_container():
    checkpoint = _mmengine_checkpoint(_tiny())
    del checkpoint["state_dict"]["backbone.layers.3.blocks.0.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="mmengine") as error:
        _tiny().load_official(checkpoint)
    assert "1 missing key(s): layers.3.blocks.0.mlp.fc2.bias" in str(error.value)


def test_unexpected_keys_are_listed_and_truncated():
    sd = _tiny().state_dict()
    for i in range(12):
        sd[f"layers.2.blocks.{5 + i}.norm.weight"] = torch.zeros(64)
    with pytest.raises(ValueError, match="plain state_dict") as error:
        _tiny().load_official(sd)
    message = str(error.value)
    assert "12 unexpected key(s)" in message and "(+2 more)" in message


def test_shape_mismatch_is_a_value_error():
    sd = _tiny().state_dict()
    sd["layers.1.blocks.0.op.Ds"] = torch.zeros(3)
    with pytest.raises(ValueError, match="size mismatch"):
        _tiny().load_official(sd)


def test_legacy_4d_linear2d_weights_load():
    source, target = _tiny(seed=1), _tiny(seed=2)
    sd = source.state_dict()
    sd["layers.0.blocks.0.mlp.fc1.weight"] = sd["layers.0.blocks.0.mlp.fc1.weight"][:, :, None, None]
    target.load_official(sd)
    _same_tokens(source, target)


def test_unrecognized_container():
    with pytest.raises(ValueError, match="unrecognized checkpoint container"):
        _tiny().load_official({"weights": {"a": 1}})
