"""A tiny stand-in for the lmsys/vicuna-7b-v1.5 hub snapshot, built offline.

The tokenizer is a SentencePiece BPE model trained with Llama's settings (byte fallback, split
digits, dummy prefix, no whitespace normalization; unk 0, bos 1, eos 2, no pad id); the folder
has the snapshot's tokenizer files (`tokenizer.model`, `tokenizer_config.json` naming
`LlamaTokenizer`, `special_tokens_map.json` with pad `<unk>`) and a `config.json` of a small
Llama with random weights. Used by tests/test_language_llama.py and by
scripts/reference/prismatic_prompts.py, which runs Prismatic's own code on the same files.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Iterable


def corpus(n: int = 1500, seed: int = 0) -> list[str]:
    """Chat-like English lines with digits and punctuation, deterministic."""
    rng = random.Random(seed)
    words = ("the a an of what color is are how many shapes there left right above below circle square "
             "triangle red blue green yes no USER ASSISTANT chat between curious user and artificial "
             "intelligence assistant gives helpful detailed polite answers to questions image answer "
             "question using single word phrase").split()
    punct = [".", "?", "!", ",", ":", "'s", ""]
    lines = []
    for _ in range(n):
        line = " ".join(rng.choice(words) + rng.choice(punct) for _ in range(rng.randint(2, 14)))
        if rng.random() < 0.3:
            line += f" {rng.randint(0, 2000)}"
        lines.append(line)
    return lines


def train_sentencepiece(lines: Iterable[str], vocab_size: int = 320) -> bytes:
    """A SentencePiece BPE model with Llama-2's trainer settings, as bytes."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1, minloglevel=2)
    return model.getvalue()


def _token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


def write_vicuna_snapshot(out_dir: Path, sp_model: bytes, weights: bool = True, seed: int = 0) -> Path:
    """Lay out a Vicuna-v1.5-like snapshot in `out_dir` (tokenizer files; config and weights if asked)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(sp_model)
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": _token("<s>"), "clean_up_tokenization_spaces": False,
        "eos_token": _token("</s>"), "legacy": False, "model_max_length": 4096, "pad_token": None,
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": _token("<unk>"),
    }, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": _token("<s>"), "eos_token": _token("</s>"), "pad_token": "<unk>", "unk_token": _token("<unk>"),
    }, indent=2))
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "hidden_act": "silu", "initializer_range": 0.02,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
              "torch_dtype": "float32", "use_cache": True}
    if weights:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(out_dir)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))  # the snapshot's own keys, after saving
    return out_dir
