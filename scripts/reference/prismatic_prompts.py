"""Regenerate tests/fixtures/prismatic/prompts.json (+ tokenizer.model): Prismatic's prompts, ids and labels.

Trains the tiny Llama-style SentencePiece tokenizer of tests/vicuna_snapshot.py, lays out a
Vicuna-v1.5-like snapshot with it, loads that through Prismatic's own `LLaMa2LLMBackbone` (which
adds `<PAD>` and resizes the embeddings) and runs its `VicunaV15ChatPromptBuilder` and
`FinetuneDataset` on multi-turn records with stray whitespace, `<image>` tags in replies and
empty replies. tests/test_language_llama.py checks that ours gives the same strings, ids and labels.

Run it with the transformers Prismatic ran (its pyproject asks for >= 4.38.1; the committed
fixture was made with 4.38.1 and tokenizers 0.15.2, installed for example with
`pip install --target /tmp/tf438 --no-deps transformers==4.38.1 tokenizers==0.15.2 huggingface_hub==0.20.3`):

    PYTHONPATH=/tmp/tf438 python scripts/reference/prismatic_prompts.py [--prismatic PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prismatic_env import REPO, add_prismatic  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.vicuna_snapshot import corpus, train_sentencepiece, write_vicuna_snapshot  # noqa: E402

FIXTURES = REPO / "tests/fixtures/prismatic"


def records() -> list[dict]:
    def conv(*turns: str) -> list[dict]:
        return [{"from": ("human", "gpt")[i % 2], "value": t} for i, t in enumerate(turns)]

    return [
        {"id": "plain", "image": "a.png", "conversations": conv("<image>\nWhat color is the circle?", "Red")},
        {"id": "spaces", "image": "a.png", "conversations": conv(
            "  What color is the square?\n<image>  ", "  blue  ", "How many shapes are there? ", "\n3\n")},
        {"id": "image-in-reply", "image": "a.png", "conversations": conv(
            "<image>\nwhat is left of the triangle?", "<image> a red circle <image>", "and above?", " <image>")},
        {"id": "empty-replies", "image": "a.png", "conversations": conv(
            "<image>\nAnswer the question using a single word or phrase.", "", "Again?", "   ", "yes or no?", "no")},
        {"id": "language-only", "conversations": conv(
            "a chat between a curious user 12345", " helpful answers, 2000 of them!  ",
            "digits 0.75 and [0.12, 0.5, 0.9, 1.0]", "é ü 日本 🙂 unicode")},
        {"id": "inner-whitespace", "conversations": conv("two  spaces\tand a tab", "line one\n\nline  two ")},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prismatic", help="checkout of TRI-ML/prismatic-vlms")
    args = ap.parse_args()
    source = add_prismatic(args.prismatic)
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    from prismatic.models.backbones.llm import llama2
    from prismatic.models.backbones.llm.prompting import VicunaV15ChatPromptBuilder
    from prismatic.preprocessing.datasets.datasets import FinetuneDataset

    sp_model = train_sentencepiece(corpus())
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "tokenizer.model").write_bytes(sp_model)
    recs = records()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        snapshot = write_vicuna_snapshot(tmp / "vicuna-tiny", sp_model)
        llama2.LLAMA2_MODELS["vicuna-v15-tiny"] = {"llm_family": "llama2", "llm_cls": LlamaForCausalLM,
                                                   "hf_hub_path": str(snapshot)}
        backbone = llama2.LLaMa2LLMBackbone("vicuna-v15-tiny", llm_max_length=2048, use_flash_attention_2=False)
        tokenizer = backbone.get_tokenizer()
        from PIL import Image

        Image.new("RGB", (4, 4)).save(tmp / "a.png")
        (tmp / "records.json").write_text(json.dumps(recs))
        dataset = FinetuneDataset(tmp / "records.json", tmp, lambda im: torch.zeros(1), tokenizer,
                                  backbone.prompt_builder_fn)
        out = []
        for i, rec in enumerate(recs):
            builder = VicunaV15ChatPromptBuilder("prismatic")
            wrapped = [builder.add_turn(t["from"], t["value"]) for t in rec["conversations"]]
            first = VicunaV15ChatPromptBuilder("prismatic")
            first.add_turn("human", rec["conversations"][0]["value"])
            item = dataset[i]
            out.append({"id": rec["id"], "turns": wrapped, "prompt": builder.prompt, "eval_prompt": first.get_prompt(),
                        "input_ids": item["input_ids"].tolist(), "labels": item["labels"].tolist()})
        llm = backbone.llm
        summary = {
            "tokenizer_class": type(tokenizer).__name__, "len_tokenizer": len(tokenizer),
            "pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "embedding_rows": llm.get_input_embeddings().weight.shape[0], "lm_head_rows": llm.lm_head.weight.shape[0],
            "config_pad_token_id": llm.config.pad_token_id, "sentencepiece_pieces": tokenizer.vocab_size,
        }
    result = {"source": source, "transformers": transformers.__version__,
              "script": "scripts/reference/prismatic_prompts.py", "tokenizer": summary, "records": recs,
              "expected": out}
    (FIXTURES / "prompts.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(summary))
    print(f"wrote {FIXTURES / 'prompts.json'} and tokenizer.model from {source}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
