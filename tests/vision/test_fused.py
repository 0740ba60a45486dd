"""Family "fused": towers on their own views, tokens concatenated along the channels (Prismatic's
DINOv2+SigLIP / DINOv2+CLIP), one official checkpoint per tower."""

import pytest
import torch
from PIL import Image

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry, preprocess
from vlmswap.vision.fused import FusedBackbone
from vlmswap.vision.registry import build_backbone

DINO_LIKE = {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "reg_tokens": 4,
             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SIGLIP_LIKE = {"patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 2, "class_token": False,
               "global_pool": "avg", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
TOWERS = [{"family": "vit", "arch": DINO_LIKE}, {"family": "vit", "arch": SIGLIP_LIKE}]


def _fused(geometry="64", seed=0):
    torch.manual_seed(seed)
    return build_backbone("fused", TOWERS, "block-2", Geometry.parse(geometry)).eval()


def _image(w=50, h=30):
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(data)


def test_every_tower_gets_its_own_letterbox_fill_and_normalization():
    fused, g = _fused(), Geometry.parse("64")
    image = _image()  # not square: the letterbox fill shows in the padding rows
    pixels = fused.pixels(image, g)
    assert pixels.shape == (6, 64, 64)
    torch.testing.assert_close(pixels[:3], preprocess(image, g, fused.towers[0].mean, fused.towers[0].std))
    torch.testing.assert_close(pixels[3:], preprocess(image, g, (0.5,) * 3, (0.5,) * 3))
    # the padding of each view is its own mean in 0..255 truncated, normalized: close to 0, not equal
    assert not torch.allclose(pixels[:3, 0], pixels[3:, 0])


def test_the_transform_is_plain_data_for_loader_workers():
    import pickle

    fused = _fused()
    transform = pickle.loads(pickle.dumps(fused.transform))  # no model inside
    assert transform.views == ((fused.towers[0].mean, fused.towers[0].std), ((0.5,) * 3, (0.5,) * 3))
    torch.testing.assert_close(transform(_image(), Geometry.parse("64")), fused.pixels(_image(), Geometry.parse("64")))


def test_tokens_are_the_towers_tokens_side_by_side():
    fused = _fused()
    pixels = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        tokens = fused(pixels)
        dino, siglip = fused.towers[0](pixels[:, :3]), fused.towers[1](pixels[:, 3:])
    assert fused.embed_dim == 32 + 48
    assert tokens.shape == (2, 64, 80) == (2, fused.num_tokens(64, 64), fused.embed_dim)
    torch.testing.assert_close(tokens[..., :32], dino)  # DINOv2 first, as Prismatic concatenates
    torch.testing.assert_close(tokens[..., 32:], siglip)


def test_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match="takes 6 input channels"):
        _fused()(torch.randn(1, 3, 64, 64))


def test_one_official_checkpoint_per_tower(tmp_path):
    source = _fused(seed=1)
    paths = []
    for i, tower in enumerate(source.towers):  # timm hub weights: plain state_dicts, with a head
        state = dict(tower.model.state_dict())
        state["head.weight"], state["head.bias"] = torch.zeros(10, tower.embed_dim), torch.zeros(10)
        torch.save(state, tmp_path / f"tower{i}.pth")
        paths.append(tmp_path / f"tower{i}.pth")
    target = _fused(seed=2)
    target.load_checkpoints([read_checkpoint(p) for p in paths])
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    with pytest.raises(ValueError, match="one checkpoint per tower, got 1"):
        target.load_checkpoints([read_checkpoint(paths[0])])
    with pytest.raises(ValueError, match="fused tower 1 .*does not match"):  # a DINO checkpoint for the SigLIP tower
        target.load_checkpoints([read_checkpoint(paths[0]), read_checkpoint(paths[0])])
    with pytest.raises(ValueError, match="load_checkpoints"):
        target.load_official(read_checkpoint(paths[0]))


def test_towers_must_share_one_grid():
    coarse = {**SIGLIP_LIKE, "patch_size": 16}
    fused = build_backbone("fused", [TOWERS[0], {"family": "vit", "arch": coarse}], "block-2", Geometry.parse("64"))
    with pytest.raises(ValueError, match=r"different token counts \[64, 16\]"):
        fused.num_tokens(64, 64)


@pytest.mark.parametrize("arch,match", [
    ("vit_large_patch14_reg4_dinov2", "list of towers"),
    ([{"family": "vit", "arch": DINO_LIKE}], "at least two towers"),
    ([{"family": "fused", "arch": TOWERS}, TOWERS[0]], "cannot contain another fused"),
])
def test_bad_fused_archs(arch, match):
    with pytest.raises(ValueError, match=match):
        build_backbone("fused", arch, "block-2", Geometry.parse("64"))


@pytest.mark.parametrize("members,size,tokens,dim", [
    (("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224.webli"), 224, 256, 1024 + 1152),
    (("vit_large_patch14_reg4_dinov2.lvd142m", "vit_large_patch14_clip_336.openai"), 336, 576, 1024 + 1024),
    (("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384.webli"), 384, 729, 1024 + 1152),
])
def test_paper_pairs_on_meta(members, size, tokens, dim):
    # prismatic_spec.md 2.2: dinosiglip-vit-so-224px / dinoclip-vit-l-336px / dinosiglip-vit-so-384px;
    # checkpoint_sources.csv: "256 tokens x 2176 dim", "576 tokens x 2048 dim", "729 tokens x 2176 dim"
    with torch.device("meta"):
        fused = build_backbone("fused", [{"family": "vit", "arch": m} for m in members], "block-2",
                               Geometry.parse(str(size)))
    assert isinstance(fused, FusedBackbone)
    assert (fused.num_tokens(size, size), fused.embed_dim) == (tokens, dim)
    assert fused.towers[0].mean == (0.485, 0.456, 0.406)
    assert fused.towers[1].mean == ((0.48145466, 0.4578275, 0.40821073) if "clip" in members[1] else (0.5,) * 3)
    with torch.no_grad():
        assert fused(torch.empty(1, 6, size, size, device="meta")).shape == (1, tokens, dim)
