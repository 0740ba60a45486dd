"""A dataset's official files: each fetched (see `vlmswap.hub.fetch`) into its data folder, archives
unpacked in place, and the two pieces of post-processing the reference pipelines apply.

An entry of a config's `files:` list is a source (url/hub/path, optional sha256 and `also:` second
sources) with these optional keys:
- `name`       the file name to keep (default: the URL's last segment)
- `into`       a subfolder of the data folder
- `extract`    unpack the archive there, then delete it
- `extract_as` the folder the archive's contents must end up in: an archive whose members sit in one
               top-level folder (whatever it is called) has that folder renamed to this, as
               Prismatic's `download_extract` renames the first member (`do_rename`); otherwise the
               members are placed in a new folder of this name. The folder is moved there whole,
               so one that exists is complete: it is kept and the archive not fetched again
- `to_jpg`     after unpacking, write a `.jpg` beside every GIF (first frame) and PNG, as Prismatic's
               `convert_to_jpg` does for the OCR-VQA images that the LLaVA-1.5 mix names by `.jpg`
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from vlmswap.hub import FetchError, fetch

CONVERTIBLE = {".gif", ".png"}
ALREADY_JPG = {".jpg", ".jpeg"}


def _safe_extract(archive: Path, dest: Path) -> list[str]:
    """Unpack a zip or tar archive into `dest`, refusing members that would land outside it; the
    member names, as the archive lists them."""
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
        return names
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # the "data" filter rejects absolute and escaping paths
            return t.getnames()
    raise FetchError(f"{archive}: `extract: true` but this is neither a zip nor a tar archive")


def _unpack_as(archive: Path, dest_dir: Path, folder: str) -> tuple[int, Path]:
    """Unpack `archive` so that its contents end up in `dest_dir/folder` (see `extract_as`); the
    number of members and the folder."""
    final = dest_dir / folder
    staging = dest_dir / f".unpacking-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier unpack cut short
    staging.mkdir(parents=True)
    count = len(_safe_extract(archive, staging))
    top = [p for p in staging.iterdir() if p.name != "__MACOSX"]
    source = top[0] if len(top) == 1 and top[0].is_dir() else staging
    os.replace(source, final)
    shutil.rmtree(staging, ignore_errors=True)
    return count, final


def images_to_jpg(paths: Iterable[Path], log: Callable[[str], None] = print) -> int:
    """Write `<stem>.jpg` (RGB) beside each GIF (its first frame) and PNG among `paths`, unless one is
    there already; JPGs are left alone, other files skipped and counted. The number written."""
    from PIL import Image

    from vlmswap.atomic import atomic_path

    written = skipped = 0
    for path in sorted(paths):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix in ALREADY_JPG:
            continue
        if suffix not in CONVERTIBLE:
            skipped += 1
            continue
        target = path.with_suffix(".jpg")
        if target.exists():
            continue
        try:
            with Image.open(path) as image:
                image.seek(0)
                rgb = image.convert("RGB")
        except OSError as e:
            raise FetchError(f"{path}: cannot be read as an image ({e}); delete it and fetch again") from e
        with atomic_path(target) as tmp:
            rgb.save(tmp, format="JPEG")
        written += 1
    if skipped:
        log(f"  to_jpg: {skipped} files that are neither GIF, PNG nor JPG left as they are")
    return written


def fetch_files(files: list[Mapping[str, Any]], dest_dir: str | Path, *, mirror=None, offline=None,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fetch a dataset's official files into `dest_dir` (the keys of an entry: module docstring).
    One record per file: the fetch record, plus `extracted` (members) and `converted` (JPGs)."""
    root = Path(dest_dir)
    records = []
    for entry in files:
        entry = dict(entry)
        extract = bool(entry.pop("extract", False))
        extract_as = entry.pop("extract_as", None)
        to_jpg = bool(entry.pop("to_jpg", False))
        dest_dir = root / entry.pop("into", "")
        name = entry.pop("name", None) or Path(urllib.parse.unquote(urllib.parse.urlparse(
            entry.get("url", "") or entry.get("file", "") or entry.get("path", "")).path)).name
        if not name:
            raise FetchError(f"{entry}: give the file a `name:`")
        if (extract_as or to_jpg) and not extract:
            raise FetchError(f"{name}: `extract_as` and `to_jpg` apply to an unpacked archive; add `extract: true`")
        target = dest_dir / name
        if extract_as and (dest_dir / extract_as).exists():  # moved there whole, so complete
            log(f"  {dest_dir / extract_as} is there already (an earlier fetch, or placed by hand): "
                f"{name} is not fetched again")
            record = {"source": entry, "path": str(dest_dir / extract_as), "origin": "already there"}
            if to_jpg:
                record["converted"] = images_to_jpg((dest_dir / extract_as).rglob("*"), log=log)
            records.append(record)
            continue
        record = asdict(fetch(entry, target, mirror=mirror, offline=offline, log=log))
        if extract:
            if extract_as:
                record["extracted"], folder = _unpack_as(target, dest_dir, extract_as)
                unpacked = [p for p in folder.rglob("*")]
            else:
                names = _safe_extract(target, dest_dir)
                record["extracted"], unpacked = len(names), [dest_dir / n for n in names]
            target.unlink()
            log(f"  unpacked {name}: {record['extracted']} entries into {dest_dir / (extract_as or '')}")
            if to_jpg:
                record["converted"] = images_to_jpg(unpacked, log=log)
                log(f"  converted {record['converted']} GIF/PNG images of {name} to JPG")
        records.append(record)
    return records
