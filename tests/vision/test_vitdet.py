"""ViTDet: detectron2 key layout, window/global attention with decomposed relative positions, the
last-block tap, and strict loading of a detectron2 .pkl checkpoint."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry
from vlmswap.vision import vitdet
from vlmswap.vision.registry import FAMILIES
from vlmswap.vision.vitdet import ViTDet, rel_pos_bias, window_partition, window_unpartition

# 8-pixel patches, 4x4 windows, pretrained at 32 (4x4 pos grid), global tables for a 64 input (8x8)
TINY = {"embed_dim": 16, "depth": 3, "num_heads": 2, "global_blocks": [1], "patch_size": 8, "window_size": 4,
        "img_size": 64, "pretrain_img_size": 32}


def _tiny(seed=0, **extra):
    torch.manual_seed(seed)
    return ViTDet({**TINY, **extra}).eval()


def _on_meta(arch):
    with torch.device("meta"):
        return ViTDet(arch)


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_registry_taps_are_the_family_taps():
    assert FAMILIES["vitdet"].taps == vitdet.TAPS == ("last-block",)


@pytest.mark.parametrize("arch,dim,depth,global_blocks,tensors,params_m", [
    ("vitdet-b", 768, 12, [2, 5, 8, 11], 171, 85.89),
    ("vitdet-l", 1024, 24, [5, 11, 17, 23], 339, 303.43),
    ("vitdet-h", 1280, 32, [7, 15, 23, 31], 451, 631.12)])
def test_official_layout_under_backbone_net(arch, dim, depth, global_blocks, tensors, params_m):
    # backbones.md 5.1: keys under backbone.net., pos_embed for 224 with cls (1, 197, C), rel-pos
    # tables of 2*14-1 = 27 rows in window blocks and 2*64-1 = 127 rows in global blocks
    model = _on_meta(arch)
    sd = model.official_module().state_dict()
    assert all(k.startswith("backbone.net.") for k in sd)
    assert len(sd) == 3 + 14 * depth == tensors
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m  # csv: ~86M/~304M/~632M
    head_dim = dim // (12 if arch == "vitdet-b" else 16)
    assert sd["backbone.net.pos_embed"].shape == (1, 197, dim)
    assert sd["backbone.net.patch_embed.proj.weight"].shape == (dim, 3, 16, 16)
    for i in range(depth):
        rows = 127 if i in global_blocks else 27
        assert sd[f"backbone.net.blocks.{i}.attn.rel_pos_h"].shape == (rows, head_dim)
        assert sd[f"backbone.net.blocks.{i}.attn.rel_pos_w"].shape == (rows, head_dim)
    block = {k.removeprefix("backbone.net.blocks.0.") for k in sd if k.startswith("backbone.net.blocks.0.")}
    assert block == {f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                     for p in ("weight", "bias")} | {"attn.rel_pos_h", "attn.rel_pos_w"}
    assert [i for i, b in enumerate(model.net.blocks) if b.window == 0] == global_blocks
    assert model.embed_dim == dim


def test_tokens_at_the_papers_geometry_and_normalization():
    model = _on_meta("vitdet-b")
    assert model.num_tokens(1024, 1024) == 4096
    assert model.num_tokens(1333, 800) == 83 * 50
    # detectron2's RGB 0-255 mean/std divided by 255
    np.testing.assert_allclose(np.array(model.mean) * 255, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(np.array(model.std) * 255, [58.395, 57.12, 57.375])


@pytest.mark.parametrize("width,height", [(64, 64), (72, 40), (40, 96), (24, 24)])
def test_num_tokens_matches_forward(width, height):
    backbone = _tiny()
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, height, width))
    assert tokens.shape == (2, backbone.num_tokens(width, height), 16)


def test_4096_tokens_at_1024():
    backbone = _tiny(depth=2, patch_size=16, img_size=1024, pretrain_img_size=224, window_size=14)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 1024, 1024)).shape == (1, 4096, 16)


def test_tokens_are_the_last_block_output_in_row_major_order():
    backbone = _tiny()
    _randomize(backbone)
    x = torch.randn(1, 3, 40, 72)                                           # 5 x 9 tokens
    with torch.no_grad():
        tokens = backbone(x)
        net = backbone.net
        m = net.patch_embed.proj(x).permute(0, 2, 3, 1) + net.abs_pos(5, 9)
        for block in net.blocks:
            m = block(m)                                                    # no final norm
    for i, j in [(0, 0), (2, 7), (4, 8)]:
        torch.testing.assert_close(tokens[0, i * 9 + j], m[0, i, j])


def test_abs_pos_drops_cls_and_resizes_bicubically():
    net = _tiny().net
    pos = net.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 4, 16)
    torch.testing.assert_close(net.abs_pos(4, 4), grid)                     # pretraining grid: as stored
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(5, 9), mode="bicubic", align_corners=False)
    torch.testing.assert_close(net.abs_pos(5, 9), resized.permute(0, 2, 3, 1))


def _explicit_attention(attn, x):
    """detectron2's Attention.forward written out: scores = (q * scale) k^T + bias with
    bias[(a,b),(c,d)] = q.Rh[a-c+S-1] + q.Rw[b-d+S-1] from the (possibly linearly resized) tables."""
    b, h, w, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * heads, h * w, -1)
    q, k, v = qkv.unbind(0)

    def table(t, size):
        if t.shape[0] != 2 * size - 1:
            t = F.interpolate(t.t()[None], size=2 * size - 1, mode="linear")[0].t()
        return t

    Rh, Rw = table(attn.rel_pos_h, h), table(attn.rel_pos_w, w)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(1, 2)
    bias = torch.zeros_like(scores)
    for qi in range(h * w):
        a, bb = divmod(qi, w)
        for ki in range(h * w):
            cc, d = divmod(ki, w)
            bias[:, qi, ki] = q[:, qi] @ Rh[a - cc + h - 1] + q[:, qi] @ Rw[bb - d + w - 1]
    out = ((scores + bias).softmax(-1) @ v).view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
    return attn.proj(out)


@pytest.mark.parametrize("h,w", [(4, 4), (3, 5)])
def test_window_attention_matches_the_explicit_formula(h, w):
    attn = _tiny().net.blocks[0].attn                                       # tables for S = 4 (7 rows)
    _randomize(attn)
    x = torch.randn(2, h, w, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _explicit_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_global_attention_resizes_its_tables_to_the_token_grid():
    attn = _tiny().net.blocks[1].attn                                       # tables for 8 (15 rows)
    _randomize(attn)
    x = torch.randn(1, 5, 9, 16)                                            # needs 9 and 17 rows
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _explicit_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_rel_pos_bias_is_zero_for_zero_tables():
    q = torch.randn(3, 12, 8)
    assert torch.count_nonzero(rel_pos_bias(q, torch.zeros(5, 8), torch.zeros(7, 8), (3, 4))) == 0


def test_window_partition_pads_and_unpartition_crops():
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 4)
    assert padded == (8, 8) and windows.shape == (2 * 4, 4, 4, 3)
    torch.testing.assert_close(windows[1], F.pad(x, (0, 0, 0, 1, 0, 3))[0, 0:4, 4:8])  # raster order
    torch.testing.assert_close(window_unpartition(windows, 4, padded, (5, 7)), x)


def test_window_blocks_only_mix_inside_a_window():
    backbone = _tiny(global_blocks=[])                                      # 8x8 tokens, 4x4 windows
    x = torch.randn(1, 3, 64, 64)
    changed = x.clone()
    changed[:, :, :8, :8] += 1.0                                            # the top-left patch
    with torch.no_grad():
        moved = (backbone(changed) - backbone(x)).abs().amax(-1)[0].view(8, 8) > 0
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[:4, :4] = True
    assert torch.equal(moved, inside)


def test_padding_tokens_take_part_in_window_attention():
    # 5x5 tokens with 4x4 windows: the bottom-right window holds 1 real token and 15 zero tokens
    # padded after norm1; the official code does not mask them
    block = _tiny().net.blocks[0]
    _randomize(block)
    x = torch.randn(1, 5, 5, 16)
    with torch.no_grad():
        got = block(x)[0, 4, 4]
        window = F.pad(block.norm1(x), (0, 0, 0, 3, 0, 3))[:, 4:8, 4:8]
        expected = x[0, 4, 4] + block.attn(window)[0, 0, 0]
        expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(got, expected)


def test_unknown_arch_and_tap():
    with pytest.raises(ValueError, match="vitdet-h"):
        vitdet.build("vitdet-g", "last-block", Geometry.parse("1024"))
    with pytest.raises(ValueError, match="global_blocks"):
        vitdet.build({"embed_dim": 8, "depth": 1, "num_heads": 1}, "last-block", Geometry.parse("64"))
    with pytest.raises(ValueError, match="last-block"):
        vitdet.build(TINY, "block-2", Geometry.parse("64"))


# --- strict loading of a detectron2 model-zoo file -------------------------------------------------

def _detectron2_file(tmp_path, backbone, drop=(), extra=None):
    """A model-zoo .pkl: {"model": {name: numpy array}, "__author__": ...}, the ViT under
    backbone.net. next to the feature pyramid, RPN and ROI heads."""
    model = {f"backbone.net.{k}": v.numpy() for k, v in backbone.net.state_dict().items()}
    model.update({
        "backbone.simfp_2.0.weight": np.zeros((16, 8, 2, 2), np.float32),
        "backbone.simfp_2.1.weight": np.ones(8, np.float32),
        "backbone.simfp_2.4.weight": np.zeros((4, 4, 1, 1), np.float32),
        "backbone.simfp_2.4.norm.bias": np.zeros(4, np.float32),
        "backbone.simfp_5.5.norm.weight": np.ones(4, np.float32),
        "proposal_generator.rpn_head.conv.conv0.weight": np.zeros((4, 4, 3, 3), np.float32),
        "roi_heads.box_predictor.cls_score.weight": np.zeros((81, 8), np.float32),
        "roi_heads.mask_head.predictor.bias": np.zeros(80, np.float32),
    })
    for key in drop:
        del model[key]
    model.update(extra or {})
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f)
    return read_checkpoint(path)


def _same_tokens(a, b):
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_loads_a_detectron2_pickle_of_numpy_arrays(tmp_path):
    source, target = _tiny(seed=1), _tiny(seed=2)
    _randomize(source)
    checkpoint = _detectron2_file(tmp_path, source)
    assert isinstance(checkpoint["model"]["backbone.net.pos_embed"], np.ndarray)
    target.load_official(checkpoint)
    _same_tokens(source, target)
    assert isinstance(target.net.pos_embed, torch.nn.Parameter)


def test_missing_backbone_key_is_an_error(tmp_path):
    checkpoint = _detectron2_file(tmp_path, _tiny(), drop=["backbone.net.blocks.2.attn.rel_pos_w"])
    with pytest.raises(ValueError, match="weights under 'model'") as error:
        _tiny().load_official(checkpoint)
    assert "1 missing key(s): backbone.net.blocks.2.attn.rel_pos_w" in str(error.value)


def test_keys_outside_the_detector_heads_are_unexpected(tmp_path):
    extra = {"backbone.net.blocks.3.norm1.weight": np.ones(16, np.float32),     # a 4th block
             "backbone.bottom_up.stem.conv1.weight": np.zeros((2, 3, 7, 7), np.float32)}
    with pytest.raises(ValueError) as error:
        _tiny().load_official(_detectron2_file(tmp_path, _tiny(), extra=extra))
    assert "2 unexpected key(s): backbone.bottom_up.stem.conv1.weight, backbone.net.blocks.3.norm1.weight" \
        in str(error.value)


def test_shape_mismatch_is_a_value_error(tmp_path):
    bad = {"backbone.net.blocks.1.attn.rel_pos_h": np.zeros((27, 8), np.float32)}
    with pytest.raises(ValueError, match="size mismatch"):
        _tiny().load_official(_detectron2_file(tmp_path, _tiny(), extra=bad))
