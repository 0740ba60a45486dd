"""The engine config and how training loads the LLM: fused Adam and a partitioned bf16 load on a GPU,
torch's AdamW and the whole float32 load on the CPU."""

import torch

from vlmswap.sections import Recipe
from vlmswap.train import engine, loop

RECIPE = {"per_device_batch": 4, "global_batch": 16, "max_grad_norm": 1.0, "precision": "bf16", "lr": 2e-5,
          "weight_decay": 0.1, "weight_decay_applied_to": "none"}


def test_the_optimizer_is_torchs_adamw_on_the_cpu_and_deepspeeds_fused_adam_on_a_gpu(monkeypatch):
    assert engine.deepspeed_config(RECIPE, 1, 4)["optimizer"]["params"]["torch_adam"] is True
    monkeypatch.setattr(engine, "on_gpu", lambda: True)
    assert engine.deepspeed_config(RECIPE, 1, 4)["optimizer"]["params"]["torch_adam"] is False


def test_training_loads_the_llm_whole_on_the_cpu_and_partitioned_in_bf16_on_a_gpu(monkeypatch):
    recipe = Recipe.parse({**RECIPE, "epochs": 1, "warmup_ratio": 0.0, "max_length": 64, "seed": 0}, "test", "recipe")
    assert loop.llm_load_options(recipe, 1) == {}
    monkeypatch.setattr(loop, "on_gpu", lambda: True)
    monkeypatch.setattr(engine, "on_gpu", lambda: True)
    options = loop.llm_load_options(recipe, 2)
    assert options["dtype"] == torch.bfloat16
    ds = options["zero3_config"]
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 16 and ds["bf16"]["enabled"]
    fp32 = Recipe.parse({**recipe.as_dict(), "precision": "fp32"}, "test", "recipe")
    assert loop.llm_load_options(fp32, 2)["dtype"] == torch.float32


def test_attention_is_sdpa_without_flash_attn_or_a_gpu():
    from vlmswap.language import attention_implementation

    assert attention_implementation() == ("flash_attention_2" if torch.cuda.is_available() else "sdpa")
