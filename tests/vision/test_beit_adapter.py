"""BEiT-Adapter: official key layout (relative position tables and their persistent index), BEiT
attention with q/v biases and relative position bias, the cls token in the interactions, the
stride-32 tap, and strict loading of an mmseg Mask2Former/UperNet checkpoint."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry
from vlmswap.vision import beit_adapter
from vlmswap.vision.beit_adapter import BEiTAdapter, relative_position_bias, relative_position_index
from vlmswap.vision.registry import FAMILIES, build_backbone

# img_size 64: a 4x4 window, tables of 7*7 + 3 = 52 rows; 4 interactions of one block
TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "deform_num_heads": 2, "img_size": 64,
        "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]], "conv_inplane": 8, "n_points": 2, "deform_ratio": 0.5}


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dtype.is_floating_point:
                t.add_(0.2 * torch.randn(t.shape, generator=g))


def _tiny(seed=0, **extra):
    torch.manual_seed(seed)
    model = BEiTAdapter({**TINY, **extra}).eval()
    _randomize(model)                    # gammas start at 1e-6: make every path count
    return model


def _on_meta(arch):
    with torch.device("meta"):
        return BEiTAdapter(arch)


def _adapter_params(C, M, ratio, inplane=64, P=4, cffn=0.25, interactions=4):
    """The adapter's parameters from adapter_modules.py / ms_deform_attn.py / beit_adapter.py (as in
    test_vit_adapter.py; InteractionBlockWithCls has InteractionBlock's parameters)."""
    spm = 27 * inplane + 252 * inplane**2 + 2 * 13 * inplane + 11 * inplane * C + 4 * C

    def msda(levels):
        v = int(C * ratio)
        return 3 * (C + 1) * M * levels * P + (C + 1) * v + (v + 1) * C

    h = int(C * cffn)
    injector = 5 * C + msda(3)
    extractor = 6 * C + msda(1) + (C + 1) * h + 10 * h + (h + 1) * C
    return 3 * C + spm + interactions * (injector + extractor) + 2 * extractor + 4 * C * C + C + 8 * C


def _beit_params(C, depth, heads, window):
    # base/beit.py: patch_embed.proj, cls_token, blocks: qkv (no bias) + q_bias + v_bias, table
    # ((2S-1)^2 + 3, heads), proj, 2 LayerNorms, mlp fc1/fc2, gamma_1/gamma_2; no pos_embed
    table = ((2 * window - 1) ** 2 + 3) * heads
    return 3 * 256 * C + C + C + depth * (12 * C * C + 14 * C + table)


# Totals were also checked once against the official BEiTAdapter of czczup/ViT-Adapter@fd64a51
# (instantiated with mmcv/mmseg stubbed out): identical keys, shapes, index values and counts.
@pytest.mark.parametrize("arch,window,params", [
    ("beit-adapter-l-640", 40, 328_756_928),
    ("beit-adapter-l-896", 56, 331_091_648),
    ("beitv2-adapter-l-896", 56, 331_091_648)])
def test_official_layout(arch, window, params):
    model = _on_meta(arch)
    sd = model.official_module().state_dict()
    assert len(sd) == 650 == 3 + 17 * 24 + 239
    assert sum(p.numel() for p in model.parameters()) == params == \
        _beit_params(1024, 24, 16, window) + _adapter_params(1024, 16, 0.5)
    rows = (2 * window - 1) ** 2 + 3
    expected = {
        "patch_embed.proj.weight": (1024, 3, 16, 16), "cls_token": (1, 1, 1024),
        "blocks.0.attn.qkv.weight": (3072, 1024), "blocks.0.attn.q_bias": (1024,), "blocks.0.attn.v_bias": (1024,),
        "blocks.0.attn.relative_position_bias_table": (rows, 16),
        "blocks.23.attn.relative_position_index": (window**2 + 1, window**2 + 1),
        "blocks.5.gamma_1": (1024,), "blocks.5.gamma_2": (1024,), "blocks.5.mlp.fc1.weight": (4096, 1024),
        "level_embed": (3, 1024), "spm.fc3.weight": (1024, 256, 1, 1),
        "interactions.0.injector.attn.sampling_offsets.weight": (16 * 3 * 4 * 2, 1024),
        "interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight": (256, 1, 3, 3),
        "up.weight": (1024, 1024, 2, 2), "norm4.running_var": (1024,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert sd["blocks.0.attn.relative_position_index"].dtype == torch.int64
    assert not any(k.startswith(("pos_embed", "rel_pos_bias", "norm.", "fc_norm")) or k == "blocks.0.attn.qkv.bias"
                   for k in sd)
    assert model.net.blocks[0].norm1.eps == model.net.interactions[0].extractor.ffn_norm.eps == 1e-6
    assert model.embed_dim == 1024 and model.img_size == window * 16


def test_tokens_at_the_papers_geometry_and_normalization():
    assert _on_meta("beit-adapter-l-640").num_tokens(640, 640) == 400
    model = _on_meta("beitv2-adapter-l-896")
    assert model.num_tokens(896, 896) == 784
    np.testing.assert_allclose(np.array(model.mean) * 255, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(np.array(model.std) * 255, [58.395, 57.12, 57.375])


def test_registry_builds_the_family():
    assert FAMILIES["beit-adapter"].taps == beit_adapter.TAPS == ("adapter-stride32",)
    assert isinstance(build_backbone("beit-adapter", TINY, "adapter-stride32", Geometry.parse("64")), BEiTAdapter)
    with pytest.raises(ValueError, match="beitv2-adapter-l-896"):
        beit_adapter.build("beit-adapter-l-512", "adapter-stride32", Geometry.parse("512"))
    with pytest.raises(ValueError, match="img_size"):
        beit_adapter.build({k: v for k, v in TINY.items() if k != "img_size"}, "adapter-stride32", Geometry.parse("64"))
    with pytest.raises(ValueError, match="adapter-stride32"):
        beit_adapter.build(TINY, "block-2", Geometry.parse("64"))


# --- relative positions and attention ----------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(3, 3), (2, 3)])
def test_relative_position_index_layout(h, w):
    index = relative_position_index(h, w)
    n = (2 * h - 1) * (2 * w - 1) + 3
    assert index.shape == (h * w + 1, h * w + 1)
    assert index[0, 0] == n - 1 and (index[0, 1:] == n - 3).all() and (index[1:, 0] == n - 2).all()
    for a in range(h * w):
        for b in range(h * w):
            (ya, xa), (yb, xb) = divmod(a, w), divmod(b, w)
            assert index[1 + a, 1 + b] == (ya - yb + h - 1) * (2 * w - 1) + (xa - xb + w - 1)
    assert sorted(set(index[1:, 1:].flatten().tolist())) == list(range(n - 3))   # every offset used


def _explicit_attention(attn, x, table, index):
    """base/beit.py Attention.forward written out: qkv bias (q_bias, 0, v_bias), q scaled by
    head_dim^-0.5, the looked-up bias added before the softmax."""
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = x @ attn.qkv.weight.T + torch.cat([attn.q_bias, torch.zeros(c), attn.v_bias])
    q, k, v = qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    bias = torch.empty(heads, n, n)
    for i in range(n):
        for j in range(n):
            bias[:, i, j] = table[index[i, j]]
    out = (scores + bias).softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def test_a_rectangular_img_size_makes_rectangular_tables():
    # BEiT's PatchEmbed takes img_size through to_2tuple: [64, 96] gives a 4x6 window, tables of
    # 7*11 + 3 rows, and the index of a 4x6 grid (tests/vision/test_golden.py runs it against the official code)
    model = BEiTAdapter({**TINY, "img_size": [64, 96]})
    attn = model.net.blocks[0].attn
    assert model.net.window == (4, 6) and model.img_size == (64, 96)
    assert attn.relative_position_bias_table.shape == (7 * 11 + 3, 2)
    assert torch.equal(attn.relative_position_index, relative_position_index(4, 6))
    assert BEiTAdapter(TINY).img_size == 64
    with pytest.raises(ValueError, match="img_size"):
        BEiTAdapter({**TINY, "img_size": [64, 96, 3]})


def test_attention_at_the_native_grid_uses_the_stored_index():
    attn = _tiny().net.blocks[0].attn
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        got = attn(x, (4, 4))
        torch.testing.assert_close(got, _explicit_attention(attn, x, attn.relative_position_bias_table,
                                                            attn.relative_position_index), atol=1e-5, rtol=1e-5)
        # the official forward looks the bias up through the loaded buffer, not a recomputed index
        attn.relative_position_index[1, 2] = 0
        assert not torch.allclose(attn(x, (4, 4)), got)


def test_other_grids_resize_the_table_bicubically():
    # not in the official code (its bias only fits img_size inputs): the (2S-1)^2 part is resized
    # per head, the three cls rows are kept, and the index is rebuilt for the grid
    attn = _tiny().net.blocks[1].attn
    table = attn.relative_position_bias_table.detach()
    pairs = table[:-3].reshape(7, 7, 2).permute(2, 0, 1)[None]
    resized = F.interpolate(pairs, size=(5, 9), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(-1, 2)
    expected_table = torch.cat([resized, table[-3:]])
    x = torch.randn(1, 3 * 5 + 1, 32)
    with torch.no_grad():
        got = attn(x, (3, 5))
        torch.testing.assert_close(got, _explicit_attention(attn, x, expected_table, relative_position_index(3, 5)),
                                   atol=1e-5, rtol=1e-5)
    bias = relative_position_bias(table, (4, 4), (3, 5))
    assert bias.shape == (2, 16, 16)
    torch.testing.assert_close(bias[:, 0, 0], table[-1])                    # cls -> cls unchanged


# --- tokens ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height", [(64, 64), (96, 64), (133, 80), (1333, 800)])
def test_num_tokens_matches_forward(width, height):
    backbone = _tiny()
    with torch.no_grad():
        tokens = backbone(torch.randn(1, 3, height, width))
    assert tokens.shape == (1, backbone.num_tokens(width, height), 32)
    assert torch.isfinite(tokens).all()


def test_tokens_are_f4_in_row_major_order():
    backbone = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = backbone(x)
        features = backbone.features(x)
    assert [f.shape[-2:] for f in features] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    torch.testing.assert_close(tokens, features[3].flatten(2).transpose(1, 2))


def test_the_cls_token_joins_only_the_vit_blocks():
    backbone = _tiny()
    net = backbone.net
    seen = []
    def record(name, position):
        return lambda module, args: seen.append((name, args[position].shape[1]))

    net.blocks[0].register_forward_pre_hook(record("block", 0))
    net.interactions[0].injector.register_forward_pre_hook(record("injector", 0))     # x: patch tokens
    net.interactions[0].extractor.register_forward_pre_hook(record("extractor", 2))   # its feat x
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)
        assert seen == [("injector", 16), ("block", 17), ("extractor", 16)]
        net.cls_token += 1.0                                                # it still reaches f4 via attention
        assert not torch.equal(backbone(x), before)


# --- strict loading of an mmseg checkpoint -----------------------------------------------------------

def _mask2former_file(tmp_path, backbone, drop=(), extra=None):
    """An mmcv/mmengine Mask2Former checkpoint (the .pth inside the released .zip):
    {"state_dict": {backbone., decode_head.}, "meta": {...}}."""
    state = {f"backbone.{k}": v.clone() for k, v in backbone.net.state_dict().items()}
    state.update({
        "decode_head.pixel_decoder.input_convs.0.conv.weight": torch.zeros(16, 32, 1, 1),
        "decode_head.transformer_decoder.layers.0.attentions.0.attn.in_proj_weight": torch.zeros(48, 16),
        "decode_head.query_embed.weight": torch.zeros(100, 16),
        "decode_head.cls_embed.weight": torch.zeros(151, 16),
    })
    for key in drop:
        del state[key]
    state.update(extra or {})
    path = tmp_path / "mask2former_beit_adapter_large_640_160k_ade20k.pth"
    torch.save({"meta": {"mmseg_version": "0.20.2", "iter": 160000}, "state_dict": state}, path)
    return read_checkpoint(path)


def test_loads_a_mask2former_checkpoint_strictly(tmp_path):
    source, target = _tiny(seed=1), _tiny(seed=2)
    target.load_official(_mask2former_file(tmp_path, source))
    for size in [(64, 64), (80, 133)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(source(x), target(x), rtol=0, atol=0)


def test_released_checkpoints_without_relative_position_index_load(tmp_path):
    # the released BEiT-Adapter files lack every blocks.N.attn.relative_position_index (mmseg warns
    # "missing keys in source state_dict", czczup/ViT-Adapter issues #51, #57, #74); the official
    # model then uses the index it computed itself
    source, target = _tiny(seed=1), _tiny(seed=2)
    drop = [f"backbone.blocks.{i}.attn.relative_position_index" for i in range(4)]
    target.load_official(_mask2former_file(tmp_path, source, drop=drop))
    assert torch.equal(target.net.blocks[3].attn.relative_position_index, relative_position_index(4, 4))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(source(x), target(x), rtol=0, atol=0)


def test_missing_backbone_key_is_an_error(tmp_path):
    checkpoint = _mask2former_file(tmp_path, _tiny(), drop=["backbone.blocks.2.attn.v_bias"])
    with pytest.raises(ValueError, match="backbone under 'backbone.'") as error:
        _tiny().load_official(checkpoint)
    assert "1 missing key(s): blocks.2.attn.v_bias" in str(error.value)


def test_extra_backbone_key_is_an_error(tmp_path):
    extra = {"backbone.pos_embed": torch.zeros(1, 17, 32), "backbone.blocks.0.attn.qkv.bias": torch.zeros(96)}
    with pytest.raises(ValueError) as error:
        _tiny().load_official(_mask2former_file(tmp_path, _tiny(), extra=extra))
    assert "2 unexpected key(s): blocks.0.attn.qkv.bias, pos_embed" in str(error.value)


def test_tables_of_another_crop_size_name_the_arch():
    model = _on_meta("beit-adapter-l-640")
    table = {"blocks.0.attn.relative_position_bias_table": torch.empty(111 * 111 + 3, 16, device="meta")}
    with pytest.raises(ValueError, match="56x56 window .*img_size 896.*use arch beit-adapter-l-896 or "
                                         "beitv2-adapter-l-896"):
        model.adapt_state_dict(table)
