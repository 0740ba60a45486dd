"""Checkpoint reading that never runs code from the file.

Official checkpoints pickle more than tensors: VMamba's classification files carry a yacs
config, timm-trainer files an argparse Namespace, mmengine files HistoryBuffers, detectron2 files
are plain pickles of numpy arrays. `read_checkpoint` reads all of them without importing those
packages and without running code from the file: torch's weights-only unpickler and its rules, an
explicit allow-list for the rest (`safe_globals`), and anything else refused by name. Fetching
the files is vlmswap.hub.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any, Callable

from vlmswap.provenance import file_sha256 as sha256_file  # one file digest for the project

__all__ = ["CheckpointError", "UnsafeCheckpointError", "read_checkpoint", "safe_globals"]

#
# Every downloaded or mirrored checkpoint is untrusted: a pickle can call any global it names.
# Torch files are read by torch.load(weights_only=True), whose unpickler resolves a global only by
# its exact name in an allow-list and checks every REDUCE/NEWOBJ/BUILD target against it. To it we
# add the short list below: what the official layouts hold besides tensors (backbones.md 1.5, 2.4,
# 4.3, 5.1, 5.2). Plain pickles (detectron2's `.pkl`) written by Python 3 with its default protocol
# use opcodes torch's unpickler does not implement (protocol 3+: raw bytes of numpy arrays, frames,
# dotted names), so they go through `_WeightsOnlyUnpickler`: Python's own unpickler with torch's
# rules (the same allow-list, exact names, checked call and build targets, no persistent ids)
# applied to every opcode.


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupted, refused); the message names it."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that names a global outside the allow-list; it was not unpickled further."""


class _ConfigNode:
    """Stands in for yacs' `CfgNode` (VMamba's classification files carry the training config as
    one). A CfgNode is a dict subclass pickled as NEWOBJ + SETITEMS + BUILD of its flags; building
    it as an OrderedDict keeps the entries (and the flags as attributes) without importing yacs, and
    OrderedDict is a type torch's unpickler already lets SETITEMS and BUILD touch."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        import collections

        return collections.OrderedDict()


class _InertRecord:
    """Stands in for a plain record class of a training framework (mmengine's HistoryBuffer in a
    checkpoint's `meta.message_hub`): its state lands in `__dict__`, it has no behaviour."""


def safe_globals() -> list[Any]:
    """What official checkpoints need besides torch's own allow-list, by exact pickled name."""
    import argparse
    import types

    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    entries: list[Any] = [numpy.ndarray, numpy.dtype, argparse.Namespace, types.SimpleNamespace]
    # arrays are pickled as _reconstruct + BUILD (protocol <= 4) or _frombuffer (5); scalars as
    # scalar(dtype, bytes). numpy 1.x wrote `numpy.core.*`, numpy 2 writes `numpy._core.*`.
    for package in ("numpy.core", "numpy._core"):
        entries += [(core.multiarray._reconstruct, f"{package}.multiarray._reconstruct"),
                    (core.multiarray.scalar, f"{package}.multiarray.scalar"),
                    (core.numeric._frombuffer, f"{package}.numeric._frombuffer")]
    # BUILD sets a dtype's state, so each concrete dtype class must be admitted (numpy.dtypes.*)
    for name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128"):
        entries.append(type(numpy.dtype(name)))
    entries += [(_ConfigNode, "yacs.config.CfgNode"),
                (_InertRecord, "mmengine.logging.history_buffer.HistoryBuffer")]
    return entries


def _allowed() -> dict[str, Any]:
    """torch's weights-only allow-list plus `safe_globals()`, full pickled name -> object."""
    import torch._weights_only_unpickler as wo
    import torch.serialization

    with torch.serialization.safe_globals(safe_globals()):
        return {**wo._get_allowed_globals(), **wo._get_user_allowed_globals()}


class _WeightsOnlyUnpickler(pickle._Unpickler):  # the pure-Python unpickler: every opcode is ours to check
    """Torch's weights-only rules on an unpickler that reads every pickle protocol."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, allowed: dict[str, Any]):
        super().__init__(file, encoding="latin1")  # py2-era detectron2 files hold latin1 strings
        self.allowed = allowed
        self.allowed_ids = {id(v) for v in allowed.values()}
        # state may be set only on instances of the containers official files hold (numpy arrays and
        # dtypes, namespaces, the stand-ins); never on torch objects (a tensor's state carries its
        # backward hooks), functions or classes
        import collections

        self.buildable = {e[0] if isinstance(e, tuple) else e for e in safe_globals()} | {collections.OrderedDict}
        self.blocked = ("os", "posix", "nt", "sys", "subprocess")  # never, whatever the list says (as torch)

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        # exact names only: no attribute walk through dotted names (protocol 4), nothing imported
        if module.split(".")[0] in self.blocked or full not in self.allowed:
            raise UnsafeCheckpointError(full)
        return self.allowed[full]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a plain pickle with persistent ids (torch storages outside a torch file)")

    def _admitted(self, obj: Any, what: str) -> None:
        if id(obj) not in self.allowed_ids:
            raise pickle.UnpicklingError(f"{what} of {type(obj).__name__} {obj!r:.80}, which is not an allowed global")

    def _reduce(self) -> None:
        self._admitted(self.stack[-2], "a call")
        pickle._Unpickler.load_reduce(self)

    def _newobj(self) -> None:
        self._admitted(self.stack[-2], "an instance")
        pickle._Unpickler.load_newobj(self)

    def _newobj_ex(self) -> None:
        self._admitted(self.stack[-3], "an instance")
        pickle._Unpickler.load_newobj_ex(self)

    def _build(self) -> None:
        inst = self.stack[-2]
        if type(inst) not in self.buildable:
            raise pickle.UnpicklingError(f"setting the state of a {type(inst).__name__}, which no checkpoint needs")
        pickle._Unpickler.load_build(self)

    def _container(kinds: tuple[type, ...], depth: int, opcode: Callable) -> Callable:  # noqa: N805
        def check(self: "_WeightsOnlyUnpickler") -> None:
            target = self.stack[-depth] if depth else self.metastack[-1][-1]
            if type(target) not in kinds:
                raise pickle.UnpicklingError(f"{opcode.__name__} on a {type(target).__name__}")
            opcode(self)
        return check

    def _refuse(self) -> None:
        raise pickle.UnpicklingError("an opcode no checkpoint needs (class instantiation or the extension registry)")


def _install_checks() -> None:
    import collections

    d, U = _WeightsOnlyUnpickler.dispatch, pickle._Unpickler
    mappings = (dict, collections.OrderedDict, collections.Counter)
    d[pickle.REDUCE[0]] = _WeightsOnlyUnpickler._reduce
    d[pickle.NEWOBJ[0]] = _WeightsOnlyUnpickler._newobj
    d[pickle.NEWOBJ_EX[0]] = _WeightsOnlyUnpickler._newobj_ex
    d[pickle.BUILD[0]] = _WeightsOnlyUnpickler._build
    d[pickle.APPEND[0]] = _WeightsOnlyUnpickler._container((list,), 2, U.load_append)
    d[pickle.APPENDS[0]] = _WeightsOnlyUnpickler._container((list,), 0, U.load_appends)
    d[pickle.SETITEM[0]] = _WeightsOnlyUnpickler._container(mappings, 3, U.load_setitem)
    d[pickle.SETITEMS[0]] = _WeightsOnlyUnpickler._container(mappings, 0, U.load_setitems)
    d[pickle.ADDITEMS[0]] = _WeightsOnlyUnpickler._container((set,), 0, U.load_additems)
    for opcode in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        d[opcode[0]] = _WeightsOnlyUnpickler._refuse


_install_checks()

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then that many bytes of JSON."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def _refused_global(error: BaseException) -> str | None:
    """The global torch's weights-only unpickler refused, from its message."""
    import re

    text = str(error)
    for pattern in (r"GLOBAL (\S+) was not an allowed global", r"unsupported GLOBAL (\S+) whose module",
                    r"unrecognized function (.+?)(?: which belongs|$)", r"allowlisted via `add_safe_globals` but got (.+)"):
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def read_checkpoint(path: str | Path) -> Any:
    """Read any official checkpoint file into plain Python objects, tensors on the CPU, without
    running code from it.

    `.safetensors`, or a safetensors file under another name (a timm tag or a hub `model.safetensors`
    fetched to `<backbone>@<objective>.ckpt`) -> dict of tensors. Anything else is read by its
    content, whatever its suffix: torch's zip format or torch's legacy (pre-1.6) format through
    `torch.load(weights_only=True)`,
    or a plain pickle (detectron2's `.pkl`) through `_WeightsOnlyUnpickler`; both admit only
    torch's allow-list plus `safe_globals()`. Raises `UnsafeCheckpointError` naming the file and
    the refused global, CheckpointError naming the file when it is not a readable checkpoint (truncated,
    corrupted, torch's pre-1.0 tar format), FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run the fetch step first)")
    _check_fetched_digest(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error classes for a cut or corrupted header
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                             "fetch it again (delete it and rerun the fetch step)") from e
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head[:2] != b"PK":
            # a plain pickle whatever the suffix (detectron2 .pkl; a mini ViTDet saved as .pth), unless
            # its first object is the magic number of torch's legacy (pre-1.6) serialization
            with open(path, "rb") as f:
                obj = _WeightsOnlyUnpickler(f, _allowed()).load()
            if not (isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC):
                return obj
        return _torch_load(path)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused: the file calls or builds `{e}`, which is not on the allow-list of what official "
            "checkpoints hold (torch's weights-only list + vlmswap.checkpoint.safe_globals()). Nothing from it was run. "
            "If the file is genuine, add exactly that class to safe_globals() after checking it cannot run code."
        ) from None
    except Exception as e:  # a damaged file fails anywhere in an unpickler (struct, EOF, index, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "it may be truncated or corrupted, or hold objects a weights-only reader refuses: fetch it again "
                         "(delete it and rerun the fetch step)") from e


def _check_fetched_digest(path: Path) -> None:
    """A fetched file must still be the bytes that were fetched: torch does not check the CRCs of a
    zip's tensor records, so a file corrupted on disk would otherwise load as wrong weights."""
    record = path.with_name(path.name + ".source.json")
    if not record.is_file():
        return
    try:
        expected = json.loads(record.read_text()).get("sha256")
    except (OSError, ValueError):
        return  # a record we cannot read says nothing about the file
    if expected and (actual := sha256_file(path)) != expected:
        raise CheckpointError(f"{path}: changed since it was fetched (sha256 {actual}, {record} records "
                              f"{expected}): corrupted on disk or replaced; fetch it again (delete it and rerun "
                              "the fetch step)")


def _torch_load(path: Path) -> Any:
    import torch
    import torch.serialization

    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)
        if refused is not None:
            raise UnsafeCheckpointError(refused) from None
        raise


if __name__ == "__main__":  # pragma: no cover - manual inspection aid
    obj = read_checkpoint(sys.argv[1])
    print(json.dumps({k: type(v).__name__ for k, v in obj.items()} if isinstance(obj, dict) else type(obj).__name__))
