"""Regenerate tests/fixtures/prismatic/fsdp_decay.txt: which weight decay Prismatic's FSDP strategy applies.

Prismatic's finetune recipe sets weight_decay 0.1, and `FSDPStrategy.run_setup`
(prismatic/training/strategies/fsdp.py) builds its two AdamW groups from `self.vlm.named_parameters()`
with the test `param.ndim <= 1 or name.endswith(".bias")` -- but only after wrapping the VLM in FSDP
with `use_orig_params=True`. This script runs that code as it is, on a real `PrismaticVLM` (a tiny
timm ViT through its `CLIPViTBackbone`, a tiny Llama through its `LLaMa2LLMBackbone`, its gelu-mlp
projector), frozen for the finetune stage, on 2 CPU ranks with gloo, and prints the groups it builds
and the shapes FSDP hands it, next to the groups the same test gives on the unwrapped model.

Stand-ins, for what the run needs but does not exercise: timm weights are not downloaded
(`pretrained=False`; the grouping does not read values); `check_bloat16_supported` (a CUDA/NCCL probe)
answers True; `torch.cuda.current_device()` answers the CPU device, so FSDP places the shards on the
CPU; and the `HYBRID_SHARD` of Prismatic's "full-shard" needs GPUs to form its node groups, so the
run uses FULL_SHARD, which is what hybrid sharding is on one node.

    PYTHONPATH=/tmp/tf438 python scripts/reference/prismatic_fsdp_decay.py [--prismatic PATH]

(/tmp/tf438: transformers 4.38.1, as for prismatic_prompts.py.)
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prismatic_env import REPO, add_prismatic  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.vicuna_snapshot import corpus, train_sentencepiece, write_vicuna_snapshot  # noqa: E402

WORLD = 2
# PrismaticVLM asserts that these are single tokens (its first-token scoring); a tiny tokenizer
# learns them when they are frequent in its corpus
TRIGGERS = ["True", "False", "Yes", "No"] + [chr(ord("A") + i) for i in range(26)]


def rank_main(rank: int, snapshot: str, port: int, prismatic: str | None, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    add_prismatic(prismatic)
    import timm
    from torch.distributed.fsdp import ShardingStrategy
    from transformers import LlamaForCausalLM

    create_model = timm.create_model
    timm.create_model = lambda name, pretrained=False, **kw: create_model(name, pretrained=False, **kw)
    torch.cuda.current_device = lambda: torch.device("cpu")
    import prismatic.training.strategies.base_strategy as base_strategy
    from prismatic.models.backbones.llm import llama2
    from prismatic.models.backbones.vision import clip_vit
    from prismatic.models.vlms import PrismaticVLM
    from prismatic.training.strategies.fsdp import FSDPStrategy

    base_strategy.check_bloat16_supported = lambda: True
    clip_vit.CLIP_VISION_BACKBONES["clip-vit-tiny"] = "vit_tiny_patch16_224"
    llama2.LLAMA2_MODELS["vicuna-v15-tiny"] = {"llm_family": "llama2", "llm_cls": LlamaForCausalLM,
                                               "hf_hub_path": snapshot}
    vision = clip_vit.CLIPViTBackbone("clip-vit-tiny", "letterbox", default_image_size=224)
    llm = llama2.LLaMa2LLMBackbone("vicuna-v15-tiny", llm_max_length=2048, use_flash_attention_2=False)
    vlm = PrismaticVLM("tiny", vision, llm, enable_mixed_precision_training=True, arch_specifier="gelu-mlp")
    vlm.freeze_backbones("finetune")

    def groups_of(named):  # the test of fsdp.py, on any (name, parameter) list
        decay, no_decay = [], []
        for name, p in named:
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append((name, tuple(p.shape)))
        return decay, no_decay

    intended = groups_of(vlm.named_parameters())
    strategy = FSDPStrategy(vlm=vlm, device_id=rank, epochs=1, max_steps=None, global_batch_size=4,
                            per_device_batch_size=2, learning_rate=2e-5, weight_decay=0.1, max_grad_norm=1.0,
                            lr_scheduler_type="linear-warmup+cosine-decay", warmup_ratio=0.03,
                            enable_gradient_checkpointing=True, enable_mixed_precision_training=True,
                            sharding_strategy="full-shard")
    strategy.fsdp_sharding_strategy = ShardingStrategy.FULL_SHARD
    with tempfile.TemporaryDirectory() as run_dir:
        strategy.run_setup(Path(run_dir), n_train_examples=100)
    wrapped = groups_of(strategy.vlm.named_parameters())
    applied = [(g["weight_decay"], len(g["params"]), sum(p.numel() for p in g["params"]),
                sorted({p.ndim for p in g["params"]})) for g in strategy.optimizer.param_groups]
    queue.put((rank, intended, wrapped, applied))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prismatic", help="checkout of TRI-ML/prismatic-vlms")
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/prismatic/fsdp_decay.txt")
    args = ap.parse_args()
    source = add_prismatic(args.prismatic)
    import torch
    import torch.multiprocessing as mp
    import transformers

    model = train_sentencepiece(corpus() + [" ".join(TRIGGERS)] * 400, vocab_size=400)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = write_vicuna_snapshot(Path(tmp) / "vicuna-tiny", model)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=rank_main, args=(r, str(snapshot), port, args.prismatic, queue))
                 for r in range(WORLD)]
        for p in procs:
            p.start()
        results = sorted(queue.get(timeout=600) for _ in procs)
        for p in procs:
            p.join()
            if p.exitcode:
                raise SystemExit(f"rank process exited with {p.exitcode}")

    report = io.StringIO()
    with redirect_stdout(report):
        print(f"# {source}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{WORLD} gloo ranks on CPU, FULL_SHARD, use_orig_params=True; configured weight_decay 0.1")
        print("# made by scripts/reference/prismatic_fsdp_decay.py")
        decay, no_decay = results[0][1]  # the unwrapped model is the same on every rank
        print(f"unwrapped model, trainable parameters: decay group {len(decay)} tensors "
              f"(ndim {sorted({len(s) for _, s in decay})}), no-decay group {len(no_decay)} tensors")
        for rank, _, (w_decay, w_no_decay), applied in results:
            print(f"rank {rank}: as FSDP hands them to run_setup: decay group {len(w_decay)} tensors, "
                  f"no-decay group {len(w_no_decay)} tensors, ndim {sorted({len(s) for _, s in w_no_decay})}")
            for weight_decay, n, numel, ndims in applied:
                print(f"rank {rank}: AdamW group weight_decay={weight_decay}: {n} tensors, {numel} elements, "
                      f"ndim {ndims}")
        decayed = sum(numel for r in results for wd, _, numel, _ in r[3] if wd > 0)
        print(f"elements under weight decay > 0 on any rank: {decayed}")
        print("effective weight decay: " + ("0 (every parameter is in the no-decay group)" if decayed == 0
                                            else "applied to some parameters"))
    text = report.getvalue()
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
