"""The selective scan's native backends: the C++ CPU scan (scan_cpu.cpp, built on first use by
torch's extension loader) and mamba_ssm's fused CUDA kernel, each with the signature of
vlmswap.vision.scan (which picks among them and the pure-PyTorch scans; its docstring has the
recurrence and the shapes). Also the autocast guard that every float32 scan runs under.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["call_fused", "compiled_available", "compiled_ops", "float32_region", "fused_available", "fused_io_dtype",
           "fused_kernel", "note", "selective_scan_compiled"]


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off where autocast exists (not on the meta device, used for shape checks)."""
    if device.type in ("cpu", "cuda", "xpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_CPU_SOURCE = Path(__file__).with_name("scan_cpu.cpp")


def note(message: str) -> None:
    """One line on stderr (the job's log under Snakemake): which scan runs, said once per process."""
    print(f"vlmswap.scan: {message}", file=sys.stderr, flush=True)


@functools.cache
def compiled_ops():
    """The C++ scan of scan_cpu.cpp as torch ops, or None where it cannot be built (no compiler, no
    headers) or VLMSWAP_SCAN_BUILD=0. Built on first use by torch's extension loader, as DeepSpeed
    builds its ops, into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), and loaded from
    there afterwards. The build targets this CPU (-march=native), so the name carries the source's
    hash and the CPU model: a cache shared between different machines never hands one the other's
    binary, and an edited source is a new build."""
    if os.environ.get("VLMSWAP_SCAN_BUILD", "1").strip() == "0":
        note("compiled CPU scan disabled (VLMSWAP_SCAN_BUILD=0); using the pure-PyTorch chunked scan")
        return None
    try:
        import hashlib
        import platform

        from torch.utils import cpp_extension

        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name")), cpu)
        digest = hashlib.sha256(_CPU_SOURCE.read_bytes() + cpu.encode() + torch.__version__.encode()).hexdigest()
        name = f"vlmswap_scan_cpu_{digest[:12]}"
        with contextlib.redirect_stdout(sys.stderr):  # the loader prints its build steps
            cpp_extension.load(name=name, sources=[str(_CPU_SOURCE)], is_python_module=False, verbose=False,
                               extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
                                            "-mprefer-vector-width=512"])
        ops = torch.ops.vlmswap_scan_cpu
        ops.forward, ops.backward  # noqa: B018 -- fails here, not at the first call, if registration failed
    except Exception as error:  # no g++, no Python headers, a failed build: the pure path still works
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        note(f"compiled CPU scan unavailable ({first}); using the pure-PyTorch chunked scan")
        return None
    note("using the compiled CPU scan (scan_cpu.cpp)")
    return ops


def compiled_available() -> bool:
    """Whether the compiled CPU scan is built (or can be built now) and loaded."""
    return compiled_ops() is not None


class _CompiledScan(torch.autograd.Function):
    """The C++ scan (scan_cpu.cpp): forward; backward recomputes the states, nothing but the inputs saved."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        ops = compiled_ops()
        y = ops.forward(u, delta, A, B, C, D, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        gu, gdelta, gA, gB, gC, gD, gbias = compiled_ops().backward(
            u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, grad_y.float().contiguous())
        need = ctx.needs_input_grad
        return (gu if need[0] else None, gdelta if need[1] else None, gA.sum(0) if need[2] else None,
                gB.sum(2) if need[3] else None, gC.sum(2) if need[4] else None,
                gD.sum(0) if need[5] and D.numel() else None,
                gbias.sum(0) if need[6] and delta_bias.numel() else None, None)


def selective_scan_compiled(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                            delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The scan by the compiled C++ kernel (CPU tensors; float32 inside, y in u's dtype), with autograd.
    A RuntimeError where the kernel is not available (see `compiled_available`).

    Each (batch, block of 16 channels) is one task: its inputs are transposed into time-major tiles
    in cache, the recurrence runs over time with the 16 channels as SIMD lanes, and y is transposed
    back, so every input is read once and y written once. The backward recomputes the block's states
    from the inputs and runs the adjoint recurrence backwards in time (as mamba_ssm's kernel does).
    Measured by benchmarks/scan.py against the sequential reference (README, Performance figures).
    """
    if compiled_ops() is None:
        raise RuntimeError("the compiled CPU scan is not available here (see the vlmswap.scan line on stderr)")
    dtype = u.dtype
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    groups = B.shape[1]
    if u.shape[1] % groups or C.shape[1] != groups:
        raise ValueError(f"{u.shape[1]} channels cannot be split into {groups} groups of B/C")
    empty = u.new_empty(0, dtype=torch.float32)

    def f32(x: Tensor | None) -> Tensor:
        return empty if x is None else x.float().contiguous()

    with float32_region(u.device):
        y = _CompiledScan.apply(f32(u), f32(delta), f32(A), f32(B), f32(C), f32(D), f32(delta_bias),
                                bool(delta_softplus))
    return y.to(dtype)


@functools.cache
def fused_kernel():
    """mamba_ssm's CUDA selective_scan_fn, or None. Never required (backbones.md section 6):
    mamba_ssm <= 2.3.2.post1 fails to import without its CUDA extension `selective_scan_cuda`;
    later versions import without it (the extension is opt-in) and then have selective_scan_cuda = None."""
    try:
        from mamba_ssm.ops import selective_scan_interface as interface
    except Exception:  # ImportError, or the missing `selective_scan_cuda` extension
        return None
    if getattr(interface, "selective_scan_cuda", None) is None:
        return None
    return getattr(interface, "selective_scan_fn", None)


def fused_available() -> bool:
    """Whether mamba_ssm's fused CUDA kernel is importable here (it still needs CUDA tensors)."""
    return fused_kernel() is not None


def fused_io_dtype(u: Tensor, delta: Tensor, B: Tensor, C: Tensor) -> torch.dtype:
    return functools.reduce(torch.promote_types, (delta.dtype, B.dtype, C.dtype), u.dtype)


def call_fused(kernel, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """Call a mamba_ssm `selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
    return_last_state)` as its CUDA kernel requires: u, delta, B, C of one dtype (float32, float16 or
    bfloat16; here the widest of the four, so nothing is rounded), B/C as (batch, G, N, L) with unit
    stride over L, A, D and delta_bias float32, no z gate. The kernel computes in float32; y is
    returned in u's dtype, like the other two implementations."""
    io_dtype = fused_io_dtype(u, delta, B, C)
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    y = kernel(u.to(io_dtype).contiguous(), delta.to(io_dtype).contiguous(), A.float().contiguous(),
               B.to(io_dtype).contiguous(), C.to(io_dtype).contiguous(),
               None if D is None else D.float().contiguous(), z=None,
               delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
               delta_softplus=bool(delta_softplus), return_last_state=False)
    return y.to(u.dtype)
