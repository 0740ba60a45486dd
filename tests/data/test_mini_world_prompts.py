"""Training turns ask in exactly the words of the evaluation: for each benchmark, a question that a
training record also asks carries the very prompt the benchmark's loader builds for it, and no
training prompt differs from an evaluation prompt only in spacing or case."""

from __future__ import annotations

import json
import re

import pytest

from vlmswap.data.mini_world import generate
from vlmswap.data.mini_world.training import instruction_turn
from vlmswap.evaluate import prompts
from vlmswap.evaluate.registry import get_benchmark

# benchmark -> its folder in the world
ROOTS = {"vqa-v2": "vqa-v2", "gqa": "gqa", "vizwiz": "vizwiz", "textvqa": "textvqa", "pope": "pope",
         "tallyqa": "tallyqa", "refcoco": "refcoco", "ocid-ref": "ocid-ref"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate(out, seed=2, n_train=400, n_eval=40, n_classify=12, image_size=64, log=lambda m: None)
    humans = set()
    for record in json.loads((out / "llava/llava_v1_5_mix665k.json").read_text()):
        if "image" in record:
            humans |= {t["value"].removeprefix("<image>\n") for t in record["conversations"] if t["from"] == "human"}
    return out, humans


def _loose(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@pytest.mark.parametrize("benchmark", sorted(ROOTS))
def test_training_turns_use_the_evaluation_prompt(world, benchmark):
    out, humans = world
    examples, skipped = get_benchmark(benchmark).load(out / ROOTS[benchmark], "full")
    assert examples and not skipped
    eval_prompts = {e.prompt for e in examples}
    assert eval_prompts & humans, f"no {benchmark} question is asked in training with its evaluation prompt"
    loose_eval = {_loose(p): p for p in eval_prompts}
    for human in humans:
        if _loose(human) in loose_eval:
            assert human == loose_eval[_loose(human)]


def test_each_training_style_is_built_by_the_evaluation_builder():
    """Every style instruction_turn draws, rebuilt from its question by the evaluation's builder."""
    import numpy as np

    from vlmswap.data.mini_world.questions import referring_expressions
    from vlmswap.data.mini_world.scene import sample_scene, sample_tally_scene
    from vlmswap.data.mini_world.text import sample_text_scene

    samplers = {"plain": sample_scene, "text": sample_text_scene, "tally": sample_tally_scene}
    seen_labels = set()
    for i in range(300):
        rng = np.random.default_rng(i)
        kind = ("plain", "text", "tally")[i % 3]
        scene = samplers[kind](rng, i, 64)
        human, _, label = instruction_turn(scene, kind, rng, referring_expressions(scene), False)
        seen_labels.add(label)
        question = human.split("\n")[0]
        if label == "grounding":
            sentence = human.removeprefix(prompts.GROUNDING_INSTRUCTION + ' "').removesuffix('"')
            assert human == prompts.grounding_prompt(sentence)
        elif label == "tally":
            assert human == prompts.tally_prompt(question)
        elif label == "vizwiz":
            assert human == prompts.vizwiz_prompt(question)
        elif label == "textvqa" and prompts.OCR_MARKER in human:
            tokens = human.split(prompts.OCR_MARKER + " ")[1].split("\n")[0].split(", ")
            assert human == prompts.vqa_prompt(prompts.ocr_question(question, tokens))
        else:  # VQA-v2, GQA, POPE, TextVQA without its OCR line ("Pure")
            assert human == prompts.vqa_prompt(question)
    assert {"grounding", "tally", "vizwiz", "gqa", "pope", "textvqa", "color", "count"} <= seen_labels
