"""ViT-Adapter: official key layout (DeiT/AugReg and Uni-Perceiver), pure-PyTorch deformable attention,
the stride-32 tap, padding, and strict loading of an mmseg (mmcv/mmengine) checkpoint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry
from vlmswap.vision import vit_adapter
from vlmswap.vision.registry import FAMILIES, build_backbone
from vlmswap.vision.vit_adapter import (MSDeformAttn, ViTAdapter, deformable_sample, level_shapes, reference_points,
                                        resize_pos_grid)

# 16-pixel patches (fixed by the adapter), a 4x4 pre-training grid (64), 4 interactions of one block
TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "deform_num_heads": 2, "pretrain_size": 64,
        "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]], "conv_inplane": 8, "n_points": 2, "deform_ratio": 0.5}


def _tiny(seed=0, **extra):
    torch.manual_seed(seed)
    model = ViTAdapter({**TINY, **extra}).eval()
    _randomize(model)   # the fresh injector gamma is 0 (init_values 0.): make every path count
    return model


def _on_meta(arch):
    with torch.device("meta"):
        return ViTAdapter(arch)


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dtype.is_floating_point:
                t.add_(0.2 * torch.randn(t.shape, generator=g))


# --- the official layout ----------------------------------------------------------------------------

def _adapter_params(C, M, ratio, inplane=64, P=4, cffn=0.25, interactions=4):
    """Parameters of the adapter part, from the official module definitions (adapter_modules.py,
    ms_deform_attn.py, vit_adapter.py; BatchNorm running statistics are buffers, not counted)."""
    spm = (27 * inplane + 9 * inplane**2 * 2 + 18 * inplane**2 + 72 * inplane**2 + 144 * inplane**2  # convs, no bias
           + 2 * (inplane * 3 + 2 * inplane + 4 * inplane + 4 * inplane)                              # SyncBN w, b
           + (inplane + 2 * inplane + 4 * inplane + 4 * inplane) * C + 4 * C)                         # fc1..fc4

    def msda(levels):
        v = int(C * ratio)
        return (C + 1) * M * levels * P * 2 + (C + 1) * M * levels * P + (C + 1) * v + (v + 1) * C

    h = int(C * cffn)
    injector = 4 * C + msda(3) + C                                        # 2 LayerNorms, attn, gamma
    extractor = 4 * C + msda(1) + (C + 1) * h + 10 * h + (h + 1) * C + 2 * C  # + ConvFFN, ffn_norm
    return 3 * C + spm + interactions * (injector + extractor) + 2 * extractor + (4 * C * C + C) + 8 * C


def _vit_params(C, depth, grid):
    # base/vit.py: patch_embed.proj, pos_embed (grid^2 + cls), blocks with qkv bias and gamma1/gamma2
    return 3 * 256 * C + C + (grid * grid + 1) * C + depth * (12 * C * C + 15 * C)


def _uniperceiver_params(C, depth):
    # base/uniperceiver.py: proj, spatial (196) and temporal (8) embeddings, embeddings_norm, BertLayers
    return 3 * 256 * C + C + 196 * C + 8 * C + 2 * C + depth * (12 * C * C + 15 * C)


# Totals were also checked once against the official modules of czczup/ViT-Adapter@fd64a51
# (instantiated with mmcv/mmseg stubbed out): identical keys, shapes and counts.
@pytest.mark.parametrize("arch,dim,depth,heads,ratio,grid,tensors,params", [
    ("vit-adapter-t", 192, 12, 6, 1.0, 14, 410, 7_966_640),
    ("vit-adapter-s", 384, 12, 6, 1.0, 14, 410, 27_503_888),
    ("vit-adapter-b", 768, 12, 12, 0.5, 14, 410, 99_495_392),
    ("augreg-adapter-b", 768, 12, 12, 0.5, 24, 410, 99_787_232),
    ("vit-adapter-l", 1024, 24, 16, 0.5, 24, 578, 326_973_632)])
def test_official_layout_of_the_vit_archs(arch, dim, depth, heads, ratio, grid, tensors, params):
    model = _on_meta(arch)
    sd = model.official_module().state_dict()
    assert len(sd) == tensors == 3 + 14 * depth + 239
    assert sum(p.numel() for p in model.parameters()) == params == \
        _vit_params(dim, depth, grid) + _adapter_params(dim, heads, ratio)
    v = int(dim * ratio)
    expected = {
        "patch_embed.proj.weight": (dim, 3, 16, 16), "pos_embed": (1, grid * grid + 1, dim),
        "blocks.0.attn.qkv.bias": (3 * dim,), "blocks.0.gamma1": (dim,), "blocks.0.gamma2": (dim,),
        f"blocks.{depth - 1}.mlp.fc2.weight": (dim, 4 * dim), "level_embed": (3, dim),
        "spm.stem.0.weight": (64, 3, 3, 3), "spm.stem.7.running_var": (64,), "spm.conv4.0.weight": (256, 256, 3, 3),
        "spm.conv4.1.num_batches_tracked": (), "spm.fc1.weight": (dim, 64, 1, 1), "spm.fc4.bias": (dim,),
        "interactions.0.injector.gamma": (dim,), "interactions.0.injector.query_norm.weight": (dim,),
        "interactions.0.injector.attn.sampling_offsets.weight": (heads * 3 * 4 * 2, dim),
        "interactions.0.injector.attn.attention_weights.weight": (heads * 3 * 4, dim),
        "interactions.0.injector.attn.value_proj.weight": (v, dim),
        "interactions.0.injector.attn.output_proj.weight": (dim, v),
        "interactions.1.extractor.attn.sampling_offsets.bias": (heads * 1 * 4 * 2,),
        "interactions.1.extractor.ffn.fc1.weight": (dim // 4, dim),
        "interactions.1.extractor.ffn.dwconv.dwconv.weight": (dim // 4, 1, 3, 3),
        "interactions.1.extractor.ffn_norm.bias": (dim,),
        "interactions.3.extra_extractors.1.feat_norm.weight": (dim,),
        "up.weight": (dim, dim, 2, 2), "norm4.running_mean": (dim,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not any(k.startswith(("cls_token", "norm.", "interactions.2.extra_extractors")) for k in sd)
    assert model.embed_dim == dim


def test_official_layout_of_uniperceiver_adapter_l():
    model = _on_meta("uniperceiver-adapter-l")
    sd = model.official_module().state_dict()
    assert len(sd) == 581
    assert sum(p.numel() for p in model.parameters()) == 326_593_728 == \
        _uniperceiver_params(1024, 24) + _adapter_params(1024, 16, 0.5)
    expected = {
        "visual_embed.patch_embed.proj.weight": (1024, 3, 16, 16),
        "visual_embed.patch_embed.spatial_pos_embed.weight": (196, 1024),
        "visual_embed.patch_embed.temporal_pos_embed.weight": (8, 1024),
        "visual_embed.embeddings_norm.weight": (1024,),
        "layers.23.self_attn.in_proj.weight": (3072, 1024), "layers.0.self_attn.out_proj.bias": (1024,),
        "layers.0.linear1.weight": (4096, 1024), "layers.0.linear2.weight": (1024, 4096),
        "layers.0.gamma_1": (1024,), "layers.0.norm2.weight": (1024,),
        "interactions.3.extra_extractors.0.attn.value_proj.weight": (512, 1024), "norm1.weight": (1024,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not any(k.startswith(("blocks.", "pos_embed", "patch_embed.")) for k in sd)
    # UnifiedBertEncoder passes plain nn.LayerNorm (eps 1e-5) to the adapter as well
    assert model.net.layers[0].norm1.eps == model.net.interactions[0].injector.query_norm.eps == 1e-5
    assert _on_meta("vit-adapter-s").net.interactions[0].injector.query_norm.eps == 1e-6


def test_tokens_at_the_papers_geometry_and_normalization():
    for arch in ("vit-adapter-t", "vit-adapter-s", "vit-adapter-b", "uniperceiver-adapter-l"):
        model = _on_meta(arch)
        assert model.num_tokens(512, 512) == 256
        # mmseg img_norm_cfg mean/std on 0-255 inputs
        np.testing.assert_allclose(np.array(model.mean) * 255, [123.675, 116.28, 103.53])
        np.testing.assert_allclose(np.array(model.std) * 255, [58.395, 57.12, 57.375])
    for arch in ("vit-adapter-l", "augreg-adapter-b"):                     # AugReg-B/L: 127.5 / 127.5
        assert _on_meta(arch).mean == _on_meta(arch).std == (0.5, 0.5, 0.5)
    assert _on_meta("vit-adapter-b").num_tokens(1333, 800) == 42 * 25    # padded to 1344 x 800


def test_registry_builds_the_family():
    assert FAMILIES["vit-adapter"].taps == vit_adapter.TAPS == ("adapter-stride32",)
    backbone = build_backbone("vit-adapter", TINY, "adapter-stride32", Geometry.parse("64"))
    assert isinstance(backbone, ViTAdapter)


def test_unknown_arch_and_tap():
    with pytest.raises(ValueError, match="uniperceiver-adapter-l"):
        vit_adapter.build("vit-adapter-h", "adapter-stride32", Geometry.parse("512"))
    with pytest.raises(ValueError, match="interaction_indexes"):
        vit_adapter.build({"embed_dim": 8, "depth": 1, "num_heads": 1}, "adapter-stride32", Geometry.parse("64"))
    with pytest.raises(ValueError, match="adapter-stride32"):
        vit_adapter.build(TINY, "stage3", Geometry.parse("64"))
    with pytest.raises(ValueError, match="consecutive"):
        ViTAdapter({**TINY, "interaction_indexes": [[0, 1], [3, 3]]})


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
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        tokens = backbone(x)
        f1, f2, f3, f4 = backbone.features(x)
    assert [f.shape[-2:] for f in (f1, f2, f3, f4)] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert tokens.shape == (2, 8, 32)
    for i, j in [(0, 0), (1, 2), (1, 3)]:
        torch.testing.assert_close(tokens[:, i * 4 + j], f4[:, :, i, j])


def test_f4_is_norm4_of_c4_plus_the_halved_vit_map():
    # f4 = norm4(c4 + bilinear x0.5 of the last interaction's tokens); with align_corners False a
    # 0.5 bilinear resize is a 2x2 average
    backbone = _tiny()
    net = backbone.net
    x = torch.randn(1, 3, 64, 64)
    captured = {}
    net.interactions[3].register_forward_hook(lambda m, i, o: captured.update(x=o[0], c=o[1]))
    with torch.no_grad():
        (f4,) = net(x)
        vit_map = captured["x"].transpose(1, 2).reshape(1, 32, 4, 4)
        c4 = captured["c"][:, 64 + 16:].transpose(1, 2).reshape(1, 32, 2, 2)
        torch.testing.assert_close(f4, net.norm4(c4 + F.avg_pool2d(vit_map, 2)))


def test_inputs_are_zero_padded_to_multiples_of_32():
    backbone = _tiny()
    x = torch.randn(1, 3, 80, 133)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone(F.pad(x, (0, 160 - 133, 0, 96 - 80))))
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone.net(x)


def test_pos_embed_drops_cls_and_resizes_the_pretraining_grid_bicubically():
    backbone = _tiny()
    net = backbone.net
    x = torch.randn(1, 3, 96, 160)                                          # 6 x 10 tokens
    with torch.no_grad():
        tokens, cls = net.embed(x)
        grid = net.pos_embed[0, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
        pos = F.interpolate(grid, size=(6, 10), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tokens, net.patch_embed.proj(x).flatten(2).transpose(1, 2) + pos)
        torch.testing.assert_close(resize_pos_grid(net.pos_embed[0, 1:], (4, 4))[0], net.pos_embed[0, 1:])
        before = backbone(x)
        net.pos_embed[0, 0] += 1.0                                          # the cls entry is unused
        torch.testing.assert_close(backbone(x), before)
    assert cls is None


def test_uniperceiver_embedding():
    backbone = _tiny(base="uniperceiver")
    pe = backbone.net.visual_embed.patch_embed
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens, _ = backbone.net.embed(x)
        grid = pe.spatial_pos_embed.weight.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
        pos = F.interpolate(grid, size=(4, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        expected = F.layer_norm(pe.proj(x).flatten(2).transpose(1, 2) + pos + pe.temporal_pos_embed.weight[0], (32,),
                                backbone.net.visual_embed.embeddings_norm.weight,
                                backbone.net.visual_embed.embeddings_norm.bias, eps=1e-5)
        torch.testing.assert_close(tokens, expected)
        out = backbone(torch.randn(1, 3, 800, 1333))
    assert out.shape == (1, 1050, 32) and torch.isfinite(out).all()


def test_two_interactions_work_for_the_tap():
    backbone = _tiny(interaction_indexes=[[0, 1], [2, 3]])
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 64, 96)).shape == (2, 6, 32)
    assert backbone.net.interactions[1].extra_extractors is not None
    assert backbone.net.interactions[0].extra_extractors is None


def test_level_shapes_and_reference_points():
    assert level_shapes(64, 96) == [(8, 12), (4, 6), (2, 3)]
    points = reference_points([(2, 3), (1, 1)])
    expected = [[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25], [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75], [0.5, 0.5]]
    torch.testing.assert_close(points, torch.tensor(expected))


# --- deformable attention against an explicit bilinear loop -------------------------------------------

def _bilinear(image, x, y):
    """image (D, H, W) sampled at pixel coordinates (x, y) (centres at integers), zeros outside."""
    d, h, w = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(d, dtype=image.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                out += (1 - abs(x - xx)) * (1 - abs(y - yy)) * image[:, yy, xx]
    return out


def _explicit_sample(value, shapes, locations, weights):
    b, _, m, d = value.shape
    q, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = torch.zeros(b, q, m, d, dtype=value.dtype)
    for n in range(b):
        for qi in range(q):
            for head in range(m):
                for lv, (h, w) in enumerate(shapes):
                    image = value[n, starts[lv]:starts[lv + 1], head].T.reshape(d, h, w)
                    for p in range(points):
                        lx, ly = locations[n, qi, head, lv, p].tolist()
                        sample = _bilinear(image, lx * w - 0.5, ly * h - 0.5)   # the CUDA kernel's h_im, w_im
                        out[n, qi, head] += weights[n, qi, head, lv, p] * sample
    return out.reshape(b, q, m * d)


def test_deformable_sample_matches_an_explicit_bilinear_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2), (1, 3)]
    b, q, m, d, p = 2, 5, 2, 3, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    locations = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    got = deformable_sample(value, shapes, locations, weights)
    torch.testing.assert_close(got, _explicit_sample(value, shapes, locations, weights), atol=1e-5, rtol=1e-5)


def test_msdeformattn_offsets_are_normalized_by_width_and_height():
    torch.manual_seed(0)
    attn = MSDeformAttn(8, n_levels=2, n_heads=2, n_points=3, ratio=0.5)
    _randomize(attn)
    shapes = [(3, 5), (2, 2)]
    query, feat = torch.randn(2, 4, 8), torch.randn(2, 19, 8)
    points = torch.rand(4, 2)
    with torch.no_grad():
        got = attn(query, points, feat, shapes)
        value = attn.value_proj(feat).view(2, 19, 2, 2)
        offsets = attn.sampling_offsets(query).view(2, 4, 2, 2, 3, 2)
        weights = attn.attention_weights(query).view(2, 4, 2, 6).softmax(-1).view(2, 4, 2, 2, 3)
        locations = offsets.clone()
        for lv, (h, w) in enumerate(shapes):
            locations[..., lv, :, 0] = points[None, :, None, None, 0] + offsets[..., lv, :, 0] / w
            locations[..., lv, :, 1] = points[None, :, None, None, 1] + offsets[..., lv, :, 1] / h
        expected = attn.output_proj(_explicit_sample(value, shapes, locations, weights))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fresh_msdeformattn_offsets_follow_the_official_init():
    attn = MSDeformAttn(16, n_levels=3, n_heads=4, n_points=2, ratio=1.0)
    bias = attn.sampling_offsets.bias.detach().view(4, 3, 2, 2)
    # heads point right, up, left, down (angles k * 2pi/4 scaled to the unit square), point p at p + 1
    torch.testing.assert_close(bias[:, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[:, 2, 1], 2 * bias[:, 0, 0])
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0


# --- strict loading of an mmseg checkpoint -----------------------------------------------------------

def _mmseg_file(tmp_path, backbone, drop=(), extra=None):
    """An mmcv/mmengine UperNet checkpoint: {"state_dict": {backbone., decode_head., auxiliary_head.},
    "meta": {...}, "optimizer": {...}}."""
    state = {f"backbone.{k}": v.clone() for k, v in backbone.net.state_dict().items()}
    state.update({
        "decode_head.conv_seg.weight": torch.zeros(150, 16, 1, 1), "decode_head.conv_seg.bias": torch.zeros(150),
        "decode_head.psp_modules.0.1.conv.weight": torch.zeros(16, 32, 1, 1),
        "decode_head.fpn_bottleneck.bn.running_mean": torch.zeros(16),
        "auxiliary_head.conv_seg.weight": torch.zeros(150, 8, 1, 1),
    })
    for key in drop:
        del state[key]
    state.update(extra or {})
    path = tmp_path / "upernet_deit_adapter_tiny_512_160k_ade20k.pth"
    torch.save({"meta": {"mmseg_version": "0.20.2", "config": "model = dict(...)", "iter": 160000,
                         "CLASSES": ("wall", "building")},
                "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return read_checkpoint(path)


def _same_tokens(a, b, size=(64, 96)):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("base", ["vit", "uniperceiver"])
def test_loads_an_mmseg_checkpoint_strictly(tmp_path, base):
    source, target = _tiny(seed=1, base=base), _tiny(seed=2, base=base)
    target.load_official(_mmseg_file(tmp_path, source))
    _same_tokens(source, target)
    torch.testing.assert_close(target.net.norm4.running_var, source.net.norm4.running_var)


def test_num_batches_tracked_may_be_absent(tmp_path):
    source, target = _tiny(seed=1), _tiny(seed=2)
    drop = [f"backbone.{k}" for k in source.net.state_dict() if k.endswith("num_batches_tracked")]
    assert len(drop) == 10                                       # 6 SyncBNs in spm, norm1..norm4
    target.load_official(_mmseg_file(tmp_path, source, drop=drop))
    _same_tokens(source, target)


def test_missing_backbone_key_is_an_error(tmp_path):
    key = "backbone.interactions.3.extra_extractors.1.attn.value_proj.bias"
    checkpoint = _mmseg_file(tmp_path, _tiny(), drop=[key])
    with pytest.raises(ValueError, match="backbone under 'backbone.'") as error:
        _tiny().load_official(checkpoint)
    assert "1 missing key(s): interactions.3.extra_extractors.1.attn.value_proj.bias" in str(error.value)


def test_extra_backbone_key_is_an_error(tmp_path):
    extra = {"backbone.blocks.4.gamma1": torch.ones(32), "backbone.cls_token": torch.zeros(1, 1, 32)}
    with pytest.raises(ValueError) as error:
        _tiny().load_official(_mmseg_file(tmp_path, _tiny(), extra=extra))
    assert "2 unexpected key(s): blocks.4.gamma1, cls_token" in str(error.value)


def test_pos_embed_of_another_pretraining_size_names_the_arch():
    meta_b = _on_meta("vit-adapter-b")                                      # DeiT-B: 224 -> 197 entries
    augreg = {"pos_embed": torch.empty(1, 577, 768, device="meta")}          # AugReg-B: 384 -> 577
    with pytest.raises(ValueError, match="pretrain_size 384 .*use arch augreg-adapter-b"):
        meta_b.adapt_state_dict(augreg)


def test_shape_mismatch_is_a_value_error(tmp_path):
    bad = {"backbone.level_embed": torch.zeros(4, 32)}
    with pytest.raises(ValueError, match="size mismatch"):
        _tiny().load_official(_mmseg_file(tmp_path, _tiny(), extra=bad))


def test_deformable_sampling_runs_in_float32():
    # the official op casts its inputs to float32 (custom_fwd(cast_inputs=torch.float32))
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 12)]
    value = torch.randn(1, 96, 2, 4, generator=g).bfloat16()
    locations = torch.rand(1, 6, 2, 1, 3, 2, generator=g)
    weights = torch.rand(1, 6, 2, 1, 3, generator=g)
    got = deformable_sample(value, shapes, locations, weights)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, deformable_sample(value.float(), shapes, locations, weights).bfloat16(),
                               rtol=0, atol=0)
