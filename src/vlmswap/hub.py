"""Downloads with sha256, local mirrors and offline mode (checkpoint reading: vlmswap.checkpoint).

One downloader for every kind of source a study names (see workflow/schemas/):
- `url`    http(s):// or file:// (file:// is what the tests use; no test touches the network)
- `hub`    a Hugging Face repo (`file` for one file, none for a whole snapshot such as an LLM)
- `timm`   a timm pretrained tag `model.tag`, stored on the hub as `timm/model.tag/model.safetensors`
- `path`   a local file or folder (the mini world's own checkpoints come this way)
A `mirror` folder (offline clusters) is looked up first: `<mirror>/url/<host>/<path>`,
`<mirror>/hub/<org>/<repo>/<file or snapshot>`, `<mirror>/timm/<model.tag>/model.safetensors`.
With `offline=True` (or VLMSWAP_OFFLINE=1) nothing but the mirror and local paths is consulted.

Reading the fetched checkpoints (without running code from them) is vlmswap.checkpoint.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from vlmswap.atomic import atomic_path, write_json
from vlmswap.provenance import file_sha256 as sha256_file  # one file digest for the project


class FetchError(RuntimeError):
    """A source that cannot be fetched; the message names the source and what to do."""


@dataclass
class Fetched:
    source: dict[str, Any]
    path: str
    sha256: str
    bytes: int
    origin: str  # where the bytes actually came from (URL, mirror path, local path)


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


# A timm tag's weights: model.safetensors, else pytorch_model.bin, as timm's own loader falls back
# (the timm/*clip*.openai repos ship only the .bin).
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm_weights(huggingface_hub, repo: str, kind: dict) -> str:
    from huggingface_hub.errors import EntryNotFoundError

    for name in TIMM_WEIGHT_FILES[:-1]:
        try:
            return huggingface_hub.hf_hub_download(repo, name, **kind)
        except EntryNotFoundError:
            continue
    return huggingface_hub.hf_hub_download(repo, TIMM_WEIGHT_FILES[-1], **kind)


def _link(src: Path, dest: Path) -> None:
    """Place a hub-cache file or snapshot at `dest` by hard links to the cached blobs (the snapshot's
    entries are symlinks into `blobs/`), copying only across filesystems; atomic like `_copy`."""
    from vlmswap.download import _place

    if src.is_file():
        _place(src.resolve(), dest)
        return
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        _place(f.resolve(), tmp / f.relative_to(src))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _download(url: str, dest: Path, log: Callable[[str], None], also: list[str] = ()) -> None:
    """An http(s) URL to `dest`: once into the download cache, resumed and retried, second sources
    tried in turn (vlmswap.download)."""
    from vlmswap.download import download

    download(url, dest, also=list(also), log=log)


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
    # everything lands in a staging path first: a file fetched before (and the cells trained on it)
    # survives a failed download, a missing source or a wrong sha256 until the new one is verified
    staging = dest.with_name(f".{dest.name}.incoming")
    _remove(staging)
    try:
        origin = None
        if mirror:
            for candidate in _mirror_candidates(source, Path(mirror)):
                if candidate.exists():
                    _copy(candidate, staging)
                    origin = str(candidate)
                    break
        if origin is None:
            origin = _fetch_direct(source, staging, _offline(offline), mirror, log)
        digest = sha256_file(staging) if staging.is_file() else ""
        if source.get("sha256") and digest != source["sha256"]:
            bad = dest.with_name(dest.name + ".bad-sha256")
            _remove(bad)
            os.replace(staging, bad)
            kept = f"; {dest} was left as it was" if dest.exists() else ""
            raise FetchError(
                f"sha256 mismatch for {origin}: expected {source['sha256']}, got {digest}. The file was kept "
                f"as {bad} for inspection{kept}; fix the config's sha256 or the mirror copy."
            )
        size = staging.stat().st_size if staging.is_file() else sum(
            p.stat().st_size for p in staging.rglob("*") if p.is_file())
        _install(staging, dest)
    finally:
        _remove(staging)
    record = Fetched(source, str(dest), digest, size, origin)
    write_json(dest.with_name(dest.name + ".source.json"), asdict(record))
    return record


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _install(staging: Path, dest: Path) -> None:
    """Put a complete, verified fetch in place of `dest` (a file: one atomic rename)."""
    if staging.is_dir() and dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        _remove(old)
        os.replace(dest, old)
        os.replace(staging, dest)
        _remove(old)
    else:
        os.replace(staging, dest)


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
        from vlmswap.download import DownloadError

        try:
            _download(source["url"], dest, log, source.get("also", []))
        except (OSError, DownloadError) as e:
            raise FetchError(f"download of {source['url']} failed: {e}; retry, or put the file in a mirror") from e
        return source["url"]
    if "hub" in source or "timm" in source:
        import huggingface_hub

        repo = source.get("hub") or f"timm/{source['timm']}"
        filename = source.get("file") or ("model.safetensors" if "timm" in source else None)
        log(f"hub {repo}{'/' + filename if filename else ''}")
        try:
            kind = {"revision": source.get("revision"), "repo_type": source.get("repo_type", "model")}
            if filename and "timm" in source and "file" not in source:
                got = _timm_weights(huggingface_hub, repo, kind)
            elif filename:
                got = huggingface_hub.hf_hub_download(repo, filename, **kind)
            else:
                got = huggingface_hub.snapshot_download(repo, **kind)
        except Exception as e:  # hub errors come in many classes; all mean the same to the user
            raise FetchError(f"hub fetch of {repo} failed: {e}; check the id, HF_TOKEN, or use a mirror") from e
        _link(Path(got), dest)  # the hub cache keeps the bytes; no second copy of a 13 GB LLM
        return f"hf://{repo}/{filename or ''}"
    raise FetchError(f"source {source} has no fetchable kind (url, hub, timm, path)")
