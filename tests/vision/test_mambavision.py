"""MambaVision: official key layout, the mixer's scan, windows with padding, the stage-3 tap, loading."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from vlmswap.image import Geometry
from vlmswap.vision.mambavision import (ARCHS, MambaVision, MambaVisionMixer, attention_blocks, build,
                                        window_partition, window_reverse)

# level 2: blocks 0, 1 Mamba, block 2 attention; level 3: block 0 Mamba, block 1 attention
TINY = {"dim": 8, "in_dim": 8, "depths": [1, 1, 3, 2], "num_heads": [1, 1, 2, 2], "window_size": [4, 4, 4, 2]}


def _tiny(seed=0, **extra):
    torch.manual_seed(seed)
    model = MambaVision({**TINY, **extra})
    with torch.no_grad():  # non-trivial BN statistics and biases (the init zeroes them)
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point and not name.endswith("A_log"):
                tensor.add_(0.1 * torch.randn_like(tensor))
                if name.endswith("running_var"):
                    tensor.abs_()
    return model.eval()


def _on_meta(arch):
    with torch.device("meta"):
        return MambaVision(arch)


# --- layout against reference/backbones.md section 2 --------------------------------------------

def test_mamba_vision_t_matches_the_official_state_dict():
    sd = MambaVision("mamba_vision_T").state_dict()
    assert len(sd) == 252                                         # backbones.md 2.4
    assert round(sum(v.numel() for k, v in sd.items() if "running" not in k and "batches" not in k) / 1e6, 1) == 31.8
    expected = {
        "patch_embed.conv_down.0.weight": (32, 3, 3, 3), "patch_embed.conv_down.1.running_var": (32,),
        "patch_embed.conv_down.3.weight": (80, 32, 3, 3), "patch_embed.conv_down.4.bias": (80,),
        "levels.0.blocks.0.conv1.weight": (80, 80, 3, 3), "levels.0.blocks.0.conv1.bias": (80,),
        "levels.1.blocks.2.norm2.running_mean": (160,), "levels.0.downsample.reduction.0.weight": (160, 80, 3, 3),
        "levels.2.blocks.0.mixer.A_log": (160, 8), "levels.2.blocks.0.mixer.D": (160,),
        "levels.2.blocks.0.mixer.in_proj.weight": (320, 320), "levels.2.blocks.0.mixer.x_proj.weight": (36, 160),
        "levels.2.blocks.0.mixer.dt_proj.weight": (160, 20), "levels.2.blocks.0.mixer.dt_proj.bias": (160,),
        "levels.2.blocks.0.mixer.out_proj.weight": (320, 320), "levels.2.blocks.0.mixer.conv1d_x.weight": (160, 1, 3),
        "levels.2.blocks.0.mixer.conv1d_z.weight": (160, 1, 3), "levels.2.blocks.4.mixer.qkv.weight": (960, 320),
        "levels.2.blocks.4.mixer.qkv.bias": (960,), "levels.2.blocks.7.mixer.proj.bias": (320,),
        "levels.2.blocks.3.mlp.fc1.weight": (1280, 320), "levels.2.blocks.3.mlp.fc2.bias": (320,),
        "levels.2.downsample.reduction.0.weight": (640, 320, 3, 3), "levels.3.blocks.3.norm1.weight": (640,),
        "norm.running_var": (640,), "head.weight": (1000, 640), "head.bias": (1000,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not any(k.startswith("levels.3.downsample") or "gamma" in k or "conv1d_x.bias" in k for k in sd)
    mamba = {k.removeprefix("levels.2.blocks.0.") for k in sd if k.startswith("levels.2.blocks.0.")}
    attn = {k.removeprefix("levels.2.blocks.4.") for k in sd if k.startswith("levels.2.blocks.4.")}
    shared = {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
              "mlp.fc2.weight", "mlp.fc2.bias"}
    assert mamba == shared | {f"mixer.{n}" for n in ("A_log", "D", "in_proj.weight", "x_proj.weight",
                                                     "dt_proj.weight", "dt_proj.bias", "out_proj.weight",
                                                     "conv1d_x.weight", "conv1d_z.weight")}
    assert attn == shared | {"mixer.qkv.weight", "mixer.qkv.bias", "mixer.proj.weight", "mixer.proj.bias"}


@pytest.mark.parametrize("arch,params_m,channels", [
    ("mamba_vision_T", 31.8, 320), ("mamba_vision_T2", 35.1, 320), ("mamba_vision_S", 50.1, 384),
    ("mamba_vision_B", 97.7, 512), ("mamba_vision_L", 228.0, 784), ("mamba_vision_L2", 241.6, 784),
    ("mamba_vision_L3_256_21k", 739.6, 1024)])
def test_parameter_counts_and_stage3_channels(arch, params_m, channels):
    # README / backbones.md 2.2 (it prints 227.9 and 241.5 for L and L2: 227.96 and 241.55 truncated);
    # channels: checkpoint_sources.csv
    model = _on_meta(arch)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == params_m
    assert model.embed_dim == channels


def test_layer_scale_only_for_b_and_larger():
    assert "levels.2.blocks.0.gamma_1" in _on_meta("mamba_vision_B").state_dict()
    assert "levels.2.blocks.0.gamma_2" in _on_meta("mamba_vision_L3_512_21k").state_dict()
    assert "levels.2.blocks.0.gamma_1" not in _on_meta("mamba_vision_S").state_dict()


@pytest.mark.parametrize("depth,attention", [(8, [4, 5, 6, 7]), (4, [2, 3]), (11, [6, 7, 8, 9, 10]),
                                             (7, [4, 5, 6]), (10, [5, 6, 7, 8, 9]), (12, list(range(6, 12))),
                                             (5, [3, 4])])
def test_the_last_half_of_each_mixer_level_is_attention(depth, attention):
    assert list(attention_blocks(depth)) == attention   # backbones.md 2.1, measured on the official model


def test_l2_and_l3_high_resolution_windows():
    assert [lvl.window for lvl in _on_meta("mamba_vision_L2_512_21k").levels] == [8, 8, 32, 16]
    assert [lvl.window for lvl in _on_meta("mamba_vision_L3_256_21k").levels] == [8, 8, 16, 8]
    assert ARCHS["mamba_vision_B_21k"] == ARCHS["mamba_vision_B"]


# --- the mixer's scan ------------------------------------------------------------------------------

def _mixer_by_hand(mixer, hidden):
    """MambaVisionMixer written out step by step, with a sequential loop over positions."""
    half, n, r = mixer.half, mixer.d_state, mixer.dt_rank
    xz = hidden @ mixer.in_proj.weight.T                        # (B, L, dim)
    x, z = xz[..., :half], xz[..., half:]

    def same_conv(seq, weight):                                  # depthwise, kernel 3, padding 1 both sides
        padded = F.pad(seq.transpose(1, 2), (1, 1))
        return sum(padded[..., k:k + seq.shape[1]] * weight[:, 0, k, None] for k in range(3)).transpose(1, 2)

    x = F.silu(same_conv(x, mixer.conv1d_x.weight))
    z = F.silu(same_conv(z, mixer.conv1d_z.weight))
    x_dbl = x @ mixer.x_proj.weight.T
    dt, B, C = x_dbl[..., :r], x_dbl[..., r:r + n], x_dbl[..., r + n:]
    delta = F.softplus(dt @ mixer.dt_proj.weight.T + 2 * mixer.dt_proj.bias)   # the bias counts twice
    A = -torch.exp(mixer.A_log)                                  # (half, N)
    h = torch.zeros(hidden.shape[0], half, n)
    ys = []
    for t in range(hidden.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + mixer.D * x[:, t])
    y = torch.stack(ys, dim=1)                                   # (B, L, half)
    return torch.cat([y, z], dim=-1) @ mixer.out_proj.weight.T


@pytest.mark.parametrize("length", [1, 7, 64, 100])
def test_mixer_scan_equals_the_sequential_recurrence(length):
    torch.manual_seed(0)
    mixer = MambaVisionMixer(48)
    with torch.no_grad():
        mixer.dt_proj.bias.normal_(-2.0, 0.5)
        mixer.A_log.add_(0.3 * torch.randn_like(mixer.A_log))
        mixer.D.normal_()
        hidden = torch.randn(2, length, 48)
        torch.testing.assert_close(mixer(hidden), _mixer_by_hand(mixer, hidden), atol=1e-5, rtol=1e-4)


def test_mixer_conv_is_not_causal():
    torch.manual_seed(0)
    mixer = MambaVisionMixer(16)
    hidden = torch.randn(1, 10, 16)
    changed = hidden.clone()
    changed[0, 5] += 1.0
    with torch.no_grad():
        delta = (mixer(changed) - mixer(hidden)).abs().sum(-1)[0]
    assert delta[4] > 0          # position 4 sees position 5 through the "same" padded kernel
    assert delta[:4].max() == 0  # but not further back: the scan itself runs forward only


# --- windows ---------------------------------------------------------------------------------------

def test_window_partition_order_and_inverse():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    windows = window_partition(x, 2)                   # (2 * 2 * 3, 4, 3)
    assert windows.shape == (12, 4, 3)
    # window 1 of image 0 is rows 0..1, cols 2..3, positions in raster order, channels last
    torch.testing.assert_close(windows[1, :, 0], x[0, 0, 0:2, 2:4].reshape(-1))
    torch.testing.assert_close(windows[6 + 4, :, 2], x[1, 2, 2:4, 2:4].reshape(-1))
    torch.testing.assert_close(window_reverse(windows, 2, 4, 6), x)


def test_level_pads_with_unmasked_zeros_and_crops():
    model = _tiny()
    level = model.levels[2]                              # window 4, one window for a 3x3 map
    x = torch.randn(2, 32, 3, 3)
    with torch.no_grad():
        out = level.forward_blocks(x)
        seq = F.pad(x, (0, 1, 0, 1)).flatten(2).transpose(1, 2)     # the padded 4x4 window, raster order
        for block in level.blocks:
            seq = block(seq)
        expected = seq.transpose(1, 2).reshape(2, 32, 4, 4)[:, :, :3, :3]
    torch.testing.assert_close(out, expected)


# --- the stage-3 tap -------------------------------------------------------------------------------

def test_num_tokens_at_the_papers_sizes():
    model = _on_meta("mamba_vision_T")
    assert (model.num_tokens(224, 224), model.num_tokens(512, 512), model.num_tokens(256, 256)) == (196, 1024, 256)
    assert model.num_tokens(1333, 800) == 84 * 50


@pytest.mark.parametrize("width,height", [(64, 64), (96, 64), (50, 70), (33, 100)])
def test_forward_shape_matches_num_tokens(width, height):
    model = _tiny()
    with torch.no_grad():
        tokens = model(torch.randn(2, 3, height, width))
    assert tokens.shape == (2, model.num_tokens(width, height), 32)


def test_tokens_are_levels_2_before_its_downsample_in_row_major_order():
    model = _tiny()
    x = torch.randn(1, 3, 96, 64)
    grabbed = {}
    model.levels[2].downsample.register_forward_hook(lambda mod, inp, out: grabbed.update(x=inp[0]))
    with torch.no_grad():
        tokens = model(x)
        model.classify(x)                                 # runs levels[2] including its downsample
    grid = grabbed["x"]
    assert grid.shape == (1, 32, 6, 4)
    torch.testing.assert_close(tokens, grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(tokens[0, 4 * 4 + 1], grid[0, :, 4, 1])


def test_mamba_vision_t_forward_at_224():
    model = build("mamba_vision_T", "stage3", Geometry.parse("224")).eval()
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 196, 320)


def test_unknown_arch_and_tap():
    with pytest.raises(ValueError, match="mamba_vision_T"):
        build("mamba_vision_XXL", "stage3", Geometry.parse("224"))
    with pytest.raises(ValueError, match="window_size"):
        build({"dim": 8, "in_dim": 8, "depths": [1, 1, 1, 1]}, "stage3", Geometry.parse("64"))
    with pytest.raises(ValueError, match="stage3"):
        build(TINY, "stage5", Geometry.parse("64"))


# --- strict loading of the official .pth.tar container ---------------------------------------------

def _official_file(tmp_path, model, **extra_state):
    """The timm-trainer checkpoint layout of the released files (backbones.md 2.4)."""
    state = {**model.state_dict(), **extra_state}
    checkpoint = {"epoch": 310, "arch": "mamba_vision_t", "state_dict": state,
                  "state_dict_ema": {k: torch.zeros_like(v) for k, v in state.items()},
                  "optimizer": {}, "version": 2, "args": argparse.Namespace(model="mamba_vision_T"), "metric": 82.3}
    path = tmp_path / "mambavision_tiny_1k.pth.tar"
    torch.save(checkpoint, path)
    return path


def _same_tokens(a, b):
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_loads_the_official_container_from_state_dict_not_ema(tmp_path):
    source = _tiny(seed=1, num_classes=21)                # any head: head.* and norm.* are not backbone
    path = _official_file(tmp_path, source)
    target = _tiny(seed=2)
    target.load_official(torch.load(path, weights_only=False))   # args is an argparse.Namespace
    _same_tokens(source, target)


def test_loads_without_batchnorm_counters_and_with_a_module_prefix():
    source, target = _tiny(seed=1), _tiny(seed=2)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target.load_official({"state_dict": state})
    _same_tokens(source, target)


def test_missing_and_unexpected_keys_name_the_container(tmp_path):
    source = _tiny(seed=1)
    path = _official_file(tmp_path, source, **{"levels.4.blocks.0.conv1.weight": torch.zeros(1)})
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["state_dict"]["levels.3.blocks.1.mixer.qkv.bias"]   # after the tap, still required
    with pytest.raises(ValueError) as error:
        _tiny(seed=2).load_official(checkpoint)
    message = str(error.value)
    assert "weights under 'state_dict'" in message
    assert "1 missing key(s): levels.3.blocks.1.mixer.qkv.bias" in message
    assert "1 unexpected key(s): levels.4.blocks.0.conv1.weight" in message


def test_shape_mismatch_is_a_value_error():
    state = _tiny().state_dict()
    state["levels.2.blocks.0.mixer.A_log"] = torch.zeros(16, 16)
    with pytest.raises(ValueError, match="size mismatch"):
        _tiny().load_official(state)
