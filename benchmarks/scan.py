"""The pure-PyTorch selective scan (`selective_scan_chunked`) against the sequential reference
(`selective_scan_reference`, a Python loop over the L positions), same process, same inputs, on the
CPU in float32 with delta_softplus=True, at the shapes the backbones call it with:

    VMamba-T stage 1 : u (b, 4*96, 56*56),  A (384, 1),   B/C (b, 4, 1, 3136)
    VMamba-T stage 3 : u (b, 4*384, 14*14), A (1536, 1),  B/C (b, 4, 1, 196)
    Vim-S, one direction: u (b, 768, 197),  A (768, 16),  B/C (b, 1, 16, 197)

    python benchmarks/scan.py                  # forward, 2 threads, batch 1
    python benchmarks/scan.py --backward       # forward + backward (the mini study trains through it)

Prints the median time of each over --repeats runs (after --warmup runs; the two are run alternately,
so a change of machine load hits both), their ratio, and the largest error relative to the output
scale (max|y - y_ref| / max|y_ref|; with --backward also over the input gradients), then whether the
issue's target, >= 5x faster than the reference at the stage-1 shape, is met.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

SHAPES = [  # name, channels KD, length L, state N, B/C groups K
    ("VMamba-T stage-1", 4 * 96, 56 * 56, 1, 4),
    ("VMamba-T stage-3", 4 * 384, 14 * 14, 1, 4),
    ("Vim-S one direction", 768, 197, 16, 1),
]


def make_inputs(batch: int, channels: int, length: int, d_state: int, groups: int, seed: int = 0):
    """Inputs distributed as in the initialised models: A = -(1..N) (A_log = log(1..N)), dt_bias the
    inverse softplus of a log-uniform dt in [1e-3, 1e-1], a small projected delta, D = 1."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = 0.1 * torch.randn(batch, channels, length, generator=g)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(channels, 1)
    B = torch.randn(batch, groups, d_state, length, generator=g)
    C = torch.randn(batch, groups, d_state, length, generator=g)
    D = torch.ones(channels)
    dt = torch.exp(torch.rand(channels, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))
    return u, delta, A, B, C, D, bias


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    return (y - ref).abs().max().item() / scale if scale else (y - ref).abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9, help="timed runs of each; the median is printed")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunk", type=int, default=None, help="chunk length of the pure path (default: automatic)")
    p.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    args = p.parse_args()

    from vlmswap.vision.scan import selective_scan_chunked, selective_scan_reference

    torch.set_num_threads(args.threads)

    def chunked(*a, **k):
        return selective_scan_chunked(*a, **k, chunk=args.chunk)

    def run(fn, inputs, weight):
        if not args.backward:
            with torch.no_grad():
                return fn(*inputs[:5], inputs[5], inputs[6], True), []
        leaves = [x.detach().requires_grad_() for x in inputs]
        y = fn(*leaves[:5], leaves[5], leaves[6], True)
        (y * weight).sum().backward()
        return y.detach(), [x.grad for x in leaves]

    print(f"threads {torch.get_num_threads()}, batch {args.batch}, float32, delta_softplus=True, "
          f"{'forward + backward' if args.backward else 'forward'}, median of {args.repeats} "
          f"(warm-up {args.warmup}), chunk {args.chunk or 'auto'}")
    print(f"{'shape':<21s} {'u (b, KD, L)':<17s} {'N':>3s} {'K':>2s} {'reference ms':>13s} {'chunked ms':>11s} "
          f"{'speed-up':>9s} {'max rel err':>12s}")
    ratios = {}
    for name, channels, length, d_state, groups in SHAPES:
        inputs = make_inputs(args.batch, channels, length, d_state, groups)
        weight = torch.randn(args.batch, channels, length, generator=torch.Generator().manual_seed(1))
        y_ref, g_ref = run(selective_scan_reference, inputs, weight)
        y, g = run(chunked, inputs, weight)
        error = max([relative_error(y, y_ref)] + [relative_error(a, b) for a, b in zip(g, g_ref)])
        for _ in range(args.warmup):
            run(selective_scan_reference, inputs, weight)
            run(chunked, inputs, weight)
        times = {selective_scan_reference: [], chunked: []}
        for _ in range(args.repeats):  # alternate, so that a change in machine load hits both
            for fn, samples in times.items():
                t0 = time.perf_counter()
                run(fn, inputs, weight)
                samples.append(time.perf_counter() - t0)
        t_ref, t_new = (1e3 * statistics.median(s) for s in times.values())
        ratios[name] = t_ref / t_new
        shape = f"({args.batch}, {channels}, {length})"
        print(f"{name:<21s} {shape:<17s} {d_state:>3d} {groups:>2d} {t_ref:>13.2f} {t_new:>11.2f} "
              f"{t_ref / t_new:>8.1f}x {error:>12.1e}")
    stage1 = ratios["VMamba-T stage-1"]
    print(f"stage-1 target (>= 5x faster than the reference): {'met' if stage1 >= 5 else 'NOT met'} "
          f"({stage1:.1f}x); no slower elsewhere: "
          f"{'yes' if min(ratios.values()) >= 1 else 'NO'} (min {min(ratios.values()):.1f}x)")


if __name__ == "__main__":
    main()
