"""The selective scan (Mamba's S6 recurrence) and VMamba's 2D cross-scan / cross-merge.

The recurrence, per channel d and state index n, over positions t = 0..L-1:

    dt_t = softplus(delta_t + bias)            (softplus and bias optional)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = sum_n C_t[n] * h_t[n] + D * u_t

Four implementations with one signature (shapes as mamba_ssm's `selective_scan_ref`):
u, delta (batch, KD, L); A (KD, N); B, C (batch, K, N, L) with the KD channels split into K equal
groups (or (batch, N, L): one group); D, delta_bias (KD,). They return y (batch, KD, L) in u's dtype.

- `selective_scan_reference`: the sequential loop over L in float32, the specification.
- `selective_scan_chunked`: pure PyTorch, float32, any device, with autograd: a chunked scan (a loop
  over the positions of one chunk run for all chunks at once, then over the chunks), about sqrt(L)
  chunks; equal to the reference to float32 rounding, 7-9x faster at VMamba-T stage 1 on a 2-core CPU.
- `selective_scan_compiled` (in scan_native.py, with mamba_ssm's fused kernel): C++ (scan_cpu.cpp,
  built on first use by torch's extension loader and cached), CPU, with a hand-written backward; each input read once, the 16 channels of a block as SIMD
  lanes. 20-40x the reference (benchmarks/scan.py).
- `selective_scan`: what the models call. The environment variable VLMSWAP_SCAN
  (auto | reference | chunked | compiled | fused, default auto) picks one; auto takes mamba_ssm's
  fused CUDA kernel for CUDA tensors when it is importable with its extension built, the compiled
  scan for CPU tensors where it builds, else the chunked scan (the choice said once on stderr).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

# the native backends (C++ CPU scan, mamba_ssm's CUDA kernel); compiled_available, fused_available and
# selective_scan_compiled stay importable from here
from vlmswap.vision.scan_native import (call_fused, compiled_available, float32_region, fused_available, fused_io_dtype,
                                        fused_kernel, selective_scan_compiled)

__all__ = ["SCAN_ENV", "SCAN_MODES", "compiled_available", "cross_merge", "cross_scan", "fused_available",
           "selective_scan", "selective_scan_chunked", "selective_scan_compiled", "selective_scan_reference"]


def _expand_groups(x: Tensor, channels: int) -> Tensor:
    """(b, K, N, L) or (b, N, L) grouped B/C -> (b, KD, N, L), each group repeated over its channels."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    b, groups, n, length = x.shape
    if channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} groups of B/C")
    return x.unsqueeze(2).expand(b, groups, channels // groups, n, length).reshape(b, channels, n, length)


def _discretized_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The scan as a plain loop over positions, in float32 (same algorithm as mamba_ssm's
    selective_scan_ref and VMamba's selective_scan_torch; backbones.md section 1.6)."""
    dtype = u.dtype
    u = u.float()
    channels = u.shape[1]
    dt = _discretized_delta(delta, delta_bias, delta_softplus)
    Bx = _expand_groups(B.float(), channels)                      # (b, KD, N, L)
    Cx = _expand_groups(C.float(), channels)
    decay = torch.exp(dt.unsqueeze(-1) * A.float()[:, None])        # (b, KD, L, N)
    drive = (dt * u).unsqueeze(-1) * Bx.transpose(2, 3)            # (b, KD, L, N)
    h = u.new_zeros(u.shape[0], channels, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[:, None]
    return y.to(dtype)


def _softplus_(z: Tensor, e: Tensor | None = None, w: Tensor | None = None) -> Tensor:
    """softplus in place, no autograd; e, w: optional scratch tensors shaped like z.

    max(z, 0) + log1p(exp(-|z|)) with log1p(e) = log(w) + (e - (w - 1)) / w, w = 1 + e rounded: w - 1
    and e - (w - 1) are exact, so this is the rounding of 1 + e corrected to first order (<= 2e-7
    relative to softplus in float64). Only the vectorized exp and log: on the 2-core test CPU
    F.softplus and torch.log1p of a (1, 384, 3136) tensor took 6-16 ms in some processes (0.6 ms in
    others), this 1.2-1.4 ms.
    """
    e = torch.abs(z, out=e) if e is not None else z.abs()
    e.neg_().exp_()
    w = torch.add(e, 1, out=w) if w is not None else e + 1
    w.sub_(1)
    e.sub_(w)
    w.add_(1)
    e.div_(w)
    w.log_().add_(e)
    return z.clamp_min_(0).add_(w)


def _chunk_scan_(a: Tensor, h: Tensor, reverse: bool) -> None:
    """In place on (n_chunks, chunk, M) views: h_t <- a_t h_{t-1} + h_t (reverse: a_t h_{t+1} + h_t)
    from a zero state before the first (last) position.

    1. the chunk-end states from a zero start, all chunks at once: a loop over the `chunk`
       positions of one chunk on (n_chunks, M) slices, accumulating into one small buffer;
    2. the states entering each chunk: a loop over the chunks on (M,) rows,
       h_in(c) = prod(a over chunk c-1) * h_in(c-1) + end(c-1);
    3. the states themselves, all chunks at once again, each chunk starting from its h_in.
    Every step is the recurrence itself (a multiply-add with a_t <= 1): no exp of positive numbers,
    no division, no differencing of cumulative sums.
    """
    n_chunks, chunk, channels = h.shape
    order = range(chunk - 1, -1, -1) if reverse else range(chunk)
    a_t, h_t = a.unbind(1), h.unbind(1)
    first = order[0]
    if n_chunks > 1:
        end = h_t[first].clone()
        for t in order[1:]:
            torch.addcmul(h_t[t], a_t[t], end, out=end)
        total = a.prod(1)                                                  # (n_chunks, M)
        h_in = h.new_zeros(n_chunks, channels)
        rows = h_in.unbind(0)
        step = 1 if reverse else -1                                        # the chunk feeding chunk c
        for c in (range(n_chunks - 2, -1, -1) if reverse else range(1, n_chunks)):
            torch.addcmul(end[c + step], total[c + step], rows[c + step], out=rows[c])
        h_t[first].addcmul_(a_t[first], h_in)
    prev = first
    for t in order[1:]:
        h_t[t].addcmul_(a_t[t], h_t[prev])
        prev = t


def _linear_scan_(a: Tensor, h: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """In place over the rows of (L, M) tensors: h_t <- a_t h_{t-1} + h_t (reverse: a_t h_{t+1} + h_t),
    zero initial state. The first (reverse: last) L // chunk * chunk rows are scanned by chunks
    (`_chunk_scan_`), the L % chunk < chunk rows left over one by one, continuing from them."""
    length, channels = h.shape
    n_chunks = length // chunk
    body = n_chunks * chunk
    lo = length - body if reverse else 0
    if n_chunks:
        shape = (n_chunks, chunk, channels)
        _chunk_scan_(a[lo:lo + body].view(shape), h[lo:lo + body].view(shape), reverse)
    rest = range(lo - 1, -1, -1) if reverse else range(body, length)
    prev = lo if reverse else body - 1
    for t in rest:
        if n_chunks or t != rest[0]:
            h[t].addcmul_(a[t], h[prev])
        prev = t
    return h


def _contract(h: Tensor, C: Tensor, out: Tensor | None = None) -> Tensor:
    """y[l, b, g, p] = sum_n h[l, b, g, p, n] C[l, b, g, n] (a batched matrix-vector product);
    out: an optional contiguous (L, b, K, P) tensor to write y into."""
    L, b, G, P, N = h.shape
    if N == 1:
        return torch.mul(h.view(L, b, G, P), C, out=out) if out is not None else h.view(L, b, G, P) * C
    if out is not None:
        torch.matmul(h.view(-1, P, N), C.reshape(-1, N, 1), out=out.view(-1, P, 1))
        return out
    return torch.matmul(h.view(-1, P, N), C.reshape(-1, N, 1)).view(L, b, G, P)


def _contract_left(v: Tensor, h: Tensor) -> Tensor:
    """out[l, b, g, n] = sum_p v[l, b, g, p] h[l, b, g, p, n]."""
    L, b, G, P, N = h.shape
    if N == 1:
        return (v * h.view(L, b, G, P)).sum(3, keepdim=True)
    return torch.matmul(v.reshape(-1, 1, P), h.view(-1, P, N)).view(L, b, G, N)


def _time_major(x: Tensor, copy: bool = False) -> Tensor:
    """(b, KD, L) -> contiguous (L, b, KD), by the copy kernel's transpose (an elementwise op reading
    a transposed operand is several times slower); `copy`: always a new tensor, never x itself."""
    x = x.permute(2, 0, 1)
    return x.clone(memory_format=torch.contiguous_format) if copy else x.contiguous()


def _channel_major(x: Tensor) -> Tensor:
    """(L, b, KD) -> contiguous (b, KD, L)."""
    return x.permute(1, 2, 0).contiguous()


class _ChunkedScan(torch.autograd.Function):
    """The whole scan after B/C are made time-major, float32, with a hand-written backward.

    u, delta: (b, KD, L); A: (KD, N); B, C: (L, b, K, N), time-major; D, delta_bias: (KD,) or None.
    Inside, everything is time-major: dt, u as (L, b, K, P) (P = KD/K channels per B/C group),
    a = exp(dt A) and the state h as (L, b*KD*N) rows, h scanned in place by `_linear_scan_`.
    The forward makes four new tensors, a, h, dt and y (five with autograd: y's time-major copy):
    softplus works in a and h before they are filled, u's time-major copy lives in a until a is made,
    and without autograd y is read out into dt. a, h and dt are saved for the backward.
    Backward: g = the reverse scan of dL/dh = C dL/dy with a shifted by one
    (g_t = dL/dh_t + a_{t+1} g_{t+1}), then dL/d(dt u B) = g and dL/d(dt A)_t = g_t a_t h_{t-1}.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk):
        with float32_region(u.device):  # float32 throughout (matmul would autocast)
            return _ChunkedScan._forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk)

    @staticmethod
    def backward(ctx, grad_y):
        with float32_region(grad_y.device):
            return _ChunkedScan._backward(ctx, grad_y.float())

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk):
        batch, channels, length = u.shape
        groups, n = B.shape[2], B.shape[3]
        per = channels // groups
        training = any(ctx.needs_input_grad)
        a = u.new_empty(length + 1, batch * channels * n)     # one spare row: a[1:] is the backward's shift
        h = u.new_empty(length, batch, groups, per, n)
        dt = _time_major(delta, copy=True)                                 # (L, b, KD)
        if delta_bias is not None:
            dt.add_(delta_bias)
        if delta_softplus:                                                 # a and h as its scratch space
            _softplus_(dt, a.view(-1)[:dt.numel()].view_as(dt), h.view(-1)[:dt.numel()].view_as(dt))
        dt5 = dt.view(length, batch, groups, per, 1)
        u_t = a.view(-1)[:dt.numel()].view(dt5.shape)                     # u, time-major, until a is made
        u_t.copy_(u.permute(2, 0, 1).view(dt5.shape))
        torch.mul(dt5, B.unsqueeze(3), out=h)
        h.mul_(u_t)
        torch.mul(dt5, A.view(groups, per, n), out=a[:length].view(length, batch, groups, per, n))
        a[:length].exp_()
        a[length].zero_()
        _linear_scan_(a[:length], h.view(length, -1), chunk)
        # without a backward to come, dt is free again: y goes there instead of into a new tensor
        y = _contract(h, C, out=None if training else dt.view(length, batch, groups, per))
        y = _channel_major(y.view(length, batch, channels))
        if D is not None:
            y.addcmul_(u, D[:, None])
        if training:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, a, h, dt)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        return y

    @staticmethod
    def _backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, a, h, dt = ctx.saved_tensors
        need_u, need_delta, need_A, need_B, need_C, need_D, need_bias = ctx.needs_input_grad[:7]
        length, batch, groups, per, n = h.shape
        channels = groups * per
        grad_u = grad_delta = grad_A = grad_B = grad_C = grad_D = grad_bias = None
        gy = _time_major(grad_y).view(length, batch, groups, per)
        if need_C:
            grad_C = _contract_left(gy, h)
        if need_D:
            grad_D = (grad_y * u).sum((0, 2))
        if need_u or need_delta or need_A or need_B or need_bias:
            g = torch.mul(gy.unsqueeze(-1), C.unsqueeze(3))                         # dL/dh
            _linear_scan_(a[1:], g.view(length, -1), ctx.chunk, reverse=True)       # dL/d(dt u B)
            dt4 = dt.view(length, batch, groups, per)
            u4 = _time_major(u).view(length, batch, groups, per)
            if need_B:
                grad_B = _contract_left(dt4 * u4, g)
            grad_du = _contract(g, B)                                               # dL/d(dt u)
            if need_u:
                grad_u = _channel_major((grad_du * dt4).view(length, batch, channels))
                if D is not None:
                    grad_u.addcmul_(grad_y, D[:, None])
            if need_delta or need_A or need_bias:
                gv = g.view(length, -1)                                             # -> dL/d(dt A)
                gv[1:].mul_(h.view(length, -1)[:-1]).mul_(a[1:length])
                gv[0].zero_()
                grad_dt = (g * A.view(groups, per, n)).sum(-1) if n > 1 else g.view_as(dt4) * A.view(groups, per)
                grad_dt.addcmul_(grad_du, u4)
                if need_A:
                    grad_A = g.mul_(dt4.unsqueeze(-1)).sum((0, 1)).view(channels, n)
                if need_delta or need_bias:
                    grad_dt = grad_dt.view(length, batch, channels)
                    if ctx.delta_softplus:                                          # d softplus(z)/dz = sigmoid(z)
                        z = _time_major(delta, copy=True)
                        if delta_bias is not None:
                            z.add_(delta_bias)
                        grad_dt.mul_(z.sigmoid_())
                    if need_bias:
                        grad_bias = grad_dt.sum((0, 1))
                    if need_delta:
                        grad_delta = _channel_major(grad_dt)
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_bias, None, None


def _auto_chunk(length: int) -> int:
    return max(1, round(math.sqrt(length)))


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                           delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           chunk: int | None = None) -> Tensor:
    """The scan in pure PyTorch, by chunks of `chunk` positions (None: round(sqrt(L))), with autograd.

    Algorithm. The state is laid out time-major, as (L, batch*KD*N) rows, and the L positions are
    cut into chunks. (1) Inside the chunks the recurrence h_t = a_t h_{t-1} + x_t runs sequentially
    over the positions of ONE chunk, for all chunks at once -- each step one multiply-add on an
    (n_chunks, batch*KD*N) slice -- giving each chunk's end state from a zero start; (2) the states
    entering the chunks are carried across them by a loop over the chunks on (batch*KD*N,) rows, with
    each chunk's total decay; (3) the in-chunk loop runs again, every chunk starting from its entering
    state. About 2*chunk + L/chunk steps instead of L: a chunked scan, not a Python loop over every
    position (the L % chunk positions left over, < chunk, are stepped after the chunks). Every step is
    the recurrence itself with decays a_t = exp(dt*A) <= 1: no exp of positive numbers, no division,
    no differencing of long cumulative sums, so the result equals the reference to float32 rounding
    (measured <= 2e-7 of the output scale at the benchmark shapes, <= 1e-6 for long weak decays).
    The backward (`_ChunkedScan`, written by hand) is the same scan run in reverse. softplus is
    computed from exp and log (`_softplus_`), the one deviation from F.softplus (<= 2e-7 relative).

    Measured (benchmarks/scan.py: 2-core CPU, torch.set_num_threads(2), float32, batch 1,
    delta_softplus=True, median ms of 9; reference -> this):
      VMamba-T stage 1, u (1, 384, 3136), N=1, 4 groups:  43-50 -> 4.9-6.5 (7-9x); fwd+bwd 1050 -> 14 (75x)
      VMamba-T stage 3, u (1, 1536, 196), N=1, 4 groups:  4.5-5.2 -> 1.3-1.5 (3.2-3.5x); fwd+bwd 33 -> 3.7-4.1
      Vim-S one direction, u (1, 768, 197), N=16, 1 group: 9-10 -> 3.0-4.2 (2.3-2.8x); fwd+bwd 155-190 -> 8
    The doubling (Hillis-Steele) scan this replaces took 20-25, 4.0-4.6 and 33-71 ms there. One rule
    for the chunk serves all three: the time is flat within ~10 % for chunks of 12 to 64 positions
    (forward and forward+backward), and sqrt(L) = 56, 14, 14 lies in that range. Time-major layout:
    the per-step slices are contiguous rows; u, delta and y are transposed once each by the copy
    kernel. Few full-size temporaries: on that machine a new multi-MB tensor costs ~0.8 ms of page
    faults whenever glibc has handed the memory back, as much as ten elementwise passes.
    """
    dtype = u.dtype
    batch, channels, length = u.shape
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    groups, n = B.shape[1], A.shape[1]
    if channels % groups or C.shape[1] != groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} groups of B/C")
    chunk = _auto_chunk(length) if chunk is None else max(1, min(int(chunk), length))
    B_t = B.float().permute(3, 0, 1, 2).contiguous()                              # (L, b, K, N)
    C_t = C.float().permute(3, 0, 1, 2).contiguous()
    y = _ChunkedScan.apply(u.float(), delta.float(), A.float().contiguous(), B_t, C_t,
                           None if D is None else D.float(), None if delta_bias is None else delta_bias.float(),
                           bool(delta_softplus), chunk)
    return y.to(dtype)


SCAN_ENV = "VLMSWAP_SCAN"
SCAN_MODES = ("auto", "reference", "chunked", "compiled", "fused")


def _scan_mode() -> str:
    mode = os.environ.get(SCAN_ENV, "auto").strip().lower() or "auto"
    if mode not in SCAN_MODES:
        raise ValueError(f"{SCAN_ENV}={os.environ[SCAN_ENV]!r}: expected one of {', '.join(SCAN_MODES)}")
    return mode


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The selective scan the models call. The environment variable VLMSWAP_SCAN, read at every call,
    picks the implementation:

    - `auto` (default, also when unset or empty): mamba_ssm's fused CUDA kernel for CUDA tensors
      when it is importable with its extension built; for CPU tensors the compiled C++ scan
      (`selective_scan_compiled`, built on first use) where it builds; else `selective_scan_chunked`.
      The choice on the CPU is said once per process on stderr;
    - `reference`: `selective_scan_reference`, the sequential loop (slow; for checks);
    - `chunked`: `selective_scan_chunked`, pure PyTorch, on any device;
    - `compiled`: the C++ scan, and a RuntimeError where it cannot be built or for non-CPU tensors;
    - `fused`: the CUDA kernel, and a RuntimeError where it cannot be used (not installed, no CUDA
      extension, or CPU tensors) instead of a silent fallback.
    Any other value is a ValueError.
    """
    mode = _scan_mode()
    if mode == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if mode == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if mode == "compiled":
        if u.device.type != "cpu":
            raise RuntimeError(f"{SCAN_ENV}=compiled: the compiled scan runs on CPU tensors, got {u.device}")
        return selective_scan_compiled(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if mode == "auto" and u.device.type == "cpu" and compiled_available():
        return selective_scan_compiled(u, delta, A, B, C, D, delta_bias, delta_softplus)
    kernel = fused_kernel() if u.is_cuda or mode == "fused" else None
    io_dtype = fused_io_dtype(u, delta, B, C)
    usable = kernel is not None and u.is_cuda and io_dtype in (torch.float32, torch.float16, torch.bfloat16)
    if mode == "fused" and not usable:
        reason = ("mamba_ssm's selective_scan_fn with its CUDA extension (selective_scan_cuda) is not "
                  "importable" if kernel is None else
                  f"the kernel needs CUDA tensors of float32/float16/bfloat16, got {io_dtype} on {u.device}")
        raise RuntimeError(f"{SCAN_ENV}=fused: {reason}; use {SCAN_ENV}=auto or chunked for the pure-PyTorch scan")
    if usable:
        return call_fused(kernel, u, delta, A, B, C, D, delta_bias, delta_softplus)
    return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)


def cross_scan(x: Tensor) -> Tensor:
    """(b, D, H, W) -> (b, 4, D, H*W): the four scan orders of VMamba's SS2D (backbones.md 1.2):
    row-major, column-major, row-major reversed, column-major reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: Tensor, height: int | None = None, width: int | None = None) -> Tensor:
    """Sum the four directions back into row-major order: (b, 4, D, H, W) or (b, 4, D, L) with
    height/width -> (b, D, H*W). The inverse of `cross_scan` up to the factor 4.

    A 5-D input is only a reshaped sequence (as VMamba's CrossMerge receives it): directions 1
    and 3 are in column-major order whatever the view says.
    """
    if y.dim() == 5:
        height, width = y.shape[-2:]
        y = y.flatten(3)
    if height is None or width is None:
        raise ValueError("cross_merge of a (b, 4, D, L) tensor needs height and width")
    b, k, d, length = y.shape
    if k != 4 or length != height * width:
        raise ValueError(f"cross_merge expects (b, 4, D, {height}*{width}), got {tuple(y.shape)}")
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return rows + cols.view(b, d, width, height).transpose(2, 3).reshape(b, d, length)
