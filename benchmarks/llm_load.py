"""Host memory per rank while the LLM loads for training: today's whole load (every rank reads the
full model) against the partitioned load under ZeRO-3 (`load_llm(..., zero3_config=...)`, which
transformers runs under deepspeed.zero.Init), same checkpoint, same dtype, on the CPU (gloo).

    python benchmarks/llm_load.py                         # a ~1.1 B Llama (2048 x 16 layers), 2 ranks, bf16
    python benchmarks/llm_load.py --hidden 1024 --layers 8    # ~0.2 B, for a machine with less memory

Writes a randomly initialised Llama (a transformers config, no download) to a temporary folder, then
starts each way with `torchrun --nproc_per_node WORLD` and prints, per way, the largest growth of a
rank's peak resident memory (getrusage ru_maxrss) across the load, and the ratio of the two.
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


class _Vocabulary:
    """What load_llm needs of a tokenizer: its length and the pad id."""

    def __init__(self, size: int):
        self.size, self.pad_token_id = size, size - 1

    def __len__(self) -> int:
        return self.size


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, folder: str, vocab: int) -> None:
    from vlmswap.language import load_llm
    from vlmswap.train.engine import deepspeed_config, distributed_env, init_deepspeed

    init_deepspeed()
    rank, world, _ = distributed_env()
    before = _peak_mb()
    options = {"zero3_config": deepspeed_config(RECIPE, world, 1)} if mode == "partitioned" else {}
    model = load_llm(folder, _Vocabulary(vocab), dtype=torch.bfloat16, **options)
    local = sum(p.numel() for p in model.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    # one file per rank: the ranks share torchrun's stdout, where two lines can interleave mid-line
    row = {"rank": rank, "mode": mode, "before_mb": before, "peak_mb": _peak_mb(), "local_params": local,
           "params": full}
    Path(folder, f"result-{mode}-{rank}.json").write_text(json.dumps(row))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=None, help="default: 2.6875 x hidden (Llama's ratio)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--worker", choices=("whole", "partitioned"), help=argparse.SUPPRESS)
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
              f"{n / 1e9:.2f} B parameters, bf16 ({2 * n / 2**20:,.0f} MiB); {args.world} ranks (torchrun, gloo)")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for mode in ("whole", "partitioned"):
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={args.world}", __file__, "--worker", mode, "--dir", folder,
                                   "--vocab", str(args.vocab)], capture_output=True, text=True, env=env)
            rows = [json.loads(f.read_text()) for f in sorted(Path(folder).glob(f"result-{mode}-*.json"))]
            if done.returncode or len(rows) != args.world:
                sys.exit(f"{mode} load failed ({done.returncode}):\n{done.stderr[-3000:]}")
            growth = max(r["peak_mb"] - r["before_mb"] for r in rows)
            results[mode] = {"growth_mb": growth, "local_params": max(r["local_params"] for r in rows)}
            print(f"{mode:<12s}: peak host memory growth per rank {growth:9,.0f} MiB; parameters held by a rank "
                  f"{results[mode]['local_params'] / 1e6:9,.1f} M of {rows[0]['params'] / 1e6:,.1f} M")
    ratio = results["whole"]["growth_mb"] / max(results["partitioned"]["growth_mb"], 1.0)
    print(f"whole / partitioned: {ratio:.2f}x less host memory per rank when partitioned")
    results["ratio"] = ratio
    return results


if __name__ == "__main__":
    main()
