"""The LLM side: tokenizer, Vicuna v1.5 prompt, label masking, and the mini world's tiny Llama.

Facts follow Prismatic (../shared/reference/prismatic_spec.md 1.4-1.5):
- system prompt, `USER: {msg} ASSISTANT: ` human turns, `{msg}</s>` assistant turns;
- each turn is tokenized separately and right-stripped; only turn 0 gets BOS;
- human turns (and BOS) are masked with IGNORE_INDEX, assistant turns keep their ids incl. `</s>`;
- text is truncated to `max_length` tokens before the visual tokens are inserted after BOS;
- a `<PAD>` token is added and embeddings are resized with `pad_to_multiple_of=64`.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from vlmswap.evaluate.prompts import SYSTEM_PROMPT  # the evaluation prompts' system prompt, one definition
from vlmswap.sections import MINI_LLM_DEFAULTS

IGNORE_INDEX = -100
IMAGE_TAG = "<image>"
PAD_TOKEN = "<PAD>"
# what a Hugging Face model folder holds its tokenizer in (fast, SentencePiece, BPE/WordPiece vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tokenizer.tiktoken")


class LLMFolderError(ValueError):
    """An LLM folder (--llm) that cannot be loaded; the message names the folder, what is missing and the fix."""


def _refetch(llm_dir: Path) -> str:
    return f"fetch the LLM again (delete {llm_dir} and rerun the fetch step, or `vlmswap fetch-llm`)"


def check_llm_folder(llm_dir: Path, part: str) -> None:
    """That `llm_dir` is a local folder with the `part` ("tokenizer": a tokenizer file; "model":
    config.json and weights) before transformers reads it: it would take a missing folder for a hub id,
    and ask for sentencepiece or tiktoken to be installed when a folder has no tokenizer file."""
    if not llm_dir.is_dir():
        raise LLMFolderError(f"{llm_dir}: {'not a folder' if llm_dir.exists() else 'no such folder'}; pass the "
                             "LLM folder the fetch step wrote (resources/<study>/llm)")
    if part == "tokenizer" and not any((llm_dir / name).is_file() for name in TOKENIZER_FILES):
        raise LLMFolderError(f"{llm_dir}: no tokenizer file (one of {', '.join(TOKENIZER_FILES)}); {_refetch(llm_dir)}")
    if part == "model" and not (llm_dir / "config.json").is_file():
        raise LLMFolderError(f"{llm_dir}: no config.json, so not a model folder; {_refetch(llm_dir)}")
    if part == "model" and not any(llm_dir.glob("*.safetensors")) and not any(llm_dir.glob("*.bin")):
        raise LLMFolderError(f"{llm_dir}: no weights (*.safetensors or *.bin); {_refetch(llm_dir)}")


def turn_text(message: str) -> str:
    """What Prismatic's Vicuna prompter keeps of any turn, the assistant's included: `<image>` removed,
    then stripped (`VicunaV15ChatPromptBuilder.add_turn`)."""
    return message.replace(IMAGE_TAG, "").strip()


def human_turn(message: str, first: bool) -> str:
    message = turn_text(message)
    prefix = f"{SYSTEM_PROMPT.strip()} " if first else ""
    return f"{prefix}USER: {message} ASSISTANT: "


def assistant_turn(message: str) -> str:
    message = turn_text(message)
    return f"{message if message != '' else ' '}</s>"  # an empty reply becomes one space, as in Prismatic


def eval_prompt(message: str) -> str:
    """The single-turn prompt used at evaluation (Prismatic's `get_prompt()`: no trailing space)."""
    return human_turn(message, first=True).rstrip()


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_conversation(tokenizer, conversation: Sequence[Mapping[str, str]], max_length: int) -> Encoded:
    """Tokenize a LLaVA conversation turn by turn with Prismatic's label masking."""
    input_ids: list[int] = []
    labels: list[int] = []
    for idx, turn in enumerate(conversation):
        expected = "human" if idx % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise ValueError(f"turn {idx} is from {turn.get('from')!r}, expected {expected!r} (turns must alternate)")
        text = human_turn(turn["value"], first=idx == 0) if expected == "human" else assistant_turn(turn["value"])
        ids = tokenizer(text.rstrip(), add_special_tokens=idx == 0).input_ids
        input_ids.extend(ids)
        labels.extend([IGNORE_INDEX] * len(ids) if expected == "human" else ids)
    # BOS never carries a label (Prismatic sets it to IGNORE in the dataset); truncate text only
    return Encoded(input_ids[:max_length], labels[:max_length])


def load_tokenizer(llm_dir: str | Path):
    """Load the LLM's tokenizer as Prismatic's Llama-2 backbone does (`llama2.py`, `base_llm.py`):
    `<PAD>` is always added as the pad token (Vicuna's own pad, `<unk>`, is replaced), padding on the
    right, and BOS must be prepended by `add_special_tokens=True`."""
    from transformers import AutoTokenizer

    llm_dir = Path(llm_dir)
    check_llm_folder(llm_dir, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    if (llm_dir / "tokenizer.model").is_file():
        _sentencepiece_whitespace(tokenizer)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    with_bos = tokenizer("Test 123", add_special_tokens=True).input_ids
    without = tokenizer("Test 123", add_special_tokens=False).input_ids
    if tokenizer.bos_token_id is None or with_bos[0] != tokenizer.bos_token_id or without[0] == tokenizer.bos_token_id:
        raise LLMFolderError(f"{llm_dir}: the tokenizer does not prepend BOS exactly when add_special_tokens=True "
                         f"(got {with_bos[:3]} / {without[:3]}); the visual tokens are inserted after BOS, so "
                         "use a Llama-family tokenizer (check add_bos_token in tokenizer_config.json)")
    return tokenizer


def _sentencepiece_whitespace(tokenizer) -> None:
    """Make a tokenizer converted from a SentencePiece `tokenizer.model` treat spaces as SentencePiece does.

    transformers 5 converts Llama's model with a `Metaspace(prepend_scheme="first")` pre-tokenizer,
    which folds a leading space into the dummy prefix (" x" -> "▁x"); SentencePiece, and the
    transformers 4.x `LlamaTokenizerFast` that Prismatic ran, prepend "▁" and then map every space to
    "▁" (" x" -> "▁▁x"). Prismatic tokenizes an empty reply as " </s>", so the two differ there.
    """
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace):
        return
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None


def attention_implementation(dtype: torch.dtype) -> str:
    """flash_attention_2 for a bf16/fp16 model on a GPU with flash-attn installed (the `gpu` extra)
    and importable, else torch's SDPA (which itself picks flash / memory-efficient kernels on a GPU).
    flash-attn has no float32 kernel, so an fp32 recipe (the mini configs) on a GPU gets SDPA. A
    flash-attn build that fails to import (compiled against another torch: "undefined symbol") falls
    back to SDPA and says why once on stderr, instead of failing the model load."""
    import importlib.util

    if dtype not in (torch.bfloat16, torch.float16) or not torch.cuda.is_available() \
            or importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    return "sdpa" if _flash_attn_import_error() else "flash_attention_2"


@functools.cache
def _flash_attn_import_error() -> str | None:
    try:
        import flash_attn  # noqa: F401
    except Exception as error:  # ImportError / OSError from its compiled extension
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"vlmswap.language: flash-attn does not import ({first}); attention uses torch's SDPA",
              file=sys.stderr, flush=True)
        return first
    return None


def load_llm(llm_dir: str | Path, tokenizer, dtype: torch.dtype = torch.float32,
             zero3_config: Mapping[str, Any] | None = None, attn_implementation: str | None = None):
    """Load the causal LM and resize its embeddings as Prismatic does after adding `<PAD>`:
    always, to `len(tokenizer)` rounded up to a multiple of 64 (Vicuna: 32001 tokens in 32064 rows).

    zero3_config: a DeepSpeed ZeRO-3 config (the engine's). transformers then builds the model under
    `deepspeed.zero.Init` (its `HfDeepSpeedConfig`, created before `from_pretrained`, is what tells it
    to) and loads the checkpoint shard by shard into partitioned parameters: each rank holds 1/world
    of the weights instead of a full copy (Vicuna-7B in float32: ~28 GB per rank otherwise). Needs the
    process group (train.engine.init_deepspeed) first. `dtype` is the dtype the weights load in (pass
    the training dtype; evaluation passes its inference dtype, so that the rotary frequencies stay
    float32 as in training instead of being rounded by a later `.to(bf16)`). attn_implementation:
    None for `attention_implementation(dtype)`."""
    from transformers import AutoModelForCausalLM

    check_llm_folder(Path(llm_dir), "model")
    keep = None
    if zero3_config is not None:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(dict(zero3_config))  # weakly referenced by transformers: keep it alive
    attention = attn_implementation or attention_implementation(dtype)
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=dtype, attn_implementation=attention)
    model.config.pad_token_id = tokenizer.pad_token_id
    # new rows drawn from the model's initializer, as transformers 4.x (Prismatic's) did; 5.x would
    # otherwise initialise them around the mean of the existing rows
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
    if keep is not None:
        model._vlmswap_ds_config = keep
    return model


# ----------------------------------------------------------------------------------------------
# The mini world's LLM: a Llama-architecture model with a tokenizer trained on the world's text


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level-free BPE with SentencePiece-style `▁` word boundaries, like Llama's tokenizer:
    every separately tokenized turn starts with `▁`, BOS is added when `add_special_tokens=True`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # "\n" is in the alphabet although no corpus line holds one: prompts such as VQA-v2's put it
    # between question and instruction, and Llama's byte fallback gives it a token (<0x0A>), not <unk>
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], min_frequency=2,
                                  initial_alphabet=["\n"], show_progress=False)
    # Every single letter, and Yes/No, must be one token ("▁A", "▁Yes"), as in Llama's
    # vocabulary: POPE and TallyQA are scored from the first token's probabilities of those strings.
    singles = " ".join([chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
                       + ["Yes", "No", "yes", "no"])
    tok.train_from_iterator(list(corpus) + [singles] * 2, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def build_mini_llm(corpus_file: Path, out_dir: Path, arch: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """Write an HF model folder (config, tokenizer, randomly initialised weights) for the mini study,
    laid out like a hub snapshot of Vicuna so that the fetch step treats both the same way. `arch`:
    the `llm.source.mini` fields (vlmswap.sections.MINI_LLM_DEFAULTS, checked when the study loads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = {**MINI_LLM_DEFAULTS, **arch}
    lines = [line for line in corpus_file.read_text().splitlines() if line.strip()]
    tokenizer = train_tokenizer(lines, int(arch["vocab_size"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(arch["hidden_size"]),
        intermediate_size=int(arch["intermediate_size"]),
        num_hidden_layers=int(arch["num_hidden_layers"]),
        num_attention_heads=int(arch["num_attention_heads"]),
        num_key_value_heads=int(arch["num_attention_heads"]),
        max_position_embeddings=int(arch["max_position_embeddings"]),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {"vocab_size": len(tokenizer), "params": sum(p.numel() for p in model.parameters()),
               "corpus_lines": len(lines), **{k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers")}}
    (out_dir / "vlmswap_mini_llm.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
