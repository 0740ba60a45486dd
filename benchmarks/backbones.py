"""Every backbone family of the paper grid at its paper resolution: build, run, time, and (on a GPU)
the fused selective-scan kernel against the pure-PyTorch path. The script to run once when a GPU
machine is lent (weights are random: nothing is downloaded; timing does not depend on the values).

    python benchmarks/backbones.py                              # cuda, bf16, batch 8, every family
    python benchmarks/backbones.py --device cpu --dtype float32 --batch 1 --families vit,vmamba --size 224

For each family, the first cell of config/experiments.yaml that uses it picks the architecture,
geometry and tap. Prints, per family: arch, geometry, tokens (checked against `num_tokens`), the
median time of one feature extraction over --repeats runs, and images/s. Then, for the selective
scan at VMamba-T's stage-1 and stage-3 shapes and Vim-S's: the fused kernel's time and its largest
relative difference to the chunked path (or why the fused path is not available here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlmswap.image import Geometry  # noqa: E402
from vlmswap.study import load_study  # noqa: E402
from vlmswap.vision import scan  # noqa: E402
from vlmswap.vision.registry import FAMILIES, build_backbone  # noqa: E402
from vlmswap.vlm import backbone_arch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def family_cells(config: Path, families: list[str]):
    study = load_study(config)
    picked = {}
    for cell in study.cells:
        family = study.backbones[cell.backbone].family
        if family in families and family not in picked:
            picked[family] = (cell, backbone_arch(study, cell))
    return [(f, *picked[f]) for f in families if f in picked]


def run_families(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for family, cell, arch in family_cells(args.config, args.families):
        geometry = Geometry(args.size, args.size) if args.size else cell.geometry
        with torch.device(device):
            backbone = build_backbone(family, arch, cell.tap, geometry)
        backbone = backbone.to(device, dtype).eval().requires_grad_(False)
        pixels = torch.randn(args.batch, backbone.in_channels, geometry.height, geometry.width, device=device,
                             dtype=dtype)
        with torch.no_grad():
            tokens = backbone(pixels)
            seconds = _timed(lambda: backbone(pixels), device, args.warmup, args.repeats)
        expected = backbone.num_tokens(geometry.width, geometry.height)
        rows.append({"family": family, "cell": cell.id, "geometry": str(geometry), "tokens": tokens.shape[1],
                     "tokens_ok": tokens.shape[1] == expected and bool(torch.isfinite(tokens).all()),
                     "ms": 1000 * seconds, "images_per_s": args.batch / seconds})
        print(f"{family:13s} {cell.backbone:30s} {str(geometry):9s} {tokens.shape[1]:5d} tokens "
              f"{'ok' if rows[-1]['tokens_ok'] else 'MISMATCH':8s} {1000 * seconds:9.2f} ms "
              f"{args.batch / seconds:9.1f} img/s", flush=True)
        del backbone, pixels, tokens
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


SCAN_SHAPES = [("VMamba-T stage-1", 4 * 96, 56 * 56, 1, 4), ("VMamba-T stage-3", 4 * 384, 14 * 14, 1, 4),
               ("Vim-S one direction", 768, 197, 16, 1)]


def run_scans(args, device: torch.device) -> None:
    if device.type != "cuda" or not scan.fused_available():
        print(f"fused selective scan: not available here ({'no CUDA device' if device.type != 'cuda' else 'mamba_ssm with its CUDA extension is not importable'}); "
              "the models use the chunked pure-PyTorch scan")
        return
    g = torch.Generator(device=device).manual_seed(0)
    for name, channels, length, n, groups in SCAN_SHAPES:
        b = args.batch
        u = torch.randn(b, channels, length, device=device, generator=g)
        delta = torch.randn(b, channels, length, device=device, generator=g)
        A = -torch.rand(channels, n, device=device, generator=g) - 0.1
        B = torch.randn(b, groups, n, length, device=device, generator=g)
        C = torch.randn(b, groups, n, length, device=device, generator=g)
        D, bias = torch.randn(channels, device=device, generator=g), torch.randn(channels, device=device, generator=g)
        os.environ[scan.SCAN_ENV] = "fused"
        fused = scan.selective_scan(u, delta, A, B, C, D, bias, True)
        t_fused = _timed(lambda: scan.selective_scan(u, delta, A, B, C, D, bias, True), device, args.warmup, args.repeats)
        os.environ[scan.SCAN_ENV] = "chunked"
        pure = scan.selective_scan(u, delta, A, B, C, D, bias, True)
        t_pure = _timed(lambda: scan.selective_scan(u, delta, A, B, C, D, bias, True), device, args.warmup, args.repeats)
        os.environ.pop(scan.SCAN_ENV)
        err = ((fused.float() - pure.float()).abs().max() / pure.float().abs().max()).item()
        print(f"scan {name:20s} fused {1000 * t_fused:8.3f} ms  chunked {1000 * t_pure:8.3f} ms  "
              f"ratio {t_pure / t_fused:6.1f}x  max rel diff {err:.1e}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "experiments.yaml")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated registry families")
    parser.add_argument("--size", type=int, default=0, help="square input size instead of each cell's (a CPU smoke run)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; allowed: {', '.join(FAMILIES)}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device here (use --device cpu for a smoke run)")
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{args.dtype}, batch {args.batch}; random weights")
    rows = run_families(args, device, dtype)
    run_scans(args, device)
    return rows


if __name__ == "__main__":
    main()
