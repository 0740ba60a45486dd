"""Pretraining tiny members: they learn, and the file is the family's official checkpoint layout."""

import pytest
import torch

from vlmswap.image import Geometry
from vlmswap.vision.pretrain import pretrain_classifier
from vlmswap.vision.registry import build_backbone

ARCHS = {
    "vit": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
    "vmamba": {"dims": 16, "depths": [1, 1, 1, 1], "ssm_ratio": 1.0},
}
TAPS = {"vit": "block-2", "vmamba": "stage3"}


def _easy_task(n=192, size=32, seed=0):
    """Two classes: a red or a blue square at a random place on noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    corners = torch.randint(0, size - 8, (n, 2), generator=g).tolist()
    for i, label in enumerate(labels.tolist()):
        r, c = corners[i]
        images[i, 2 * label, r:r + 8, c:c + 8] += 2.0
    return images, labels


@pytest.mark.parametrize("family", ["vit", "vmamba"])
def test_pretrain_learns_and_writes_a_loadable_official_checkpoint(family, tmp_path):
    images, labels = _easy_task()
    out = tmp_path / "ckpt" / "backbone.pth"
    lines = []
    summary = pretrain_classifier(family, ARCHS[family], images, labels, 2, out, epochs=4, batch_size=32,
                                  lr=2e-3, log=lines.append)
    assert summary["train_accuracy"] > 0.9
    assert summary["seconds"] > 0
    assert len(lines) == 4 and "loss" in lines[-1] and "accuracy" in lines[-1]
    assert [p.name for p in out.parent.iterdir()] == ["backbone.pth"]  # no temporary file left behind

    checkpoint = torch.load(out, weights_only=False)
    if family == "vit":
        assert all(isinstance(v, torch.Tensor) for v in checkpoint.values())  # plain timm state_dict
        assert checkpoint["head.weight"].shape == (2, 32)
    else:
        assert {"model", "model_ema", "optimizer", "epoch", "max_accuracy", "config"} <= set(checkpoint)
        assert checkpoint["model"]["classifier.head.weight"].shape == (2, 128)
        assert not isinstance(checkpoint["config"], (dict, torch.Tensor))
        assert checkpoint["epoch"] == 3

    backbone = build_backbone(family, ARCHS[family], TAPS[family], Geometry.parse("32"))
    backbone.load_official(checkpoint)
    state = checkpoint if family == "vit" else checkpoint["model"]
    loaded = backbone.official_module().state_dict()
    key = "blocks.0.attn.qkv.weight" if family == "vit" else "layers.0.blocks.0.op.x_proj_weight"
    assert torch.equal(loaded[key], state[key])


def test_pretrain_is_reproducible_with_a_seed(tmp_path):
    images, labels = _easy_task(n=64)
    runs = [pretrain_classifier("vit", ARCHS["vit"], images, labels, 2, tmp_path / f"{i}.pth", epochs=1,
                                log=lambda _: None) for i in range(2)]
    assert runs[0]["final_loss"] == runs[1]["final_loss"]
    a, b = (torch.load(tmp_path / f"{i}.pth") for i in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_rejects_other_families(tmp_path):
    images, labels = _easy_task(n=4)
    with pytest.raises(ValueError, match="'vit' and 'vmamba'"):
        pretrain_classifier("vim", {}, images, labels, 2, tmp_path / "x.pth")
