"""glibc's allocator set for CPU compute: freed memory stays in the process for the next buffer.

A CPU forward (and backward) allocates and frees activation buffers of a few MB in every layer.
glibc serves a block above its mmap threshold with fresh pages, and hands the free top of its heap
back to the system once it exceeds its trim threshold (both start at 128 KiB and follow the sizes
freed so far), so the next layer's buffer is page-faulted in and zeroed by the kernel again: 12,480
minor page faults in the prefill of a batch of 16 prompts on the mini LM. Raising both thresholds
keeps those pages in the process (what `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` or a
preloaded jemalloc do for PyTorch CPU inference, set from inside the process so every CPU run gets
it). Measured at stop 25: batched generation 14 % and the choice-probability path 21 % more
examples/s (`benchmarks/generate.py` against `--glibc-defaults`); a mini-study training neither
faster nor slower (55 s for one epoch either way, the same weights to the byte).

Only CPU runs ask for it (training without a GPU, `vlm.inference_placement` choosing the CPU): a
GPU rank's host memory, where checkpoints of a 7B model pass through, keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform

# <malloc.h>: mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2**30  # keep up to 1 GiB of free heap top; blocks above 32 MiB are still mmap'd and unmapped

OPT_OUT = "VLMSWAP_GLIBC_MALLOC_DEFAULTS"  # set to 1 to keep glibc's defaults (a benchmark's "before")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). Returns whether they are set:
    False on another C library, or when `VLMSWAP_GLIBC_MALLOC_DEFAULTS=1` asks for the defaults."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if os.environ.get(OPT_OUT, "") not in ("", "0") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
