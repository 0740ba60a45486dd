"""The engine config and how training loads the LLM: fused Adam and a partitioned bf16 load on a GPU,
torch's AdamW and the whole float32 load on the CPU."""

import pytest
import torch

from vlmswap.sections import Recipe
from vlmswap.train import engine, loop

RECIPE = {"per_device_batch": 4, "global_batch": 16, "max_grad_norm": 1.0, "precision": "bf16", "lr": 2e-5,
          "weight_decay": 0.1, "weight_decay_applied_to": "none"}
REAL_PROBE = engine.fused_adam_unavailable


@pytest.fixture(autouse=True)
def no_op_build(monkeypatch):
    """A test that pretends to be on a GPU never runs the real probe (on a CPU it would JIT-build
    DeepSpeed's fused Adam for the CPU, about a minute), and no said-once note or probe result
    outlives its test."""
    monkeypatch.setattr(engine, "fused_adam_unavailable", lambda: None)
    yield
    engine._note_once.cache_clear()
    REAL_PROBE.cache_clear()


def test_the_optimizer_is_torchs_adamw_on_the_cpu_and_deepspeeds_fused_adam_on_a_gpu(monkeypatch):
    monkeypatch.setattr(engine, "on_gpu", lambda: False)
    params = engine.deepspeed_config(RECIPE, 1, 4)["optimizer"]["params"]
    assert params["torch_adam"] is True and "fused" not in params
    monkeypatch.setattr(engine, "on_gpu", lambda: True)  # the op is prebuilt or builds (no_op_build)
    params = engine.deepspeed_config(RECIPE, 1, 4)["optimizer"]["params"]
    assert params["torch_adam"] is False and "fused" not in params


def test_a_gpu_node_that_cannot_build_deepspeeds_fused_adam_gets_torchs_fused_adamw_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(engine, "on_gpu", lambda: True)
    reason = "CUDA_HOME does not exist, unable to compile CUDA op(s)"
    monkeypatch.setattr(engine, "fused_adam_unavailable", lambda: reason)
    for _ in range(3):  # one training builds the config twice (the partitioned load, then the engine)
        params = engine.deepspeed_config(RECIPE, 1, 4)["optimizer"]["params"]
        assert params["torch_adam"] is True and params["fused"] is True
    said = capsys.readouterr().err.splitlines()
    assert said == ["vlmswap.train: DeepSpeed's fused Adam is unavailable (CUDA_HOME does not exist, unable to "
                    "compile CUDA op(s)); the optimizer is torch's fused AdamW"]


def test_the_fused_adam_probe_reports_a_failed_load_instead_of_raising(monkeypatch):
    from deepspeed.ops.op_builder import FusedAdamBuilder

    def no_toolkit(self, verbose=False):
        raise RuntimeError("CUDA_HOME does not exist, unable to compile CUDA op(s)\n(more detail)")

    monkeypatch.setattr(FusedAdamBuilder, "load", no_toolkit)
    REAL_PROBE.cache_clear()
    assert REAL_PROBE() == "CUDA_HOME does not exist, unable to compile CUDA op(s)"


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
    import importlib.util

    from vlmswap.language import attention_implementation

    from vlmswap import language

    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None \
        and language._flash_attn_import_error() is None
    assert attention_implementation(torch.bfloat16) == ("flash_attention_2" if flash else "sdpa")
    assert attention_implementation(torch.float32) == "sdpa"


def test_flash_attention_only_for_a_half_precision_model_on_a_gpu(monkeypatch):
    """flash-attn has no float32 kernel: an fp32 recipe on a GPU (the mini configs) gets SDPA."""
    import importlib.util

    from vlmswap import language

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(language, "_flash_attn_import_error", lambda: None)  # as if it imports
    assert language.attention_implementation(torch.bfloat16) == "flash_attention_2"
    assert language.attention_implementation(torch.float16) == "flash_attention_2"
    assert language.attention_implementation(torch.float32) == "sdpa"


def test_a_flash_attn_build_that_does_not_import_falls_back_to_sdpa_and_says_why(monkeypatch, capsys):
    import builtins
    import importlib.util

    from vlmswap import language

    real_import, real_find_spec = builtins.__import__, importlib.util.find_spec

    def broken(name, *args, **kwargs):
        if name == "flash_attn":
            raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(builtins, "__import__", broken)
    language._flash_attn_import_error.cache_clear()
    try:
        assert language.attention_implementation(torch.bfloat16) == "sdpa"
        assert language.attention_implementation(torch.bfloat16) == "sdpa"
    finally:
        language._flash_attn_import_error.cache_clear()
    assert capsys.readouterr().err.splitlines() == [
        "vlmswap.language: flash-attn does not import (flash_attn_2_cuda.so: undefined symbol: "
        "_ZN3c104cuda9SetDeviceEi); attention uses torch's SDPA"]


# One ZeRO-3 engine (our config and parameter groups) against plain torch AdamW on the same weights:
# an image step, then two text-only steps, as split-modality batches make them. The connector must
# see a zero gradient on the text-only steps; ZeRO-3 alone would hand the optimizer the image step's
# connector gradient again (the cause of inexact resumes: a resumed run starts with a zero buffer).
ZERO3_VS_TORCH = r"""
import copy, json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from vlmswap.train import engine as engine_module
from vlmswap.train.engine import deepspeed_config, init_deepspeed, parameter_groups
from vlmswap.vlm import VLMHead

deepspeed = init_deepspeed()
torch.manual_seed(0)
llm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2))
head = VLMHead("mlp2", 8, llm)
reference = copy.deepcopy(head)
recipe = {"per_device_batch": 2, "global_batch": 2, "max_grad_norm": 0.0, "precision": "fp32", "lr": 1e-2,
          "weight_decay": 0.0, "weight_decay_applied_to": "none"}
config = deepspeed_config(recipe, 1, 1)
if sys.argv[1:] == ["no-fused-op"]:  # the settings a GPU node without DeepSpeed's fused Adam gets
    engine_module.on_gpu, engine_module.fused_adam_unavailable = (lambda: True), (lambda: "no nvcc")
    config["optimizer"]["params"].update(engine_module.adam_settings())
    engine_module.on_gpu = lambda: False
engine, *_ = deepspeed.initialize(model=head, model_parameters=parameter_groups(head, 0.0), config=config)
inner = engine.optimizer.optimizer
assert type(inner) is torch.optim.AdamW and bool(inner.defaults["fused"]) == (sys.argv[1:] == ["no-fused-op"])
optimizer = torch.optim.AdamW(parameter_groups(reference, 0.0), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
steps = [(torch.randn(2, 4, 8), torch.randint(0, 64, (2, 6))), (None, torch.randint(0, 64, (2, 6))),
         (None, torch.randint(0, 64, (2, 6)))]
for features, ids in steps:
    mask, mm = torch.ones_like(ids), torch.full((2,), features is not None)
    loss = engine(features, ids, mask, ids.clone(), mm).loss
    engine.backward(loss)
    engine.step()
    optimizer.zero_grad(set_to_none=True)
    reference(features, ids, mask, ids.clone(), mm).loss.backward()
    for p in reference.parameters():
        if p.grad is None:  # ZeRO-3 steps every parameter; an unused one with a zero gradient
            p.grad = torch.zeros_like(p)
    optimizer.step()
state = engine._zero3_consolidated_16bit_state_dict()
gaps = {name: (state[name].float() - p.detach()).abs().max().item() for name, p in reference.named_parameters()}
print(json.dumps(gaps))
"""


@pytest.mark.parametrize("optimizer", ["torch-adamw", "no-fused-op"])
def test_a_text_only_step_gives_the_connector_a_zero_gradient_under_zero3(tmp_path, optimizer):
    """Also the fallback optimizer (torch's fused AdamW, what a GPU node without DeepSpeed's op
    gets; fused AdamW runs on the CPU too): the same update as torch's reference AdamW."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = subprocess.run([sys.executable, "-c", ZERO3_VS_TORCH, optimizer], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    gaps = json.loads(run.stdout.strip().splitlines()[-1])
    assert any(name.startswith("projector.") for name in gaps) and len(gaps) > 10
    assert max(gaps.values()) < 1e-5, {k: v for k, v in gaps.items() if v >= 1e-5}


# The GPU training path's model assembly, run on DeepSpeed's CPU backend: the LLM loaded partitioned in
# bf16 (llm_load_options as on a GPU), the connector beside it, the engine, an image step and a
# text-only step, then the weights as training saves them. Before stop 27 the float32 connector next
# to the bf16 partitioned LLM failed `deepspeed.initialize` (zero/utils.py `defragment` asserts one
# dtype), so every bf16 training on a GPU would have stopped there.
GPU_ASSEMBLY = r"""
import json, sys, tempfile
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from vlmswap.language import load_llm
from vlmswap.sections import Recipe
from vlmswap.train import loop
from vlmswap.train.engine import deepspeed_config, init_deepspeed, parameter_groups
from vlmswap.vlm import VLMHead

class Vocabulary:
    def __init__(self, size):
        self.size, self.pad_token_id = size, size - 1
    def __len__(self):
        return self.size

deepspeed = init_deepspeed()
recipe = Recipe.parse({"per_device_batch": 2, "global_batch": 2, "max_grad_norm": 1.0, "precision": "bf16",
                       "lr": 1e-3, "weight_decay": 0.0, "weight_decay_applied_to": "none", "epochs": 1,
                       "warmup_ratio": 0.0, "max_length": 64, "seed": 0}, "test", "recipe")
loop.on_gpu = lambda: True  # the load a GPU rank does; the engine config stays the CPU's
options = loop.llm_load_options(recipe, 1)
with tempfile.TemporaryDirectory() as folder:
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    llm = load_llm(folder, Vocabulary(65), **options)
head = VLMHead("mlp2", 8, llm)
engine, *_ = deepspeed.initialize(model=head, model_parameters=parameter_groups(head, 0.0),
                                  config=deepspeed_config(recipe.as_dict(), 1, 1))
losses = []
for features in (torch.randn(2, 4, 8), None):
    ids = torch.randint(0, 64, (2, 6))
    loss = engine(features, ids, torch.ones_like(ids), ids.clone(), torch.full((2,), features is not None)).loss
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
state = engine._zero3_consolidated_16bit_state_dict()
print(json.dumps({"losses": losses, "saved": sorted({str(t.dtype) for t in state.values()}),
                  "projector": str(next(head.projector.parameters()).dtype),
                  "rope": str(llm.model.rotary_emb.inv_freq.dtype),
                  "partitioned": all(hasattr(p, "ds_id") for p in head.parameters())}))
"""


def test_the_gpu_path_trains_a_bf16_connector_beside_the_partitioned_bf16_llm(tmp_path):
    import json
    import math
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = subprocess.run([sys.executable, "-c", GPU_ASSEMBLY], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["projector"] == "torch.bfloat16" and result["saved"] == ["torch.bfloat16"]
    assert result["partitioned"] and all(math.isfinite(loss) for loss in result["losses"])
    assert result["rope"] == "torch.float32"  # what evaluation's bf16 load must keep too


def test_a_resume_under_another_optimizer_says_it_is_not_bit_identical():
    class Inner:
        def __init__(self, fused):
            self.defaults = {"fused": fused}

    class Engine:
        def __init__(self, inner):
            self.optimizer = type("Stage3", (), {"optimizer": inner})()

    FusedAdam = type("FusedAdam", (Inner,), {})
    AdamW = type("AdamW", (Inner,), {})
    assert engine.optimizer_kind(Engine(FusedAdam(None))) == "FusedAdam"
    assert engine.optimizer_kind(Engine(AdamW(True))) == "AdamW (fused)"
    said = []
    loop._check_resumed_optimizer({"optimizer": "FusedAdam"}, "FusedAdam", said.append)
    loop._check_resumed_optimizer({}, "AdamW (fused)", said.append)  # state from before the record
    assert said == []
    loop._check_resumed_optimizer({"optimizer": "FusedAdam"}, "AdamW (fused)", said.append)
    assert len(said) == 1 and "saved by FusedAdam, this node steps with AdamW (fused)" in said[0]
