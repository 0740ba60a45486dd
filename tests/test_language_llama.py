"""The real Llama/Vicuna tokenizer path: a SentencePiece `tokenizer.model` snapshot, loaded offline.

A tiny SentencePiece BPE model with Llama's settings stands in for Vicuna's (tests/vicuna_snapshot.py).
It must load through the product's own `load_tokenizer` / `load_llm` with transformers 5.x and give
SentencePiece's own ids, and Prismatic's `<PAD>` + resize; and our Vicuna prompts, ids and labels
must equal what Prismatic's prompter and finetune dataset produced on the same records
(tests/fixtures/prismatic/prompts.json, scripts/reference/prismatic_prompts.py, transformers 4.38.1).
"""

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from vlmswap.data.instruct import InstructDataset
from vlmswap.language import IGNORE_INDEX, assistant_turn, eval_prompt, human_turn, load_llm, load_tokenizer

from .vicuna_snapshot import corpus, train_sentencepiece, write_vicuna_snapshot

FIXTURES = Path(__file__).parent / "fixtures/prismatic"
PROMPTS = json.loads((FIXTURES / "prompts.json").read_text())

TEXTS = ["the circle is red", " leading space", "   three leading", "trailing  ", "two  inner\tspaces\nnewline",
         "digits 1234567 and 0.75", "[0.12, 0.5, 0.9, 1.0]", "unicode é ü ß 日本 🙂 needs byte fallback", "USER:", ""]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = train_sentencepiece(corpus())
    snapshot = write_vicuna_snapshot(tmp_path_factory.mktemp("vicuna") / "snapshot", model)
    return snapshot, spm.SentencePieceProcessor(model_proto=model)


def test_ids_equal_sentencepiece_with_bos_only_when_asked(trained):
    snapshot, sp = trained
    tokenizer = load_tokenizer(snapshot)
    for text in TEXTS:
        assert tokenizer(text).input_ids == [sp.bos_id()] + sp.encode(text), repr(text)
        assert tokenizer(text, add_special_tokens=False).input_ids == sp.encode(text), repr(text)
    assert sp.eos_id() not in tokenizer("the circle").input_ids  # no EOS appended
    assert any(p.startswith("<0x") for p in sp.encode("é 日本 🙂", out_type=str))  # byte fallback is exercised


def test_eos_written_in_a_turn_is_the_eos_token(trained):
    # Prismatic's assistant turns end in the text "</s>" and rely on it becoming the EOS id
    snapshot, sp = trained
    tokenizer = load_tokenizer(snapshot)
    assert tokenizer("red</s>", add_special_tokens=False).input_ids == sp.encode("red") + [sp.eos_id()]
    assert tokenizer(" </s>", add_special_tokens=False).input_ids == sp.encode(" ") + [sp.eos_id()]


def test_decode_round_trips_as_sentencepiece(trained):
    snapshot, sp = trained
    tokenizer = load_tokenizer(snapshot)
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == sp.decode(ids[1:]), repr(text)
    assert tokenizer.decode(tokenizer("unicode 日本 🙂 12").input_ids, skip_special_tokens=True) == "unicode 日本 🙂 12"


def test_pad_is_added_and_embeddings_padded_to_a_multiple_of_64_as_prismatic(trained):
    snapshot, sp = trained
    tokenizer = load_tokenizer(snapshot)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer)) == ("<PAD>", sp.get_piece_size(),
                                                                             sp.get_piece_size() + 1)
    assert tokenizer.padding_side == "right"
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(str(snapshot)).get_input_embeddings().weight.detach().clone()
    llm = load_llm(snapshot, tokenizer)
    rows = 384  # 320 pieces + <PAD> = 321 -> next multiple of 64
    assert llm.get_input_embeddings().weight.shape[0] == llm.lm_head.weight.shape[0] == rows
    assert torch.equal(llm.get_input_embeddings().weight[:before.shape[0]], before)
    assert llm.config.pad_token_id == tokenizer.pad_token_id


def test_a_tokenizer_that_does_not_prepend_bos_is_refused(tmp_path, trained):
    snapshot, _ = trained
    broken = tmp_path / "no-bos"
    broken.mkdir()
    for f in ("tokenizer.model", "special_tokens_map.json"):
        (broken / f).write_bytes((snapshot / f).read_bytes())
    config = json.loads((snapshot / "tokenizer_config.json").read_text())
    (broken / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    with pytest.raises(ValueError, match="no-bos.*BOS"):
        load_tokenizer(broken)


@pytest.fixture(scope="module")
def fixture_tokenizer(tmp_path_factory):
    snapshot = write_vicuna_snapshot(tmp_path_factory.mktemp("fixture") / "snapshot",
                                     (FIXTURES / "tokenizer.model").read_bytes(), weights=False)
    return load_tokenizer(snapshot)


def test_the_fixture_tokenizer_is_prismatics(fixture_tokenizer):
    ref = PROMPTS["tokenizer"]
    assert (len(fixture_tokenizer), fixture_tokenizer.pad_token_id) == (ref["len_tokenizer"], ref["pad_token_id"])
    assert (ref["embedding_rows"], ref["lm_head_rows"]) == (384, 384)  # what Prismatic's resize gave


@pytest.mark.parametrize("i", range(len(PROMPTS["records"])), ids=[r["id"] for r in PROMPTS["records"]])
def test_prompts_ids_and_labels_equal_prismatics(i, fixture_tokenizer, tmp_path):
    record, expected = PROMPTS["records"][i], PROMPTS["expected"][i]
    turns = [human_turn(t["value"], first=j == 0) if j % 2 == 0 else assistant_turn(t["value"])
             for j, t in enumerate(record["conversations"])]
    assert turns == expected["turns"]
    assert "".join(turns) == expected["prompt"]
    assert eval_prompt(record["conversations"][0]["value"]) == expected["eval_prompt"]

    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "records.json").write_text(json.dumps([record]))
    dataset = InstructDataset(tmp_path / "records.json", tmp_path, fixture_tokenizer, None,
                              lambda image, geometry: torch.zeros(1), 2048, 1)
    item = dataset[0]
    assert item["input_ids"].tolist() == expected["input_ids"]
    assert item["labels"].tolist() == expected["labels"]
    assert any(label != IGNORE_INDEX for label in expected["labels"])
