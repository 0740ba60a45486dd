"""The project's one atomic writer: a file is either the old version or the complete new one.

Snakemake treats an output that exists as done, so a half-written JSON, CSV or checkpoint left by
a killed job would poison every later run. Every writer therefore writes to a temporary file in
the destination's own directory (same filesystem, so `os.replace` is atomic) and renames it onto
the destination only after the content is complete and flushed to disk.

A writer killed outright (SIGKILL, out of memory, a node lost) cannot remove its temporary file.
The temporary name therefore records the host and process that wrote it
(`.x.json.tmp-node7.4242.ab12cd34.json`), and the next write of the same destination removes the
leftovers of writers on this host whose process no longer exists (looked up once per directory and
process). Leftovers from another host are kept: a process there cannot be checked from here.

    write_json(path, obj)                 # indent 2, sorted keys, trailing newline
    write_text(path, text) / write_bytes(path, data)
    with atomic_path(path) as tmp:        # for writers that want a path: savefig, to_csv, torch.save
        fig.savefig(tmp)
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

__all__ = ["atomic_path", "write_bytes", "write_json", "write_text"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; finished files get the mode an ordinary open() would have given.
_FILE_MODE = 0o666 & ~_current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the destination's suffix (`.x.png.tmp-ab12.png`), so writers that
    pick a format from the extension (matplotlib, pandas compression) behave as for `path`.
    Parent directories are created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_writers(path)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{_HOST}.{os.getpid()}.",
                                        suffix=path.suffix)
    except OSError as e:
        raise _naming(e, path, None) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as f:  # the writer closed it; make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_HOST = socket.gethostname().replace("/", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


# Per directory, the leftovers found when this process first wrote there, by destination name. One
# scan per directory and process: a folder of 200,000 converted images is listed once, not per image.
_LEFTOVERS: dict[Path, dict[str, list[Path]]] = {}


def _remove_dead_writers(path: Path) -> None:
    """Remove temporary files for `path` left by killed writers on this host (see the module doc)."""
    index = _LEFTOVERS.get(path.parent)
    if index is None:
        marker = f".tmp-{_HOST}."
        index = {}
        with os.scandir(path.parent) as entries:
            for entry in entries:
                if entry.name.startswith(".") and marker in entry.name:
                    index.setdefault(entry.name[1:entry.name.rindex(marker)], []).append(Path(entry.path))
        _LEFTOVERS[path.parent] = index
    prefix = f".{path.name}.tmp-{_HOST}."
    for leftover in index.pop(path.name, []):
        pid = leftover.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _naming(error: OSError, path: Path, tmp: Path | None) -> OSError:
    """A failed write (full disk, read-only folder) reported under the destination's name, not the
    temporary file's: the message a user sees names the file they asked for."""
    if error.errno is None or (error.filename not in (None, str(tmp), str(path.parent)) and tmp is not None):
        return error  # some other file the writer was reading: its own name is the right one
    return type(error)(error.errno, error.strerror, str(path))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    """Write `rows` as CSV (a header of `fieldnames`, then one line per row, `csv`'s dialect) to
    `path` atomically. The text is built before the file is touched, so a row with a field that is
    not in `fieldnames` raises and leaves any existing file as it was."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv_rows(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, str]]:
    """The rows of several CSV files with headers, in order, as dicts of strings."""
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable: {value!r}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as JSON (indent 2, sorted keys, trailing newline) to `path` atomically.

    Paths inside `obj` are written as strings. The text is built before the file is touched, so
    an unserializable object leaves any existing file as it was.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n"
    write_text(path, text)
