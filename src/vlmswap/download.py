"""HTTP(S) downloads that survive a flaky network: a small, documented wrapper over `requests`.

    download(url, dest, sha256=None, cache=Path("resources/.downloads"), log=print)

- **Once**: finished files live in a content-addressed cache, `<cache>/<sha256 of the URL>/<name>`,
  and are hard-linked (copied across filesystems) to each destination, so an archive two datasets
  list (Visual Genome for the instruction set and for TallyQA) is downloaded once.
- **Resume**: bytes arrive in `<name>.part` beside the cached file; after a dropped connection the
  next attempt asks for the rest (`Range: bytes=N-`); a server that ignores ranges (200) starts over.
- **Retry**: connection errors, time-outs, short bodies and 5xx answers are retried with exponential
  back-off (`attempts`, `backoff`); a 4xx answer (not found, forbidden) fails at once.
- **Second sources**: `also` lists other URLs of the same file (RefCOCO's host goes down for long
  spells), tried in turn when one fails.
- **Verify**: with a known `sha256` the finished file must match, or it is removed and the error
  names the URL, the file and both digests. The digest of every download is returned (the fetch
  record keeps it, so later reads can check the file has not changed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Callable

from vlmswap.provenance import file_sha256 as sha256_file

READ_CHUNK = 1 << 16
DEFAULT_CACHE = Path(os.environ.get("VLMSWAP_DOWNLOAD_CACHE", "resources/.downloads"))


class DownloadError(RuntimeError):
    """A download that cannot complete; the message names the URL and what to do."""


class _Retry(Exception):
    """A transient failure: try again (after the back-off)."""


def cached_path(url: str, cache: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    return Path(cache) / hashlib.sha256(url.encode()).hexdigest()[:32] / name


def _attempt(session, url: str, part: Path, timeout: float, log: Callable[[str], None]) -> None:
    """One request: append to `part` from where it stops; raise _Retry on a transient failure."""
    import requests

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "vlmswap", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 416 and have:  # asked past the end: the part is the whole file
                return
            if response.status_code >= 500:
                raise _Retry(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}; check the URL in the "
                                    "config or put the file in the mirror")
            resumed = response.status_code == 206
            if have and not resumed:
                have = 0  # the server ignored the range: start over
            length = response.headers.get("Content-Length")
            expected = have + int(length) if length is not None else None
            if have:
                log(f"  {part.name}: resuming at {have / 2**20:.1f} MiB")
            done, last = have, time.monotonic()
            with open(part, "ab" if resumed else "wb") as out:
                for block in response.iter_content(READ_CHUNK):  # small: a drop loses little
                    out.write(block)
                    done += len(block)
                    if time.monotonic() - last > 10:
                        pct = f" ({100 * done / expected:.0f}%)" if expected else ""
                        log(f"  {part.name}: {done / 2**20:.0f} MiB{pct}")
                        last = time.monotonic()
            if expected is not None and done < expected:
                raise _Retry(f"connection closed at {done} of {expected} bytes")
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
        raise _Retry(f"{type(e).__name__}: {e}") from e


def download(url: str, dest: str | Path, *, sha256: str | None = None, cache: str | Path | None = None,
             also: list[str] | tuple[str, ...] = (), attempts: int = 6, backoff: float = 2.0,
             timeout: float = 60.0, log: Callable[[str], None] = print) -> str:
    """Bring `url` to `dest` (through the cache) and return its sha256; when `url` fails after its
    retries, each of `also` (second sources of the same file) is tried in turn."""
    for n, source in enumerate([url, *also]):
        try:
            return _download_one(source, dest, sha256=sha256, cache=cache, attempts=attempts, backoff=backoff,
                                 timeout=timeout, log=log)
        except DownloadError as e:
            if n == len(also):
                raise
            log(f"  {e}; trying the next source {also[n]}")
    raise AssertionError("unreachable")


def _download_one(url: str, dest: str | Path, *, sha256: str | None, cache: str | Path | None, attempts: int,
                  backoff: float, timeout: float, log: Callable[[str], None]) -> str:
    import requests

    dest = Path(dest)
    final = cached_path(url, Path(cache) if cache is not None else DEFAULT_CACHE)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        part = final.with_name(final.name + ".part")
        with requests.Session() as session:
            for attempt in range(1, attempts + 1):
                try:
                    _attempt(session, url, part, timeout, log)
                    break
                except _Retry as e:
                    if attempt == attempts:
                        raise DownloadError(f"{url}: {e}; gave up after {attempts} attempts. Rerun to resume "
                                            f"from {part.stat().st_size if part.exists() else 0} bytes, or put "
                                            "the file in the mirror") from None
                    wait = backoff * 2 ** (attempt - 1)
                    log(f"  {url}: {e}; attempt {attempt + 1}/{attempts} in {wait:.0f} s")
                    time.sleep(wait)
        digest = sha256_file(part)
        if sha256 and digest != sha256:
            part.unlink()
            raise DownloadError(f"{url}: sha256 mismatch for {final.name}: expected {sha256}, got {digest}. "
                                "The partial file was removed; fix the config's sha256 or the source")
        os.replace(part, final)
    else:
        digest = sha256_file(final)
        if sha256 and digest != sha256:
            raise DownloadError(f"{final} (cached {url}): sha256 {digest} differs from the config's {sha256}; "
                                "delete the cached file to download it again")
    _place(final, dest)
    return digest


def _place(src: Path, dest: Path) -> None:
    """Hard-link the cached file to `dest` (no second copy); copy when they are on two filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
