"""Pretraining tiny members for every objective: they learn, and the file is the family's official
checkpoint layout for that objective, read back through the same loader as a download."""

import pickle

import pytest
import torch

from vlmswap.checkpoint import read_checkpoint
from vlmswap.image import Geometry
from vlmswap.vision.pretrain import PretrainSet, pretrain_backbone, pretrain_classifier
from vlmswap.vision.base import unwrap_checkpoint
from vlmswap.vision.registry import build_backbone

ARCHS = {
    "vit": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
    "vmamba": {"dims": 16, "depths": [1, 1, 1, 1], "ssm_ratio": 1.0},
    "maxvit": {"embed_dim": [16, 32, 32, 32], "depths": [1, 1, 1, 1], "stem_width": 16, "dim_head": 16},
    "mambavision": {"dim": 8, "in_dim": 8, "depths": [1, 1, 2, 1], "num_heads": [1, 1, 2, 2],
                    "window_size": [4, 4, 2, 1]},
    "vim": {"embed_dim": 16, "depth": 2, "patch_size": 8, "stride": 8, "d_state": 4},
    "vitdet": {"embed_dim": 16, "depth": 2, "num_heads": 2, "global_blocks": [1], "patch_size": 8,
               "window_size": 2, "img_size": 32, "pretrain_img_size": 32},
    "vit-adapter": {"embed_dim": 32, "depth": 2, "num_heads": 2, "deform_num_heads": 2, "pretrain_size": 32,
                    "interaction_indexes": [[0, 0], [1, 1]], "conv_inplane": 8, "n_points": 2, "deform_ratio": 0.5},
    "beit-adapter": {"embed_dim": 32, "depth": 2, "num_heads": 2, "deform_num_heads": 2, "img_size": 32,
                     "interaction_indexes": [[0, 0], [1, 1]], "conv_inplane": 8, "n_points": 2, "deform_ratio": 0.5},
    "timm": {"model": "convnext_atto", "depths": [1, 1, 1, 1], "dims": [16, 24, 32, 48]},
    "hf": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "image_size": 32, "patch_size": 8, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
TAPS = {"vit": "block-2", "vmamba": "stage3", "maxvit": "stage3", "mambavision": "stage3", "vim": "final-norm",
        "vitdet": "last-block", "vit-adapter": "adapter-stride32", "beit-adapter": "adapter-stride32"}


def _easy_task(n=192, size=32, seed=0):
    """Two classes: a red or a blue 8x8 square at a random place on noise, with its box and mask."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    corners = torch.randint(0, size - 8, (n, 2), generator=g).tolist()
    boxes = []
    for i, label in enumerate(labels.tolist()):
        r, c = corners[i]
        images[i, 2 * label, r:r + 8, c:c + 8] += 2.0
        masks[i, r:r + 8, c:c + 8] = label + 1
        boxes.append([(label, c, r, c + 8, r + 8)])
    return PretrainSet(images, labels, boxes, masks)


@pytest.mark.parametrize("family", ["vit", "vmamba"])
def test_pretrain_learns_and_writes_a_loadable_official_checkpoint(family, tmp_path):
    data = _easy_task()
    out = tmp_path / "ckpt" / "backbone.pth"
    lines = []
    summary = pretrain_classifier(family, ARCHS[family], data.images, data.labels, 2, out, epochs=4,
                                  batch_size=32, lr=2e-3, log=lines.append)
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
    data = _easy_task(n=64)
    runs = [pretrain_classifier("vit", ARCHS["vit"], data.images, data.labels, 2, tmp_path / f"{i}.pth", epochs=1,
                                log=lambda _: None) for i in range(2)]
    assert runs[0]["final_loss"] == runs[1]["final_loss"]
    a, b = (torch.load(tmp_path / f"{i}.pth") for i in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


# (family, kind, tap, the container's marker keys)
OBJECTIVES = [
    ("maxvit", "classification", "stage3", {"head.fc.weight"}),                            # timm hub weights
    ("mambavision", "classification", "stage3", {"state_dict", "state_dict_ema", "args"}),  # timm trainer .pth.tar
    ("vim", "classification", "final-norm", {"model", "model_ema", "args"}),                # vim/main.py
    ("vmamba", "detection", "stage3-outnorm", {"meta", "state_dict"}),                     # mmdet
    ("vmamba", "segmentation", "stage3-outnorm", {"meta", "state_dict"}),                  # mmseg
    ("vit", "segmentation", "block-2", {"meta", "state_dict"}),
    ("vitdet", "detection", "last-block", {"model", "__author__"}),                        # detectron2 .pkl
    ("vit-adapter", "segmentation", "adapter-stride32", {"meta", "state_dict"}),           # mmseg UperNet
    ("beit-adapter", "segmentation", "adapter-stride32", {"meta", "state_dict"}),
    ("timm", "classification", "index2", {"head.fc.weight", "head.norm.weight"}),               # timm hub weights
    ("timm", "segmentation", "index1", {"meta", "state_dict"}),
    ("hf", "classification", "layer-2", {"classifier.weight", "dinov2.embeddings.cls_token"}),  # model.safetensors
]


@pytest.mark.parametrize("family,kind,tap,markers", OBJECTIVES, ids=[f"{f}-{k}" for f, k, *_ in OBJECTIVES])
def test_every_family_and_objective_pretrains_into_its_official_layout(family, kind, tap, markers, tmp_path):
    data = _easy_task(n=64)
    out = tmp_path / f"{family}-{kind}.pth"
    lines = []
    summary = pretrain_backbone(family, ARCHS[family], tap, kind, data, 2, out, epochs=3, batch_size=16,
                                lr=2e-3, log=lines.append)
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in lines]
    assert len(losses) == 3 and losses[-1] < losses[0], lines  # it learns something
    assert 0.0 <= summary["score"] <= 1.0

    checkpoint = read_checkpoint(out)  # the same reader as for a downloaded file
    assert markers <= set(checkpoint)
    if summary["format"] == "safetensors":  # transformers' file format, whatever the file is named
        from safetensors import safe_open

        with safe_open(str(out), "pt") as f:
            assert set(f.keys()) == set(checkpoint)
    if summary["format"] == "pickle":  # detectron2: numpy arrays under backbone.net. and the heads
        with open(out, "rb") as f:
            raw = pickle.load(f)
        assert any(k.startswith("backbone.net.") for k in raw["model"])
        assert any(k.startswith("roi_heads.box_predictor.") for k in raw["model"])
    if kind == "segmentation":
        assert checkpoint["state_dict"]["decode_head.conv_seg.weight"].shape[0] == 3  # background + 2
    if kind == "detection" and family != "vitdet":
        assert "roi_head.bbox_head.cls_score.weight" in checkpoint["state_dict"]

    fresh = build_backbone(family, ARCHS[family], tap, Geometry.parse("32")).eval()
    before = fresh(data.images[:2]).detach()
    fresh.load_official(checkpoint)  # strict on the backbone keys
    after = fresh(data.images[:2]).detach()
    assert after.shape == before.shape and not torch.allclose(after, before)
    # every backbone tensor is the trained one from the file
    saved, _ = unwrap_checkpoint(checkpoint)
    saved = fresh.adapt_state_dict({k: v for k, v in saved.items() if not fresh.non_backbone_key(k)})
    loaded = {k: v for k, v in fresh.official_module().state_dict().items() if not fresh.non_backbone_key(k)}
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], torch.as_tensor(saved[k])) for k in loaded)


def test_dense_vmamba_files_have_the_backbone_vssm_layout(tmp_path):
    # mmdet/mmseg Backbone_VSSM: no classifier, outnorm0..3 (backbones.md 1.3/1.5)
    out = tmp_path / "seg.pth"
    pretrain_backbone("vmamba", ARCHS["vmamba"], "stage3-outnorm", "segmentation", _easy_task(n=8), 2, out,
                      epochs=1, log=lambda _: None)
    keys = read_checkpoint(out)["state_dict"].keys()
    assert not any(k.startswith("backbone.classifier.") for k in keys)
    assert {f"backbone.outnorm{i}.weight" for i in range(4)} <= set(keys)


def test_a_vmamba_classification_file_never_carries_an_outnorm(tmp_path):
    # even when a cell reads it at the outnorm tap: loading it there must then fail, not use a random norm
    out = tmp_path / "cls.pth"
    pretrain_backbone("vmamba", ARCHS["vmamba"], "stage3-outnorm", "classification", _easy_task(n=8), 2, out,
                      epochs=1, log=lambda _: None)
    checkpoint = read_checkpoint(out)
    assert not any(k.startswith("outnorm") for k in checkpoint["model"])
    with pytest.raises(ValueError, match="missing key.*outnorm2"):
        build_backbone("vmamba", ARCHS["vmamba"], "stage3-outnorm", Geometry.parse("32")).load_official(checkpoint)


def test_a_family_without_an_official_classifier_says_what_to_do(tmp_path):
    data = _easy_task(n=4)
    with pytest.raises(ValueError, match="no official classification layout .pretrain it for detection"):
        pretrain_backbone("vitdet", ARCHS["vitdet"], "last-block", "classification", data, 2, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="pretrain it for detection or segmentation"):  # no classifier network
        pretrain_backbone("vit-adapter", ARCHS["vit-adapter"], "adapter-stride32", "classification", data, 2,
                          tmp_path / "x.pth")
    lines = []
    with pytest.raises(ValueError, match="no official segmentation layout"):  # before any training
        pretrain_backbone("vitdet", ARCHS["vitdet"], "last-block", "segmentation", data, 2, tmp_path / "x.pth",
                          log=lines.append)
    assert lines == []
    assert not (tmp_path / "x.pth").exists()


def test_bad_inputs_are_named(tmp_path):
    data = _easy_task(n=4)
    with pytest.raises(ValueError, match="unknown pretraining objective kind 'ssl'"):
        pretrain_backbone("vit", ARCHS["vit"], "block-2", "ssl", data, 2, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="one .H, W. mask per image"):
        pretrain_backbone("vit", ARCHS["vit"], "block-2", "segmentation", PretrainSet(data.images, data.labels),
                          2, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="unknown backbone family 'resnet'"):
        pretrain_classifier("resnet", {}, data.images, data.labels, 2, tmp_path / "x.pth")
