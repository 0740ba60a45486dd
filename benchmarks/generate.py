"""Batched, KV-cached greedy generation against one-example-at-a-time generation, same process,
same model, same prompts: prints the throughput ratio and whether the outputs are identical.

    python benchmarks/generate.py                     # tiny mini-study-sized model on the CPU
    python benchmarks/generate.py --batch 16 --n 64   # the issue's target: >= 4x at batch 16

With --model-dir/--checkpoint/--config/--cell it uses a trained cell instead of random weights.
"""

from __future__ import annotations

import argparse
import time

import torch


def tiny_vlm(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmswap.image import Geometry
    from vlmswap.language import PAD_TOKEN, SYSTEM_PROMPT, train_tokenizer
    from vlmswap.vision.registry import build_backbone
    from vlmswap.vlm import VLM, VLMHead

    torch.manual_seed(0)
    corpus = [SYSTEM_PROMPT, "USER: What color is the circle? ASSISTANT: red blue green yes no 0 1 2 3 [0.25, 0.5]"]
    tok = train_tokenizer(corpus * 4, 300)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "left"
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                                       num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    vision = build_backbone("vit", {"patch_size": 16, "embed_dim": 96, "depth": 4, "num_heads": 4}, "block-2",
                            Geometry(96, 96))
    return VLM(vision, VLMHead("mlp2", vision.embed_dim, llm).eval(), tok)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n", type=int, default=48, help="examples")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args()

    from vlmswap.language import eval_prompt

    vlm = tiny_vlm(args)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.n, 3, 96, 96, generator=g)
    questions = ["What color is the circle?", "How many squares are there?", "Is there a red triangle?",
                 'Please provide the bounding box coordinate of the region this sentence describes: "the red circle"']
    prompts = [eval_prompt(questions[i % len(questions)] + " x" * (i % 5)) for i in range(args.n)]

    def run_single():
        return [vlm.generate(pixels[i:i + 1], [prompts[i]], args.max_new_tokens)[0] for i in range(args.n)]

    def run_batched():
        out = []
        for s in range(0, args.n, args.batch):
            out += vlm.generate(pixels[s:s + args.batch], prompts[s:s + args.batch], args.max_new_tokens)
        return out

    run_batched()  # warm-up
    t0 = time.perf_counter(); single = run_single(); t_single = time.perf_counter() - t0
    t0 = time.perf_counter(); batched = run_batched(); t_batched = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(single, batched))
    print(f"{args.n} examples, max {args.max_new_tokens} new tokens, threads {torch.get_num_threads()}")
    print(f"one at a time : {args.n / t_single:8.1f} examples/s")
    print(f"batch {args.batch:<7d}: {args.n / t_batched:8.1f} examples/s")
    print(f"ratio         : {t_single / t_batched:8.2f}x   identical outputs: {same}/{args.n}")


if __name__ == "__main__":
    main()
