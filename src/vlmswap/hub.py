"""Downloads with sha256, local mirrors, offline mode, and tolerant checkpoint reading.

One downloader for every kind of source a study names (see workflow/schemas/):
- `url`    http(s):// or file:// (file:// is what the tests use; no test touches the network)
- `hub`    a Hugging Face repo (`file` for one file, none for a whole snapshot such as an LLM)
- `timm`   a timm pretrained tag `model.tag`, stored on the hub as `timm/model.tag/model.safetensors`
- `path`   a local file or folder (the mini world's own checkpoints come this way)
A `mirror` folder (offline clusters) is looked up first: `<mirror>/url/<host>/<path>`,
`<mirror>/hub/<org>/<repo>/<file or snapshot>`, `<mirror>/timm/<model.tag>/model.safetensors`.
With `offline=True` (or VLMSWAP_OFFLINE=1) nothing but the mirror and local paths is consulted.

Official checkpoints pickle more than tensors: VMamba's classification files carry a yacs
config, mmengine files carry mmengine classes, detectron2 files are plain pickles of numpy arrays.
`read_checkpoint` reads all of them without importing those packages and without executing code
from the file: torch/numpy/container globals come from an allowlist, every other global becomes
an inert placeholder object that only records what it was given.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import time
import types
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from vlmswap.atomic import atomic_path, write_json

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A source that cannot be fetched; the message names the source and what to do."""


@dataclass
class Fetched:
    source: dict[str, Any]
    path: str
    sha256: str
    bytes: int
    origin: str  # where the bytes actually came from (URL, mirror path, local path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _offline(offline: bool | None) -> bool:
    return offline if offline is not None else os.environ.get("VLMSWAP_OFFLINE", "") not in ("", "0")


def _mirror_candidates(source: Mapping[str, Any], mirror: Path) -> list[Path]:
    if "url" in source:
        parsed = urllib.parse.urlparse(source["url"])
        rel = urllib.parse.unquote(parsed.path).lstrip("/")
        return [mirror / "url" / parsed.netloc / rel, mirror / Path(rel).name]
    if "hub" in source:
        base = mirror / "hub" / source["hub"]
        return [base / source["file"]] if source.get("file") else [base]
    if "timm" in source:
        return [mirror / "timm" / source["timm"] / "model.safetensors"]
    return []


def _copy(src: Path, dest: Path) -> None:
    if src.is_dir():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    else:
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)


def _download(url: str, dest: Path, log: Callable[[str], None]) -> None:
    """Stream a URL to `dest` atomically, printing progress every few seconds."""
    request = urllib.request.Request(url, headers={"User-Agent": "vlmswap"})
    with urllib.request.urlopen(request, timeout=60) as response, atomic_path(dest) as tmp:
        total = int(response.headers.get("Content-Length") or 0)
        done, last = 0, time.monotonic()
        with open(tmp, "wb") as out:
            while block := response.read(CHUNK):
                out.write(block)
                done += len(block)
                if time.monotonic() - last > 5:
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    log(f"  {dest.name}: {done / 2**20:.0f} MiB{pct}")
                    last = time.monotonic()


def fetch(
    source: Mapping[str, Any],
    dest: str | Path,
    *,
    mirror: str | Path | None = None,
    offline: bool | None = None,
    log: Callable[[str], None] = print,
) -> Fetched:
    """Bring `source` to `dest` (a file, or a folder for a hub snapshot), verify its sha256 if the
    source states one, and write `<dest>.source.json` recording where it came from."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = dict(source)
    origin = None
    if mirror:
        for candidate in _mirror_candidates(source, Path(mirror)):
            if candidate.exists():
                _copy(candidate, dest)
                origin = str(candidate)
                break
    if origin is None:
        origin = _fetch_direct(source, dest, _offline(offline), mirror, log)
    digest = sha256_file(dest) if dest.is_file() else ""
    if source.get("sha256") and digest != source["sha256"]:
        bad = dest.with_name(dest.name + ".bad-sha256")
        os.replace(dest, bad)
        raise FetchError(
            f"sha256 mismatch for {origin}: expected {source['sha256']}, got {digest}. The file was kept "
            f"as {bad} for inspection; fix the config's sha256 or the mirror copy."
        )
    size = dest.stat().st_size if dest.is_file() else sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    record = Fetched(source, str(dest), digest, size, origin)
    write_json(dest.with_name(dest.name + ".source.json"), asdict(record))
    return record


def _fetch_direct(source: dict[str, Any], dest: Path, offline: bool, mirror, log) -> str:
    if "path" in source:
        src = Path(source["path"])
        if not src.exists():
            raise FetchError(f"local source {src} does not exist; build it first or fix `path:` in the config")
        _copy(src, dest)
        return str(src)
    if "url" in source and source["url"].startswith("file://"):
        src = Path(urllib.parse.unquote(urllib.parse.urlparse(source["url"]).path))
        if not src.exists():
            raise FetchError(f"{source['url']}: no such file")
        _copy(src, dest)
        return source["url"]
    if offline:
        where = f"the mirror {mirror}" if mirror else "no mirror (set `mirror:` in the config)"
        raise FetchError(f"offline and {source} is not in {where}; copy it there or unset VLMSWAP_OFFLINE")
    if "url" in source:
        log(f"download {source['url']}")
        try:
            _download(source["url"], dest, log)
        except OSError as e:
            raise FetchError(f"download of {source['url']} failed: {e}; retry, or put the file in a mirror") from e
        return source["url"]
    if "hub" in source or "timm" in source:
        import huggingface_hub

        repo = source.get("hub") or f"timm/{source['timm']}"
        filename = source.get("file") or ("model.safetensors" if "timm" in source else None)
        log(f"hub {repo}{'/' + filename if filename else ''}")
        try:
            kind = {"revision": source.get("revision"), "repo_type": source.get("repo_type", "model")}
            if filename:
                got = huggingface_hub.hf_hub_download(repo, filename, **kind)
            else:
                got = huggingface_hub.snapshot_download(repo, **kind)
        except Exception as e:  # hub errors come in many classes; all mean the same to the user
            raise FetchError(f"hub fetch of {repo} failed: {e}; check the id, HF_TOKEN, or use a mirror") from e
        _copy(Path(got), dest)
        return f"hf://{repo}/{filename or ''}"
    raise FetchError(f"source {source} has no fetchable kind (url, hub, timm, path)")


# ----------------------------------------------------------------------------------------------
# Tolerant checkpoint reading


class Placeholder(dict):
    """Stands in for any pickled object whose class we do not import (yacs CfgNode, argparse
    Namespace, mmengine classes, ...). It records constructor args, dict items and state."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.args, self.kwargs, self.items_list, self.state = args, kwargs, [], None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items_list.append(item)

    def extend(self, items: Any) -> None:
        self.items_list.extend(items)

    def __repr__(self) -> str:
        return f"<placeholder for {self._qualname}>"


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(name, (Placeholder,), {"_qualname": key, "__module__": "vlmswap.hub.placeholders"})
    return _PLACEHOLDERS[key]


def _allowed_globals() -> dict[str, Any]:
    import torch._weights_only_unpickler as wo

    allowed = dict(wo._get_allowed_globals())
    import numpy

    for name in ("ndarray", "dtype"):
        allowed[f"numpy.{name}"] = getattr(numpy, name)
    core = getattr(numpy, "_core", None) or numpy.core
    allowed["numpy.core.multiarray._reconstruct"] = core.multiarray._reconstruct
    allowed["numpy._core.multiarray._reconstruct"] = core.multiarray._reconstruct
    allowed["numpy.core.multiarray.scalar"] = core.multiarray.scalar
    # pickle protocol 5 writes arrays through numeric._frombuffer (buffer, dtype, shape, order)
    allowed["numpy.core.numeric._frombuffer"] = core.numeric._frombuffer
    allowed["numpy._core.numeric._frombuffer"] = core.numeric._frombuffer
    allowed["numpy._core.multiarray.scalar"] = core.multiarray.scalar
    for dtype in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool_"):
        allowed[f"numpy.{dtype}"] = getattr(numpy, dtype)
    allowed["numpy.dtypes.Float32DType"] = type(numpy.dtype("float32"))
    allowed["numpy.dtypes.Float64DType"] = type(numpy.dtype("float64"))
    allowed["numpy.dtypes.Int64DType"] = type(numpy.dtype("int64"))
    allowed["collections.defaultdict"] = __import__("collections").defaultdict
    allowed["builtins.slice"] = slice
    allowed["builtins.frozenset"] = frozenset
    allowed["builtins.tuple"] = tuple
    allowed["builtins.list"] = list
    allowed["builtins.dict"] = dict
    allowed["builtins.object"] = object
    allowed["copyreg._reconstructor"] = __import__("copyreg")._reconstructor
    return allowed


class TolerantUnpickler(pickle.Unpickler):
    """Resolves only allowlisted globals; everything else becomes an inert Placeholder class."""

    _allowed: dict[str, Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if TolerantUnpickler._allowed is None:
            TolerantUnpickler._allowed = _allowed_globals()
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        if module.startswith("torch") and ("Storage" in name or name.startswith("_rebuild")):
            # storage types and tensor rebuild helpers of this torch build (torch's own
            # weights_only allowlist names the same families)
            return super().find_class(module, name)
        return _placeholder(module, name)


_tolerant_pickle = types.SimpleNamespace(
    Unpickler=TolerantUnpickler,
    load=lambda f, **kw: TolerantUnpickler(f, **kw).load(),
    __name__="vlmswap_tolerant_pickle",
)


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then that many bytes of JSON."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read any official checkpoint file into plain Python objects, tensors on the CPU.

    `.safetensors`, or a safetensors file under another name (a timm tag or a hub `model.safetensors`
    fetched to `<backbone>@<objective>.ckpt`) -> dict of tensors. Anything else is read by its
    content, whatever its suffix: torch's zip format, torch's legacy (pre-1.6) pickle format, or a
    plain pickle (detectron2's `.pkl`) -> whatever the file holds, with foreign classes replaced by
    Placeholders. (Torch's pre-1.0 tarfile format, which nothing in the study uses, is not read.)
    Raises ValueError naming the file when it is none of those."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run the fetch step first)")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head[:2] == b"PK":  # torch's zip format
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
        # a plain pickle whatever the suffix (detectron2 .pkl; a mini ViTDet saved as .pth), unless
        # its first object is the magic number of torch's legacy (pre-1.6) serialization
        with open(path, "rb") as f:
            obj = TolerantUnpickler(f, encoding="latin1").load()
        if not (isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC):
            return obj
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


if __name__ == "__main__":  # pragma: no cover - manual inspection aid
    obj = read_checkpoint(sys.argv[1])
    print(json.dumps({k: type(v).__name__ for k, v in obj.items()} if isinstance(obj, dict) else type(obj).__name__))


# ----------------------------------------------------------------------------------------------
# Dataset files: fetch each official file into a benchmark folder, unpacking archives in place


def _safe_extract(archive: Path, dest: Path) -> int:
    """Unpack a zip or tar archive into `dest`, refusing members that would land outside it."""
    import tarfile
    import zipfile

    dest = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            for name in names:
                if not (dest / name).resolve().is_relative_to(dest):
                    raise FetchError(f"{archive}: member {name!r} would be written outside {dest}; refusing")
            z.extractall(dest)
        return len(names)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # the "data" filter rejects absolute and escaping paths
            return len(t.getnames())
    raise FetchError(f"{archive}: `extract: true` but this is neither a zip nor a tar archive")


def fetch_files(files: list[Mapping[str, Any]], dest_dir: str | Path, *, mirror=None, offline=None,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fetch a dataset's official files into `dest_dir`. Each entry is a source (url/hub/path, optional
    sha256) with optional `name` (the file name to keep; default the URL's), `into` (a subfolder of
    `dest_dir`) and `extract` (unpack the archive there, then delete it). One record per file."""
    root = Path(dest_dir)
    records = []
    for entry in files:
        entry = dict(entry)
        extract = bool(entry.pop("extract", False))
        dest_dir = root / entry.pop("into", "")
        name = entry.pop("name", None) or Path(urllib.parse.unquote(urllib.parse.urlparse(
            entry.get("url", "") or entry.get("file", "") or entry.get("path", "")).path)).name
        if not name:
            raise FetchError(f"{entry}: give the file a `name:`")
        target = dest_dir / name
        record = asdict(fetch(entry, target, mirror=mirror, offline=offline, log=log))
        if extract:
            record["extracted"] = _safe_extract(target, dest_dir)
            target.unlink()
            log(f"  unpacked {name}: {record['extracted']} entries into {dest_dir}")
        records.append(record)
    return records
