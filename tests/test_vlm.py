"""The VLM: visual tokens spliced after BOS, batched generation equals one-at-a-time, arch ids."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlmswap.language import IGNORE_INDEX, PAD_TOKEN, train_tokenizer
from vlmswap.study import load_study
from vlmswap.vlm import VLM, VLMHead, backbone_arch, inference_placement

ROOT = Path(__file__).resolve().parents[1]


class TinyVision(torch.nn.Module):
    embed_dim, mean, std = 8, (0.5,) * 3, (0.5,) * 3

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 8, 8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    tok = train_tokenizer(["USER: what color is it ASSISTANT: red blue green yes no 1 2 3"] * 5, 120)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    tok.padding_side = "left"
    # a random LM often ends at once; with a zero EOS row its logit is 0 while the best other
    # token's is almost surely positive, so generations are non-empty and comparable
    with torch.no_grad():
        llm.lm_head.weight[tok.eos_token_id] = 0.0
    return VLM(TinyVision(), VLMHead("mlp2", 8, llm).eval(), tok)


def test_visual_tokens_follow_bos_and_carry_no_label(vlm):
    ids = torch.tensor([[1, 5, 6, 7]])
    feats = torch.randn(1, 4, 8)
    embeds, mask, labels = vlm.head.embed(feats, ids, torch.ones_like(ids), ids.clone(), None)
    text = vlm.head.llm.get_input_embeddings()(ids)
    assert embeds.shape[1] == 8
    torch.testing.assert_close(embeds[0, 0], text[0, 0])           # BOS first
    torch.testing.assert_close(embeds[0, 1:5], vlm.head.projector(feats)[0])
    torch.testing.assert_close(embeds[0, 5:], text[0, 1:])
    assert labels[0, 1:5].eq(IGNORE_INDEX).all() and mask.sum() == 8


def test_text_only_rows_get_masked_zero_padding(vlm):
    ids = torch.tensor([[1, 5, 6]])
    _, mask, labels = vlm.head.embed(torch.randn(1, 2, 8), ids, torch.ones_like(ids), ids.clone(),
                                     torch.tensor([False]))
    assert mask.tolist() == [[1, 1, 1, 0, 0]] and labels[0, 3:].eq(IGNORE_INDEX).all()


def test_batched_generation_equals_one_at_a_time(vlm):
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 16, 16)
    prompts = ["USER: what ASSISTANT:", "USER: what color is it ASSISTANT:", "USER: it ASSISTANT:"]
    batched = vlm.generate(pixels, prompts, max_new_tokens=6)
    single = [vlm.generate(pixels[i:i + 1], [p], max_new_tokens=6)[0] for i, p in enumerate(prompts)]
    assert all(len(text) > 0 for text in batched)  # an empty == empty comparison proves nothing
    assert len(set(batched)) > 1  # the outputs depend on the input
    assert batched == single


def test_greedy_decode_gives_the_tokens_of_transformers_generate(vlm):
    from vlmswap.vlm import greedy_decode

    torch.manual_seed(2)
    pixels = torch.randn(3, 3, 16, 16)
    prompts = ["USER: what ASSISTANT:", "USER: what color is it ASSISTANT:", "USER: it ASSISTANT:"]
    embeds, attn = vlm._inputs(pixels, prompts)
    tok, llm = vlm.tokenizer, vlm.head.llm
    expected = llm.generate(inputs_embeds=embeds, attention_mask=attn, max_new_tokens=7, do_sample=False, num_beams=1,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
    ours = greedy_decode(llm, embeds, attn, 7, tok.eos_token_id, tok.pad_token_id)
    assert ours.shape[1] > 1 and torch.equal(ours, expected)
    # a row that stops early continues with pad, as generate does
    with torch.no_grad():
        saved = llm.lm_head.weight[tok.eos_token_id].clone()
        llm.lm_head.weight[tok.eos_token_id] = 5 * llm.lm_head.weight[int(ours[1, 1])]
    try:
        expected = llm.generate(inputs_embeds=embeds, attention_mask=attn, max_new_tokens=7, do_sample=False,
                                num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
        ours = greedy_decode(llm, embeds, attn, 7, tok.eos_token_id, tok.pad_token_id)
        assert torch.equal(ours, expected)
    finally:
        with torch.no_grad():
            llm.lm_head.weight[tok.eos_token_id] = saved


def test_batched_choice_probabilities_equal_one_at_a_time(vlm):
    torch.manual_seed(3)
    pixels = torch.randn(3, 3, 16, 16)
    prompts = ["USER: what ASSISTANT:", "USER: what color is it ASSISTANT:", "USER: it ASSISTANT:"]
    batched = vlm.choice_probabilities(pixels, prompts, ["yes", "no"])
    single = torch.cat([vlm.choice_probabilities(pixels[i:i + 1], [p], ["yes", "no"]) for i, p in enumerate(prompts)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_training_and_evaluation_splice_visual_tokens_identically(vlm):
    """The sequence the LLM sees for an image and a prompt is the same whether it comes through the
    training head (one unpadded row) or the evaluation batch (left-padded, several rows)."""
    torch.manual_seed(2)
    pixels = torch.randn(3, 3, 16, 16)
    prompts = ["USER: what ASSISTANT:", "USER: what color is it ASSISTANT: red", "USER: it ASSISTANT:"]
    embeds, attn = vlm._inputs(pixels, prompts)
    features = vlm.features(pixels)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([vlm.tokenizer(prompt, add_special_tokens=True).input_ids])
        train_embeds, train_mask, _ = vlm.head.embed(features[i:i + 1], ids, torch.ones_like(ids), ids.clone(),
                                                     torch.tensor([True]))
        n = int(train_mask.sum())
        assert int(attn[i].sum()) == n
        # (a batched matmul may round differently in the last bit of the projected features)
        torch.testing.assert_close(embeds[i, attn[i].bool()], train_embeds[0, :n], rtol=0, atol=1e-6)


def test_choice_probabilities_are_renormalized(vlm):
    probs = vlm.choice_probabilities(torch.randn(2, 3, 16, 16), ["USER: yes ASSISTANT:"] * 2, ["yes", "no"])
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2))


def test_timm_tag_decides_the_architecture_id():
    study = load_study(ROOT / "config" / "experiments.yaml")
    cell = next(c for c in study.cells if study.backbones[c.backbone].family == "maxvit"
                and "timm" in study.backbones[c.backbone].checkpoints[c.objective])
    assert backbone_arch(study, cell) == study.backbones[cell.backbone].checkpoints[cell.objective]["timm"]
    mini = load_study(ROOT / "config" / "mini.yaml")
    assert backbone_arch(mini, mini.cells[0]) == mini.backbones["vit-mini"].arch


def test_evaluation_and_diagnostics_run_in_bf16_on_the_rank_gpu_else_float32_on_the_cpu(monkeypatch):
    from vlmswap.train.launch import evaluation_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_placement() == ("cpu", torch.float32)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert evaluation_env() == (0, 1, "cpu", torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference_placement(3) == ("cuda:3", torch.bfloat16)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert evaluation_env() == (0, 1, "cuda:2", torch.bfloat16)
    # a shard of a multi-GPU evaluation: its GPU is selected before NCCL starts, and NCCL is told it
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend, kw.get("device_id"))))
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert evaluation_env() == (5, 8, "cuda:2", torch.bfloat16)
    assert calls == [("set_device", 2), ("init", "nccl", torch.device("cuda", 2))]


def test_a_trained_model_loads_for_bf16_inference_with_its_rope_frequencies_in_float32(tmp_path):
    """Evaluation on a GPU runs in bf16. The LLM loads in bf16 (as training loads it there), so the
    rotary frequencies stay float32 as in training; a float32 load cast with `.to(bf16)` rounds them
    too (0.78 rad off at position 640 for head dim 128), shifting every score a little."""
    import yaml
    from safetensors.torch import save_file

    from vlmswap.image import Geometry
    from vlmswap.language import build_mini_llm, load_llm, load_tokenizer
    from vlmswap.vision.vit import build_classifier
    from vlmswap.vlm import load_trained

    (tmp_path / "corpus.txt").write_text("USER: what color is it ASSISTANT: red blue green yes no\n" * 5)
    build_mini_llm(tmp_path / "corpus.txt", tmp_path / "llm", {"vocab_size": 96, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2})
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    arch = study["backbones"]["vit-mini"]["arch"] = {"patch_size": 16, "embed_dim": 32, "depth": 3, "num_heads": 2}
    torch.save(build_classifier(arch, Geometry(32, 32), 12).state_dict(), tmp_path / "vit.pth")
    study.pop("diagnostics")
    study["cells"] = [{"backbone": "vit-mini", "objective": "cls", "geometry": "32", "tap": "block-2",
                       "connector": "mlp2"}]
    study["tables"] = {"t": {"title": "t", "columns": "all", "cells": ["vit-mini@cls@32@block-2@mlp2"]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    loaded = load_study(tmp_path / "study.yaml")
    cell = loaded.cell("vit-mini@cls@32@block-2@mlp2")
    trained = VLMHead("mlp2", 32, load_llm(tmp_path / "llm", load_tokenizer(tmp_path / "llm")))
    model = tmp_path / "model"
    model.mkdir()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(model / "model.safetensors"))

    vlm = load_trained(loaded, cell, [tmp_path / "vit.pth"], tmp_path / "llm", model, "cpu", torch.bfloat16)
    assert {p.dtype for p in vlm.head.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in vlm.vision.parameters()} == {torch.bfloat16}
    rope = vlm.head.llm.model.rotary_emb.inv_freq
    assert rope.dtype == torch.float32 and torch.equal(rope, trained.llm.model.rotary_emb.inv_freq)
    for name, weight in trained.state_dict().items():  # the trained weights, rounded once to bf16
        assert torch.equal(vlm.head.state_dict()[name], weight.to(torch.bfloat16)), name
    answer = vlm.generate(torch.rand(1, 3, 32, 32), ["what color is it"], max_new_tokens=2)
    assert len(answer) == 1
