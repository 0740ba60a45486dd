"""Appendix B stage ablation: stages 2, 3 and 4 of the hierarchical families (VMamba, MaxViT,
MambaVision) give 784 / 196 / 49 tokens at 224 (strides 8 / 16 / 32), from a real forward of a
tiny member and from `num_tokens` of the paper's IN1K archs (built on the meta device)."""

import pytest
import torch

from vlmswap.image import Geometry
from vlmswap.vision.registry import build_backbone

TOKENS_AT_224 = {"stage2": 784, "stage3": 196, "stage4": 49}
TINY = {
    "vmamba": {"dims": 8, "depths": [1, 1, 1, 1], "ssm_ratio": 1.0},
    "maxvit": {"embed_dim": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "stem_width": 8, "dim_head": 8},
    "mambavision": {"dim": 8, "in_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                    "window_size": [7, 7, 7, 7]},
}
PAPER = {"vmamba": "vmamba-t", "maxvit": "maxvit_tiny_tf_224.in1k", "mambavision": "mamba_vision_T"}
CHANNELS = {"vmamba": [8, 16, 32, 64], "maxvit": [8, 16, 16, 16], "mambavision": [8, 16, 32, 64]}


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("tap", sorted(TOKENS_AT_224))
def test_each_stage_gives_the_token_count_of_its_stride(family, tap):
    g = Geometry.parse("224")
    torch.manual_seed(0)
    backbone = build_backbone(family, TINY[family], tap, g).eval()
    with torch.inference_mode():
        tokens = backbone(torch.randn(1, 3, 224, 224))
    stage = int(tap[-1])
    assert tokens.shape == (1, TOKENS_AT_224[tap], CHANNELS[family][stage - 1])
    assert backbone.num_tokens(224, 224) == TOKENS_AT_224[tap] and backbone.embed_dim == tokens.shape[-1]


@pytest.mark.parametrize("family", sorted(PAPER))
def test_the_paper_archs_give_784_196_49_at_224(family):
    g = Geometry.parse("224")
    with torch.device("meta"):
        counts = {tap: build_backbone(family, PAPER[family], tap, g).num_tokens(224, 224) for tap in TOKENS_AT_224}
    assert counts == TOKENS_AT_224


def test_stage3_is_unchanged_by_the_new_taps():
    # the stage-3 tokens of a backbone built at stage2/4 come from the same weights: tap selection only
    g = Geometry.parse("64")
    torch.manual_seed(0)
    at3 = build_backbone("vmamba", TINY["vmamba"], "stage3", g).eval()
    at4 = build_backbone("vmamba", TINY["vmamba"], "stage4", g).eval()
    at4.load_state_dict(at3.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(at3(x), at4.stage3(x).flatten(2).transpose(1, 2))
        assert at4(x).shape[1] == 4  # 64 / 32 squared
