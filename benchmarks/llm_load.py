"""Host memory per rank while the LLM loads for training, three ways, same checkpoint, on the CPU
(torchrun, gloo):

- `whole-fp32`: what every rank did before issue 16, and what the CPU path still does
  (`load_llm(folder, tokenizer)`: the full model in float32);
- `whole`: the full model in the training dtype (bf16), which separates the dtype's saving from
  partitioning's;
- `partitioned`: the GPU path (`load_llm(..., dtype=bf16, zero3_config=...)`: transformers builds
  the model under deepspeed.zero.Init and loads it shard by shard).

    python benchmarks/llm_load.py                         # a ~0.94 B Llama (2048 x 16 layers), 2 ranks
    python benchmarks/llm_load.py --hidden 1024 --layers 8    # ~0.17 B, for a machine with less memory

Writes a randomly initialised Llama (a transformers config, no download) to a temporary folder, then
starts each way with `torchrun --nproc_per_node WORLD`. Two figures per rank, both growth over the
rank's resident memory just before the load:
- held: resident memory once the load returned and every parameter has been read once (a loaded
  checkpoint may still be pages of the file that nothing has touched; training reads them all);
- peak: the largest resident memory during the load and that read (getrusage ru_maxrss).
Prints each way's largest rank (and, partitioned, every rank: rank 0 alone reads the checkpoint),
then the ratios of the whole loads' held memory to the partitioned one's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RECIPE = {"per_device_batch": 1, "max_grad_norm": 1.0, "precision": "bf16", "lr": 1e-5, "weight_decay": 0.0,
          "weight_decay_applied_to": "none"}
WAYS = ("whole-fp32", "whole", "partitioned")
PAGE = 4096


class _Vocabulary:
    """What load_llm needs of a tokenizer: its length and the pad id."""

    def __init__(self, size: int):
        self.size, self.pad_token_id = size, size - 1

    def __len__(self) -> int:
        return self.size


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resident_mb() -> float:
    """VmRSS now (Linux); the peak where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_mb()


def _release_free_heap() -> None:
    """Hand memory that was freed but kept by glibc's allocator back to the system (malloc_trim), so
    that "held" counts what the rank still uses, not what the load's temporaries left in its heap."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _local(p: torch.Tensor) -> torch.Tensor:
    """What this rank holds of a parameter: its ZeRO-3 shard (`ds_tensor`; the parameter itself is then
    an empty placeholder) or the whole tensor."""
    return getattr(p, "ds_tensor", p.data)


def _read_every_page(model: torch.nn.Module) -> None:
    """Read one element per memory page of every parameter this rank holds, without a full-size copy."""
    with torch.no_grad():
        for p in model.parameters():
            held = _local(p)
            if held.numel():
                float(held.reshape(-1)[:: max(1, PAGE // held.element_size())].float().sum())


def worker(way: str, folder: str, vocab: int) -> None:
    from vlmswap.language import load_llm
    from vlmswap.train.engine import deepspeed_config, distributed_env, init_deepspeed

    init_deepspeed()
    rank, world, _ = distributed_env()
    options = {"whole-fp32": {},
               "whole": {"dtype": torch.bfloat16},
               "partitioned": {"dtype": torch.bfloat16, "zero3_config": deepspeed_config(RECIPE, world, 1)}}[way]
    _release_free_heap()
    before = _resident_mb()
    model = load_llm(folder, _Vocabulary(vocab), **options)
    _read_every_page(model)
    _release_free_heap()
    held = [_local(p) for p in model.parameters()]
    full = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    # one file per rank: the ranks share torchrun's stdout, where two lines can interleave mid-line
    row = {"rank": rank, "way": way, "held_mb": _resident_mb() - before,
           "peak_mb": max(_peak_mb(), before) - before,
           "local_params": sum(t.numel() for t in held), "params": full,
           "local_mb": sum(t.numel() * t.element_size() for t in held) / 2**20}
    Path(folder, f"result.{way}.{rank}.json").write_text(json.dumps(row))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=None, help="default: 2.6875 x hidden (Llama's ratio)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.dir, args.vocab + 1)
        return {}

    from transformers import LlamaConfig, LlamaForCausalLM

    inter = args.intermediate or int(args.hidden * 2.6875)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=inter,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 128),
                         num_key_value_heads=max(1, args.hidden // 128))
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        del model
        print(f"Llama {args.hidden} x {args.layers} layers (intermediate {inter}, vocab {args.vocab}): "
              f"{n / 1e9:.2f} B parameters ({2 * n / 2**20:,.0f} MiB in bf16, {4 * n / 2**20:,.0f} MiB in fp32); "
              f"{args.world} ranks (torchrun, gloo); growth of a rank's resident memory over the load")
        # host memory on the CPU path, also on a machine with GPUs: the ranks see none (gloo, no NCCL)
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
        for way in WAYS:
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={args.world}", __file__, "--worker", way, "--dir", folder,
                                   "--vocab", str(args.vocab)], capture_output=True, text=True, env=env)
            rows = [json.loads(f.read_text()) for f in sorted(Path(folder).glob(f"result.{way}.*.json"))]
            if done.returncode or len(rows) != args.world:
                sys.exit(f"{way} load failed ({done.returncode}):\n{done.stderr[-3000:]}")
            results[way] = {"held_mb": max(r["held_mb"] for r in rows), "peak_mb": max(r["peak_mb"] for r in rows),
                            "local_params": max(r["local_params"] for r in rows),
                            "local_mb": max(r["local_mb"] for r in rows), "ranks": rows}
            r = results[way]
            print(f"{way:<12s}: held {r['held_mb']:7,.0f} MiB, peak {r['peak_mb']:7,.0f} MiB per rank (largest rank); "
                  f"parameters held by a rank {r['local_params'] / 1e6:7,.1f} M of {rows[0]['params'] / 1e6:,.1f} M "
                  f"({r['local_mb']:,.0f} MiB)")
            if way == "partitioned":
                for row in rows:
                    print(f"{'':14s}rank {row['rank']}: held {row['held_mb']:7,.0f} MiB, peak {row['peak_mb']:7,.0f} MiB")
    held = max(results["partitioned"]["held_mb"], 1.0)
    results["ratio_today"] = results["whole-fp32"]["held_mb"] / held
    results["ratio_dtype"] = results["whole"]["held_mb"] / held
    results["ratio_peak"] = results["whole-fp32"]["peak_mb"] / max(results["partitioned"]["peak_mb"], 1.0)
    print(f"held after the load: whole fp32 (before issue 16) / partitioned {results['ratio_today']:.2f}x, "
          f"whole bf16 / partitioned {results['ratio_dtype']:.2f}x; peak: whole fp32 / partitioned "
          f"{results['ratio_peak']:.2f}x")
    return results


if __name__ == "__main__":
    main()
