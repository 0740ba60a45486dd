"""Downloads (file:// URLs, mirrors, sha256, offline) and weights-only reading of official checkpoints
(the malicious corpus is in test_hub_unsafe.py)."""

import hashlib
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from vlmswap.checkpoint import UnsafeCheckpointError, read_checkpoint
from vlmswap.hub import FetchError, fetch


def _file(tmp_path, name="w.pth", data=b"weights" * 100):
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_file_url_with_matching_sha256(tmp_path):
    src, digest = _file(tmp_path)
    record = fetch({"url": src.as_uri(), "sha256": digest}, tmp_path / "out" / "w.ckpt", log=lambda m: None)
    assert (tmp_path / "out" / "w.ckpt").read_bytes() == src.read_bytes()
    assert record.sha256 == digest and record.bytes == 700
    assert (tmp_path / "out" / "w.ckpt.source.json").exists()


def test_sha256_mismatch_keeps_the_file_aside_and_says_how_to_fix(tmp_path):
    src, _ = _file(tmp_path)
    dest = tmp_path / "out" / "w.ckpt"
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch({"url": src.as_uri(), "sha256": "0" * 64}, dest, log=lambda m: None)
    assert not dest.exists() and dest.with_name("w.ckpt.bad-sha256").exists()


def test_a_fetched_file_survives_a_failed_refetch(tmp_path):
    # the old file stays until its replacement is complete and verified: a wrong sha256, a missing
    # local source and an interrupted download all leave it (and the cells trained on it) untouched
    dest = tmp_path / "out" / "w.ckpt"
    good, digest = _file(tmp_path, "good.pth", b"good weights")
    fetch({"url": good.as_uri(), "sha256": digest}, dest, log=lambda m: None)
    other, _ = _file(tmp_path, "other.pth", b"other weights")
    with pytest.raises(FetchError, match=r"sha256 mismatch.*w\.ckpt was left as it was"):
        fetch({"url": other.as_uri(), "sha256": digest}, dest, log=lambda m: None)
    assert dest.read_bytes() == b"good weights"
    assert dest.with_name("w.ckpt.bad-sha256").read_bytes() == b"other weights"
    with pytest.raises(FetchError, match="does not exist"):
        fetch({"path": str(tmp_path / "missing.pth")}, dest, log=lambda m: None)
    assert dest.read_bytes() == b"good weights"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.ckpt", "w.ckpt.bad-sha256", "w.ckpt.source.json"]


def test_mirror_is_used_first_for_url_hub_and_timm(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "url" / "example.org" / "releases").mkdir(parents=True)
    (mirror / "url" / "example.org" / "releases" / "v #1.pth").write_bytes(b"from-mirror")
    (mirror / "hub" / "org" / "repo").mkdir(parents=True)
    (mirror / "hub" / "org" / "repo" / "m.pth").write_bytes(b"hub-file")
    (mirror / "timm" / "vit_tiny_patch16_224.augreg_in21k").mkdir(parents=True)
    (mirror / "timm" / "vit_tiny_patch16_224.augreg_in21k" / "model.safetensors").write_bytes(b"timm-file")
    quiet = dict(mirror=mirror, offline=True, log=lambda m: None)
    fetch({"url": "https://example.org/releases/v%20%231.pth"}, tmp_path / "a", **quiet)
    fetch({"hub": "org/repo", "file": "m.pth"}, tmp_path / "b", **quiet)
    fetch({"timm": "vit_tiny_patch16_224.augreg_in21k"}, tmp_path / "c", **quiet)
    assert [(tmp_path / n).read_bytes() for n in "abc"] == [b"from-mirror", b"hub-file", b"timm-file"]


def test_hub_snapshot_folder_from_mirror(tmp_path):
    snap = tmp_path / "mirror" / "hub" / "lmsys" / "vicuna-7b-v1.5"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    fetch({"hub": "lmsys/vicuna-7b-v1.5"}, tmp_path / "llm", mirror=tmp_path / "mirror", offline=True,
          log=lambda m: None)
    assert (tmp_path / "llm" / "config.json").read_text() == "{}"


def test_offline_without_mirror_copy_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="offline"):
        fetch({"url": "https://example.org/x.pth"}, tmp_path / "x", offline=True, log=lambda m: None)
    with pytest.raises(FetchError, match="does not exist"):
        fetch({"path": str(tmp_path / "missing.pth")}, tmp_path / "y", log=lambda m: None)


def _fake_module(name, cls_name, base=object, init=None):
    """A class pickled under the module name of a package the reader does not have (yacs, mmengine)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls = type(cls_name, (base,), {"__module__": name, **({"__init__": init} if init else {})})
    cls.__qualname__ = cls_name
    setattr(sys.modules[name], cls_name, cls)
    return cls, [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def test_a_yacs_config_is_read_without_yacs(tmp_path):
    # yacs' CfgNode is a dict subclass keeping flags in its __dict__ (VMamba's classification files)
    def init(self, *args, **kwargs):
        dict.__init__(self, *args, **kwargs)
        self.__dict__["__immutable__"] = False

    CfgNode, modules = _fake_module("yacs.config", "CfgNode", dict, init)
    path = tmp_path / "ckpt.pth"
    try:
        cfg = CfgNode(MODEL=CfgNode(NAME="vssm"))
        torch.save({"model": {"w": torch.ones(2, 2)}, "config": cfg, "epoch": 3}, path)
    finally:
        for name in modules:
            del sys.modules[name]
    obj = read_checkpoint(path)
    assert torch.equal(obj["model"]["w"], torch.ones(2, 2)) and obj["epoch"] == 3
    assert obj["config"]["MODEL"]["NAME"] == "vssm"
    assert type(obj["config"]).__module__ == "collections"  # an OrderedDict, nothing of the file's own


def test_the_containers_of_official_files_are_read(tmp_path):
    import argparse

    HistoryBuffer, modules = _fake_module("mmengine.logging.history_buffer", "HistoryBuffer")
    buffer = HistoryBuffer()
    buffer.__dict__.update(_log_history=np.arange(3.0), max_length=10)
    path = tmp_path / "mmseg.pth"
    try:
        torch.save({"state_dict": {"backbone.w": torch.ones(1)}, "args": argparse.Namespace(lr=0.1),
                    "meta": {"message_hub": {"log_scalars": {"loss": buffer}}, "best": np.float64(0.5),
                             "classes": ("a", "b"), "palette": [[0, 0, 0]], "seen": {1, 2}}}, path)
    finally:
        for name in modules:
            del sys.modules[name]
    obj = read_checkpoint(path)
    assert obj["args"].lr == 0.1 and obj["meta"]["best"] == 0.5 and obj["meta"]["seen"] == {1, 2}
    assert obj["meta"]["message_hub"]["log_scalars"]["loss"]._log_history.tolist() == [0.0, 1.0, 2.0]


def test_an_unknown_class_is_refused_by_name(tmp_path):
    Foreign, modules = _fake_module("somepkg.things", "Foreign")
    path = tmp_path / "ckpt.pth"
    try:
        torch.save({"model": {"w": torch.ones(2)}, "x": Foreign()}, path)
    finally:
        for name in modules:
            del sys.modules[name]
    with pytest.raises(UnsafeCheckpointError, match=r"ckpt\.pth: refused.*somepkg\.things\.Foreign"):
        read_checkpoint(path)


def test_safetensors_and_unreadable_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.arange(3.0)}, str(tmp_path / "m.safetensors"))
    assert torch.equal(read_checkpoint(tmp_path / "m.safetensors")["a"], torch.arange(3.0))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="fetch step"):
        read_checkpoint(tmp_path / "none.pth")


def test_dataset_files_are_fetched_and_unpacked(tmp_path):
    import zipfile

    from vlmswap.dataset_files import fetch_files

    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "Annotations.zip", "w") as z:
        z.writestr("Annotations/val.json", "[]")
    (src / "questions.json").write_text("{}")
    records = fetch_files([{"url": (src / "Annotations.zip").as_uri(), "extract": True},
                           {"url": (src / "questions.json").as_uri(), "name": "q.json"}], tmp_path / "data",
                          log=lambda m: None)
    assert (tmp_path / "data" / "Annotations" / "val.json").read_text() == "[]"
    assert not (tmp_path / "data" / "Annotations.zip").exists()  # unpacked, then removed
    assert (tmp_path / "data" / "q.json").read_text() == "{}" and records[0]["extracted"] == 1


def test_an_archive_escaping_its_folder_is_refused(tmp_path):
    import zipfile

    from vlmswap.dataset_files import fetch_files

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../escaped.txt", "x")
    with pytest.raises(FetchError, match="outside"):
        fetch_files([{"url": (tmp_path / "evil.zip").as_uri(), "extract": True}], tmp_path / "data",
                    log=lambda m: None)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_files_can_land_in_a_subfolder(tmp_path):
    import zipfile

    from vlmswap.dataset_files import fetch_files

    with zipfile.ZipFile(tmp_path / "train2017.zip", "w") as z:
        z.writestr("train2017/000000000009.jpg", b"jpg")
    fetch_files([{"url": (tmp_path / "train2017.zip").as_uri(), "into": "coco", "extract": True}],
                tmp_path / "llava", log=lambda m: None)
    assert (tmp_path / "llava" / "coco" / "train2017" / "000000000009.jpg").read_bytes() == b"jpg"


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_plain_pickle_reads_whatever_its_suffix(tmp_path, protocol):
    # a detectron2-style pickle of numpy arrays named .pth (a mini ViTDet), any protocol
    path = tmp_path / "model.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "x"}, f,
                    protocol=protocol)
    loaded = read_checkpoint(path)
    assert loaded["__author__"] == "x" and loaded["model"]["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_torch_legacy_serialization_still_reads(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"x": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(path)["x"], torch.ones(2))


def test_a_pickled_array_is_returned_not_compared_to_the_torch_magic(tmp_path):
    path = tmp_path / "array.pkl"
    with open(path, "wb") as f:
        pickle.dump(np.ones(3), f, protocol=2)
    assert read_checkpoint(path).tolist() == [1.0, 1.0, 1.0]
