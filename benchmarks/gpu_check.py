"""The GPU check: one script, under 10 minutes on one GPU, for the day a GPU machine is lent.

    python benchmarks/gpu_check.py                       # cuda, paper sizes
    python benchmarks/gpu_check.py --smoke               # the CPU at tiny sizes (what the test runs)

Four parts, each printing its figures (nothing is downloaded; weights are random):
1. every backbone family's feature extraction at its paper resolution in bf16, and the fused
   selective-scan kernel against the pure path (benchmarks/backbones.py);
2. the selective scan's paths against the reference on this machine's CPU (benchmarks/scan.py,
   one repeat: the compiled CPU kernel the CPU-side jobs use);
3. one DeepSpeed ZeRO-3 training step (world of one) of the mlp2 connector and a ~1 B Llama
   (2048 x 16 layers, bf16, sequence 2048 of which 576 visual tokens, batch 4, fused Adam), put
   together as training does on a GPU (`load_llm(zero3_config=...)`, then `VLMHead`):
   tokens/s and MFU (6 x parameters x tokens/s over --peak-tflops);
4. batched generation against one at a time on the GPU in bf16 (benchmarks/generate.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Vocabulary:
    def __init__(self, size: int):
        self.size, self.pad_token_id = size, size - 1

    def __len__(self) -> int:
        return self.size


def train_step(hidden: int, layers: int, vocab: int, seq: int, batch: int, steps: int, peak_tflops: float,
               visual: int, vision_dim: int) -> dict:
    """ZeRO-3 steps of the VLM head (mlp2 connector + a Llama built from a config), assembled as
    train_cell assembles it on a GPU: the LLM loaded partitioned in bf16, the connector made in
    its dtype (`VLMHead`). Each example is `visual` projected feature tokens and `seq - visual` text
    tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmswap.language import load_llm
    from vlmswap.train.engine import deepspeed_config, init_deepspeed, on_gpu, optimizer_kind, parameter_groups
    from vlmswap.vlm import VLMHead

    deepspeed = init_deepspeed()
    device = torch.device("cuda") if on_gpu() else torch.device("cpu")
    recipe = {"per_device_batch": batch, "max_grad_norm": 1.0, "precision": "bf16", "lr": 1e-5, "weight_decay": 0.0,
              "weight_decay_applied_to": "none"}
    config = deepspeed_config(recipe, 1, 1)
    heads = max(1, hidden // 128)
    llm_config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=max(seq, 128))
    options = {"dtype": torch.bfloat16, "zero3_config": config}
    with tempfile.TemporaryDirectory() as folder:
        LlamaForCausalLM._from_config(llm_config, dtype=torch.bfloat16).save_pretrained(folder)
        model = load_llm(folder, _Vocabulary(vocab + 1), **options)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    head = VLMHead("mlp2", vision_dim, model)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in head.parameters())
    engine, _, _, _ = deepspeed.initialize(model=head, model_parameters=parameter_groups(head, 0.0), config=config)
    features = torch.randn(batch, visual, vision_dim, device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, vocab, (batch, seq - visual), device=device)
    mask, multimodal = torch.ones_like(ids), torch.ones(batch, dtype=torch.bool, device=device)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        loss = engine(features, ids, mask, ids.clone(), multimodal).loss
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = min(times[1:])
    tokens_s = batch * seq / step
    mfu = 6 * params * tokens_s / (peak_tflops * 1e12)
    print(f"train step: connector + Llama {params / 1e9:.2f} B, batch {batch} x {seq} tokens ({visual} visual), "
          f"{step * 1e3:.0f} ms/step, {tokens_s:,.0f} tokens/s, MFU {100 * mfu:.1f}% of {peak_tflops:g} TFLOP/s, "
          f"optimizer {optimizer_kind(engine)}, attention {model.config._attn_implementation}, loss {loss.item():.3f}")
    return {"params": params, "tokens_s": tokens_s, "mfu": mfu, "ms": step * 1e3}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (a test that every part runs)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--parts", default="backbones,scan,train,generate")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    out: dict = {}
    failed: list[str] = []
    t0 = time.perf_counter()

    def part(key: str, title: str, run) -> None:
        """One part; a failure is printed and the next part still runs (a device is lent briefly)."""
        if key not in parts:
            return
        print(f"== {title}", flush=True)
        try:
            out[key] = run()
        except Exception:
            traceback.print_exc()
            failed.append(key)

    backbone_options = (["--device", "cpu", "--dtype", "float32", "--batch", "1", "--size", "64", "--families",
                         "vit,vmamba", "--warmup", "0", "--repeats", "1"] if args.smoke else [])
    part("backbones", "1. backbones at paper resolution (bf16) and the fused scan",
         lambda: _script("backbones").main(backbone_options))
    part("scan", "2. the selective scan on the CPU",
         lambda: _script("scan").main(["--repeats", "1", "--warmup", "0"] + (["--scale", "16"] if args.smoke else [])))
    sizes = dict(hidden=64, layers=2, vocab=256, seq=32, batch=2, steps=1, visual=4, vision_dim=16) if args.smoke \
        else dict(hidden=2048, layers=16, vocab=32000, seq=2048, batch=4, steps=3, visual=576, vision_dim=1024)
    part("train", "3. one ZeRO-3 training step", lambda: train_step(**sizes, peak_tflops=args.peak_tflops))
    generate_options = (["--n", "4", "--batch", "2", "--max-new-tokens", "3", "--hidden", "32", "--layers", "1"]
                        if args.smoke else ["--n", "64", "--batch", "16", "--device", "cuda", "--dtype", "bfloat16"])
    part("generate", "4. batched generation", lambda: _script("generate").main(generate_options))
    print(f"gpu check done in {time.perf_counter() - t0:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
