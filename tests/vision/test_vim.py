"""Vim: official key layout, the middle cls token, the bidirectional mixer, taps and strict loading."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry
from vlmswap.vision import vim
from vlmswap.vision.registry import FAMILIES
from vlmswap.vision.vim import BidirectionalMamba, VisionMamba

TINY = {"embed_dim": 16, "depth": 2, "patch_size": 8, "stride": 8, "d_state": 4}


def _tiny(geometry="32", seed=0, **extra):
    torch.manual_seed(seed)
    return VisionMamba({**TINY, **extra}, "final-norm", Geometry.parse(geometry)).eval()


def _on_meta(arch, geometry="224"):
    with torch.device("meta"):
        return VisionMamba(arch, "final-norm", Geometry.parse(geometry))


def test_registry_taps_are_the_family_taps():
    assert FAMILIES["vim"].taps == vim.TAPS == ("final-norm",)


def test_vim_t_matches_the_official_state_dict():
    # reference/backbones.md 4.2 (Vim-T, measured on the official model): 415 tensors, these shapes
    sd = _on_meta("vim-t").state_dict()
    assert len(sd) == 415
    expected = {
        "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "patch_embed.proj.weight": (192, 3, 16, 16),
        "patch_embed.proj.bias": (192,), "head.weight": (1000, 192), "head.bias": (1000,), "norm_f.weight": (192,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    layer = {k.removeprefix("layers.23."): tuple(v.shape) for k, v in sd.items() if k.startswith("layers.23.")}
    assert layer == {
        "mixer.A_log": (384, 16), "mixer.D": (384,), "mixer.A_b_log": (384, 16), "mixer.D_b": (384,),
        "mixer.in_proj.weight": (768, 192), "mixer.conv1d.weight": (384, 1, 4), "mixer.conv1d.bias": (384,),
        "mixer.x_proj.weight": (44, 384), "mixer.dt_proj.weight": (384, 12), "mixer.dt_proj.bias": (384,),
        "mixer.conv1d_b.weight": (384, 1, 4), "mixer.conv1d_b.bias": (384,), "mixer.x_proj_b.weight": (44, 384),
        "mixer.dt_proj_b.weight": (384, 12), "mixer.dt_proj_b.bias": (384,), "mixer.out_proj.weight": (192, 384),
        "norm.weight": (192,),
    }
    assert "layers.24.norm.weight" not in sd


@pytest.mark.parametrize("arch,params_m,dim,tokens,cls_position", [
    ("vim-t", 7.15, 192, 196, 98), ("vim-s", 25.80, 384, 196, 98), ("vim-b", 97.60, 768, 196, 98),
    ("vim-t-stride8", 7.25, 192, 729, 364), ("vim-s-stride8", 26.00, 384, 729, 364)])
def test_named_sizes(arch, params_m, dim, tokens, cls_position):
    # params: backbones.md 4.1 (T 7.15M, S 25.8M, B 97.6M, T-stride8 7.25M); tokens and cls index:
    # checkpoint_sources.csv (196 / 729 at 224; 729 = 27 x 27 since (224 - 16) // 8 + 1 = 27)
    model = _on_meta(arch)
    sd = model.state_dict()
    assert len(sd) == 415
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    assert model.embed_dim == dim and sd["pos_embed"].shape == (1, tokens + 1, dim)
    assert model.num_tokens(224, 224) == tokens and model.cls_position == cls_position
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("geometry", ["32", "48x32", "40x56"])
def test_num_tokens_matches_forward(geometry):
    g = Geometry.parse(geometry)
    backbone = _tiny(geometry)
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, g.height, g.width))
    assert tokens.shape == (2, backbone.num_tokens(g.width, g.height), 16)


def test_overlapping_patches_with_stride_smaller_than_the_patch():
    backbone = _tiny("48x32", stride=4)  # 8-pixel patches every 4 pixels: 7 x 11
    assert backbone.num_tokens(48, 32) == 7 * 11
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 32, 48)).shape == (1, 77, 16)


def test_input_size_must_be_the_built_geometry():
    with pytest.raises(ValueError, match="built for a 4x4 patch grid"):
        _tiny("32")(torch.randn(1, 3, 40, 32))


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_tokens_are_normed_patches_in_row_major_order_without_the_middle_cls():
    backbone = _tiny("48x32", depth=0)  # no layers: tokens = norm_f(patch embedding + pos)
    _randomize(backbone)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        tokens = backbone(x)
        grid = backbone.patch_embed.proj(x)[0]                       # (D, 4, 6)
    pos = backbone.pos_embed[0].detach()
    assert backbone.cls_position == 12
    for i, j in [(0, 0), (1, 5), (2, 0), (3, 5)]:
        n = i * 6 + j
        pos_index = n if n < 12 else n + 1                           # the cls entry sits at index 12
        expected = _rms(grid[:, i, j] + pos[pos_index], backbone.norm_f.weight.detach())
        torch.testing.assert_close(tokens[0, n], expected)


def _sequential_mixer(m, hidden):
    """The mixer one position at a time, for one sequence (L, dim): the backward direction walks
    the positions from last to first (its causal conv looks at later positions), no flips."""
    inner, rank, n = m.inner, m.rank, m.d_state
    xz = hidden @ m.in_proj.weight.t()
    x, z = xz[:, :inner], xz[:, inner:]
    length = hidden.shape[0]

    def run(order, conv, x_proj, dt_proj, A_log, D):
        kernel = conv.weight.shape[-1]
        h = torch.zeros(inner, n)
        out = torch.zeros(length, inner)
        for step, t in enumerate(order):
            acc = conv.bias.clone()
            for k in range(kernel):                                   # weight k sees kernel-1-k steps back
                back = step - (kernel - 1 - k)
                if back >= 0:
                    acc = acc + conv.weight[:, 0, k] * x[order[back]]
            u = F.silu(acc)
            dbl = x_proj.weight @ u
            dt, B, C = dbl[:rank], dbl[rank:rank + n], dbl[rank + n:]
            delta = F.softplus(dt_proj.weight @ dt + dt_proj.bias)
            h = torch.exp(delta[:, None] * -torch.exp(A_log)) * h + (delta * u)[:, None] * B[None, :]
            out[t] = (h @ C + D * u) * F.silu(z[t])
        return out

    forward = run(list(range(length)), m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    backward = run(list(range(length - 1, -1, -1)), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b)
    return ((forward + backward) / 2) @ m.out_proj.weight.t()


@pytest.mark.parametrize("length", [1, 5, 13, 70])
def test_bidirectional_mixer_equals_the_sequential_computation(length):
    torch.manual_seed(0)
    mixer = BidirectionalMamba(8, d_state=4)
    _randomize(mixer)
    hidden = torch.randn(2, length, 8)
    with torch.no_grad():
        got = mixer(hidden)
        for b in range(2):
            torch.testing.assert_close(got[b], _sequential_mixer(mixer, hidden[b]), atol=1e-5, rtol=1e-4)


def test_backward_direction_sees_later_positions():
    torch.manual_seed(0)
    mixer = BidirectionalMamba(8, d_state=4)
    hidden = torch.randn(1, 9, 8)
    changed = hidden.clone()
    changed[0, -1] += 1.0
    with torch.no_grad():
        delta = (mixer(changed) - mixer(hidden)).abs().amax(-1)[0]
    assert (delta > 0).all()  # every position depends on the last one through the backward scan


def test_layers_add_then_norm_then_mix_with_a_float32_residual():
    backbone = _tiny("32", depth=3)
    _randomize(backbone)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = backbone.features(x)
        e = backbone.patch_embed.proj(x).flatten(2).transpose(1, 2)
        e = torch.cat([e[:, :8], backbone.cls_token, e[:, 8:]], dim=1) + backbone.pos_embed
        residual, hidden = e, None
        for i, layer in enumerate(backbone.layers):
            if i:
                residual = residual + hidden
            hidden = layer.mixer(_rms(residual, layer.norm.weight))
        expected = _rms(residual + hidden, backbone.norm_f.weight)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backbone(x), torch.cat([expected[:, :8], expected[:, 9:]], dim=1), atol=1e-5, rtol=1e-5)


def test_classify_reads_the_cls_token():
    backbone = _tiny(num_classes=5)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = backbone.classify(x)
        expected = backbone.head(backbone.features(x)[:, 8])
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (3, 5)


def test_unknown_arch_and_tap():
    with pytest.raises(ValueError, match="vim-t-stride8"):
        vim.build("vim-xl", "final-norm", Geometry.parse("224"))
    with pytest.raises(ValueError, match="embed_dim"):
        vim.build({"depth": 2}, "final-norm", Geometry.parse("32"))
    with pytest.raises(ValueError, match="final-norm"):
        vim.build(TINY, "block-2", Geometry.parse("32"))


# --- strict loading of the official container ------------------------------------------------------

def _official_file(tmp_path, model, **changes):
    """vim/main.py's checkpoint: model, optimizer, lr_scheduler, epoch, model_ema, scaler, args."""
    sd = {**model.state_dict(), **changes}
    path = tmp_path / "vim_checkpoint.pth"
    torch.save({"model": sd, "optimizer": {"state": {}}, "lr_scheduler": {"last_epoch": 299}, "epoch": 299,
                "model_ema": {k: torch.zeros_like(v) for k, v in sd.items()}, "scaler": {},
                "args": argparse.Namespace(model="vim_tiny_patch16_224_bimambav2")}, path)
    return read_checkpoint(path)


def _same_tokens(a, b, geometry="48x32"):
    g = Geometry.parse(geometry)
    x = torch.randn(1, 3, g.height, g.width)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_loads_the_official_container_and_ignores_the_head(tmp_path):
    source = _tiny("48x32", seed=1)
    checkpoint = _official_file(tmp_path, source, **{"head.weight": torch.zeros(1000, 16)})
    assert type(checkpoint["args"]).__name__ == "Namespace"  # an inert placeholder
    target = _tiny("48x32", seed=2, num_classes=7)            # another head shape: not loaded
    target.load_official(checkpoint)
    _same_tokens(source, target)


def test_missing_and_unexpected_keys_name_the_container(tmp_path):
    sd = _tiny().state_dict()
    del sd["layers.1.mixer.A_b_log"]
    sd["layers.2.norm.weight"] = torch.ones(16)
    with pytest.raises(ValueError, match="classification checkpoint") as error:
        _tiny().load_official({"model": sd})
    message = str(error.value)
    assert "1 missing key(s): layers.1.mixer.A_b_log" in message
    assert "1 unexpected key(s): layers.2.norm.weight" in message


def test_the_cls_token_is_required():
    sd = _tiny().state_dict()
    del sd["cls_token"]
    with pytest.raises(ValueError, match="missing key\\(s\\): cls_token"):
        _tiny().load_official({"model": sd})


def test_pos_embed_of_another_geometry_is_refused_not_resampled():
    with pytest.raises(ValueError, match="training geometry"):
        _tiny("48x32").load_official({"model": _tiny("32").state_dict()})


def test_shape_mismatch_is_a_value_error():
    sd = _tiny().state_dict()
    sd["layers.0.mixer.x_proj_b.weight"] = torch.zeros(3, 32)
    with pytest.raises(ValueError, match="size mismatch"):
        _tiny().load_official(sd)
