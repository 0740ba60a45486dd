"""Vicuna v1.5 prompt, per-turn tokenization and label masking (prismatic_spec.md 1.5)."""

import pytest

from vlmswap.language import (IGNORE_INDEX, PAD_TOKEN, SYSTEM_PROMPT, assistant_turn, encode_conversation,
                              eval_prompt, human_turn, train_tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [SYSTEM_PROMPT, "USER: What color is the circle? ASSISTANT: red</s>", "How many? 2 yes no blue"] * 4
    tok = train_tokenizer(corpus, 200)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return tok


def test_turn_templates():
    assert human_turn("<image>\nWhat is it?", first=True) == f"{SYSTEM_PROMPT} USER: What is it? ASSISTANT: "
    assert human_turn("Again?", first=False) == "USER: Again? ASSISTANT: "
    assert assistant_turn("red") == "red</s>" and assistant_turn("") == " </s>"
    # Prismatic strips every turn, the assistant's too, after removing <image>; empty -> one space
    assert assistant_turn("  <image> red \n") == "red</s>" and assistant_turn(" <image> ") == " </s>"
    assert eval_prompt("Q?") == f"{SYSTEM_PROMPT} USER: Q? ASSISTANT:"


def test_only_assistant_tokens_and_their_eos_carry_labels(tokenizer):
    conv = [{"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}]
    enc = encode_conversation(tokenizer, conv, max_length=2048)
    assert enc.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.bos_token_id not in enc.input_ids[1:]  # BOS only on turn 0
    labelled = [t for t, l in zip(enc.input_ids, enc.labels) if l != IGNORE_INDEX]
    assert tokenizer.decode(labelled, skip_special_tokens=False).replace(" ", "").replace("▁", "") == "red</s>2</s>"
    assert [l for l in enc.labels if l != IGNORE_INDEX].count(tokenizer.eos_token_id) == 2
    assert enc.labels[0] == IGNORE_INDEX


def test_truncation_applies_to_text_tokens(tokenizer):
    conv = [{"from": "human", "value": "What color is the circle?"}, {"from": "gpt", "value": "red"}]
    enc = encode_conversation(tokenizer, conv, max_length=5)
    assert len(enc.input_ids) == len(enc.labels) == 5


def test_turns_must_alternate(tokenizer):
    with pytest.raises(ValueError, match="alternate"):
        encode_conversation(tokenizer, [{"from": "gpt", "value": "x"}], 16)


def test_choice_strings_are_single_tokens_even_if_the_corpus_lacks_them():
    tok = train_tokenizer(["USER: how many ASSISTANT: A", "nothing else here"], 300)
    for choice in [*"ABCDEFGHIJKLMNOP", "Yes", "No"]:  # digits split off "▁", as in Llama
        assert len(tok(choice, add_special_tokens=False).input_ids) == 1, choice
