"""Tokens/s of one training step of the VLM head (connector + Llama), DeepSpeed ZeRO-3 against a
plain PyTorch AdamW step on the same model and batches, in the same process.

    python benchmarks/train_step.py                                  # tiny model on the CPU
    python benchmarks/train_step.py --hidden 4096 --layers 32 --heads 32 --intermediate 11008 \
        --vocab 32064 --batch 16 --seq 2048 --visual 576 --vision-dim 1024 --bf16   # a 7B step on a GPU

Prints tokens/s of each and their ratio (ZeRO-3 / plain). On several GPUs launch it with torchrun.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=344)
    p.add_argument("--vocab", type=int, default=384)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=200, help="text tokens per example")
    p.add_argument("--visual", type=int, default=36, help="visual tokens per example")
    p.add_argument("--vision-dim", type=int, default=96)
    p.add_argument("--connector", default="mlp2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true")
    args = p.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmswap.train.engine import deepspeed_config, distributed_env, init_deepspeed, on_gpu, parameter_groups
    from vlmswap.vlm import VLMHead

    deepspeed = init_deepspeed()
    rank, world, local_rank = distributed_env()
    device = torch.device("cuda", local_rank) if on_gpu() else torch.device("cpu")
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq + args.visual + 8)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(config)
    if args.grad_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    head = VLMHead(args.connector, args.vision_dim, llm)
    plain = copy.deepcopy(head).to(device)
    n_params = sum(p.numel() for p in head.parameters())

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, args.visual, args.vision_dim, generator=g),
                torch.randint(3, args.vocab, (args.batch, args.seq), generator=g)) for _ in range(args.steps)]
    tokens_per_step = args.batch * (args.seq + args.visual)
    recipe = {"per_device_batch": args.batch, "max_grad_norm": 1.0, "precision": "bf16" if args.bf16 else "fp32",
              "lr": 1e-4, "weight_decay": 0.1, "weight_decay_applied_to": "matrices"}

    def run(step_fn) -> float:
        step_fn(*batches[0])  # warm-up (allocations, first-use paths)
        if on_gpu():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for features, ids in batches[1:]:
            step_fn(features, ids)
        if on_gpu():
            torch.cuda.synchronize()
        return tokens_per_step * (len(batches) - 1) / (time.perf_counter() - t0)

    optimizer = torch.optim.AdamW(parameter_groups(plain, 0.1), lr=1e-4)
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    def plain_step(features, ids):
        ids = ids.to(device)
        mask = torch.ones_like(ids)
        with torch.autocast(device.type, dtype=dtype, enabled=args.bf16):
            loss = plain(features.to(device), ids, mask, ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    engine, _, _, _ = deepspeed.initialize(model=head, model_parameters=parameter_groups(head, 0.1),
                                           config=deepspeed_config(recipe, world, 1))

    def zero3_step(features, ids):
        ids = ids.to(device)
        loss = engine(features.to(device, engine.module.projector.projector[0].weight.dtype), ids,
                      torch.ones_like(ids), ids).loss
        engine.backward(loss)
        engine.step()

    plain_tps = run(plain_step)
    zero_tps = run(zero3_step)
    if rank == 0:
        print(f"model: {n_params / 1e6:.2f} M trainable params, batch {args.batch} x ({args.seq} text + "
              f"{args.visual} visual) tokens, world {world}, device {device}, {'bf16' if args.bf16 else 'fp32'}")
        print(f"plain PyTorch AdamW step : {plain_tps:10.0f} tokens/s")
        print(f"DeepSpeed ZeRO-3 step    : {zero_tps:10.0f} tokens/s")
        print(f"ratio ZeRO-3 / plain     : {zero_tps / plain_tps:10.2f}")
        if on_gpu():
            print(f"peak GPU memory          : {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
