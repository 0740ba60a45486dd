"""The training mix: the LLaVA-v1.5 665K-format instruction set over the training scenes.

Each training slot is a plain scene, a text scene (TextVQA skills) or a counting scene (TallyQA
skills); each turn of a record is a grounding turn or a question in one benchmark's style, and its
human message is exactly what that benchmark's evaluation sends (the builders of
`vlmswap.evaluate.prompts`, prismatic_spec.md 3.1): VQA-v2, GQA, POPE and TextVQA turns end with
the "single word or phrase" instruction (TextVQA turns carry the OCR line before it two times in
three, the rest are "Pure"); VizWiz turns add the "respond with 'Unanswerable'" line; TallyQA turns
list the 16 choices and are answered with the letter; POPE turns are answered "Yes" / "No"
(capitalized: POPE is scored from the first-token probabilities of those strings); grounding turns
are answered with `[x1, y1, x2, y2]` normalized by the image size with 2 decimals, as
vlm-evaluation's RefCOCO harness writes its ground truth. About 5% of the records are
language-only (a stand-in for ShareGPT).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from vlmswap.data.mini_world.gqa import ask_gqa, gqa_kinds
from vlmswap.data.mini_world.questions import (
    ask, ask_pope, ask_tally, ask_text, ask_vizwiz, available_families, referring_expressions,
)
from vlmswap.data.mini_world.render import box_string, render
from vlmswap.data.mini_world.scene import TRAIN_ID0, Scene, sample_scene, sample_tally_scene, stream_rng
from vlmswap.data.mini_world.text import ocr_tokens, sample_text_scene
from vlmswap.data.mini_world.writers import write_compact_json, write_image
from vlmswap.evaluate.prompts import (
    TALLY_LETTERS, grounding_prompt, ocr_question, tally_prompt, vizwiz_prompt, vqa_prompt,
)

GROUNDING_SHARE = 0.3  # chance that a plain training turn is a grounding turn (~28% of all turns)
LANGUAGE_SHARE = 0.05  # language-only records, relative to the number of training scenes
# Each training slot is a plain scene, a text scene or a counting scene; a turn is grounding with
# probability TURN_GROUNDING[kind] (when the scene has a referring expression), otherwise one of
# the prompt styles below, drawn with these weights.
SLOT_SHARE = {"text": 0.15, "tally": 0.15}
TURN_GROUNDING = {"plain": GROUNDING_SHARE, "text": 0.25, "tally": 0.25}
TURN_STYLES = {
    "plain": {"vqa": 0.45, "gqa": 0.2, "pope": 0.12, "vizwiz": 0.13, "tally": 0.1},
    "text": {"textvqa": 0.6, "vizwiz": 0.2, "vqa": 0.1, "pope": 0.1},
    "tally": {"tally": 0.5, "vqa": 0.2, "gqa": 0.15, "pope": 0.15},
}
TRAIN_UNANSWERABLE_SHARE = 0.25  # of the VizWiz-style training turns
TRAIN_OCR_SHARE = 2 / 3  # TextVQA-style training turns with the OCR line; the rest are "Pure"
# Characters of turn text per record beyond which no further turn is added (a record keeps at least
# 2 turns): about 300 text tokens with the mini tokenizer, inside config/mini.yaml's max_length 320.
RECORD_CHARS = 400
# mix="vqa+grounding": only VQA-v2-style and RefCOCO-style turns on plain scenes, for a study that
# evaluates just those two (config/mini.yaml): the tiny LM learns them within the time budget.
TRAINING_MIXES = ("all", "vqa+grounding")
FOCUSED_MIX = (0.45, {"vqa": 1.0})

# language-only chat
COLOR_MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("blue", "red"): "purple",
               ("red", "white"): "pink", ("black", "white"): "gray"}
SPELLED_WORDS = ("circle", "square", "triangle", "color", "shape", "red", "green", "blue", "yellow", "object")
POLYGON_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}


def training_scenes(seed: int, n: int, size: int, grid: int = 0) -> list[Scene]:
    """The plain layouts of all training slots, drawn first, as they always were, so that the VQA-v2
    and RefCOCO eval sets (held out of them) do not depend on the slot kinds."""
    return [sample_scene(stream_rng(seed, 1, i), TRAIN_ID0 + i, size, grid=grid) for i in range(n)]


def slot_kinds(seed: int, n: int, mix: str) -> list[str]:
    """"plain" / "text" / "tally" for each training slot (only plain ones in the focused mix)."""
    draws = stream_rng(seed, 11, 0).random(n)
    shares = SLOT_SHARE if mix == "all" else {"text": 0.0, "tally": 0.0}
    return ["text" if u < shares["text"] else "tally" if u < shares["text"] + shares["tally"]
            else "plain" for u in draws]


def language_turns(rng: np.random.Generator) -> list[tuple[str, str]]:
    """1-2 deterministic text-only question/answer pairs (a stand-in for ShareGPT records)."""
    turns = []
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(4))
        if kind == 0:
            (a, b), mixed = list(COLOR_MIXES.items())[int(rng.integers(len(COLOR_MIXES)))]
            turns.append((f"What color do you get by mixing {a} and {b}?", f"Mixing {a} and {b} gives {mixed}."))
        elif kind == 1:
            word = SPELLED_WORDS[int(rng.integers(len(SPELLED_WORDS)))]
            turns.append((f"Spell the word {word}.", "-".join(word)))
        elif kind == 2:
            name, n = list(POLYGON_SIDES.items())[int(rng.integers(len(POLYGON_SIDES)))]
            turns.append((f"How many sides does a {name} have?", f"A {name} has {n} sides."))
        else:
            a, b = (int(v) for v in rng.integers(0, 10, size=2))
            turns.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return turns


def instruction_turn(scene: Scene, kind: str, rng: np.random.Generator, expressions: dict[int, list[str]],
                      tally_done: bool, mix: str = "all") -> tuple[str, str, str]:
    """One training turn for a slot of `kind`: (human, gpt, label); the human message is built by the
    evaluation's own prompt builder for that style."""
    size = scene.size
    grounding_share, styles = (TURN_GROUNDING[kind], TURN_STYLES[kind]) if mix == "all" else FOCUSED_MIX
    if expressions and rng.random() < grounding_share:
        index = list(expressions)[int(rng.integers(len(expressions)))]
        sentence = expressions[index][int(rng.integers(len(expressions[index])))]
        box = box_string(scene.shapes[index], size)
        return grounding_prompt(sentence), box, "grounding"
    weights = np.array(list(styles.values()))
    style = list(styles)[int(rng.choice(len(styles), p=weights / weights.sum()))]
    if style == "tally" and tally_done:  # one 16-choice prompt per record keeps records short
        style = "vqa"
    if style == "gqa":
        kinds = gqa_kinds(scene)
        q = ask_gqa(scene, kinds[int(rng.integers(len(kinds)))], rng)
        return vqa_prompt(q.question), q.answer, "gqa"
    if style == "pope":
        q = ask_pope(scene, rng)
        return vqa_prompt(q.question), q.answer, "pope"
    if style == "vizwiz":
        q = ask_vizwiz(scene, rng, rng.random() < TRAIN_UNANSWERABLE_SHARE) or ask_vizwiz(scene, rng, False)
        return vizwiz_prompt(q.question), q.answer, "vizwiz"
    if style == "textvqa":
        q = ask_text(scene, rng)
        question = ocr_question(q.question, ocr_tokens(scene)) if rng.random() < TRAIN_OCR_SHARE else q.question
        return vqa_prompt(question), q.answer, "textvqa"
    if style == "tally":
        q = ask_tally(scene, rng, simple=rng.random() < 0.5) or ask_tally(scene, rng, simple=True)
        return tally_prompt(q.question), TALLY_LETTERS[int(q.answer)], "tally"
    families = available_families(scene)
    q = ask(scene, families[int(rng.integers(len(families)))], rng)
    return vqa_prompt(q.question), q.answer, q.family


def write_llava(out: Path, seed: int, scenes: list[Scene], kinds: list[str], eval_keys: set, mix: str,
                remember: Callable[..., None]) -> dict:
    """`llava/llava_v1_5_mix665k.json` and `llava/coco/train2017/{id:012d}.jpg`. Text and counting
    slots get fresh layouts held out of every eval set (`eval_keys`); the plain slots keep theirs
    (the eval sets were held out of them). `scenes` is updated in place; returns the counts."""
    for i, kind in enumerate(kinds):
        if kind != "plain":
            rng = stream_rng(seed, 12 if kind == "text" else 13, i)
            sample = sample_text_scene if kind == "text" else sample_tally_scene
            while (scene := sample(rng, TRAIN_ID0 + i, scenes[i].size)).key() in eval_keys:
                pass
            scenes[i] = scene
    from vlmswap.language import human_turn  # imports torch: only when a world is written

    records = []
    n_turns = Counter()
    for scene, kind in zip(scenes, kinds):
        rng = stream_rng(seed, 2, scene.image_id)
        expressions = referring_expressions(scene)
        turns, asked, tally_done = [], set(), False
        for _ in range(int(rng.integers(2, 5))):
            for _retry in range(10):
                human, gpt, label = instruction_turn(scene, kind, rng, expressions, tally_done, mix)
                if human not in asked:
                    break
            if human in asked or (len(turns) >= 2 and sum(map(len, sum(turns, ()))) + len(human) + len(gpt)
                                  > RECORD_CHARS):
                continue
            asked.add(human)
            tally_done |= label == "tally"
            n_turns[label] += 1
            turns.append((human, gpt))
        conversations = []
        for k, (human, gpt) in enumerate(turns):
            conversations.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + human})
            conversations.append({"from": "gpt", "value": gpt})
            remember(human_turn(human, first=k == 0), gpt)
        records.append({"id": f"{scene.image_id:012d}", "image": f"coco/train2017/{scene.image_id:012d}.jpg",
                        "conversations": conversations})
        write_image(out / "llava" / "coco" / "train2017" / f"{scene.image_id:012d}.jpg", render(scene))
    n_language = round(LANGUAGE_SHARE * len(scenes))
    for i in range(n_language):
        conversations = []
        for k, (human, gpt) in enumerate(language_turns(stream_rng(seed, 3, i))):
            conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
            remember(human_turn(human, first=k == 0), gpt)
        records.append({"id": f"text_{i:06d}", "conversations": conversations})
    # Interleave text-only records through the mixture, as in the real file.
    records = [records[int(i)] for i in stream_rng(seed, 4, 0).permutation(len(records))]
    write_compact_json(out / "llava" / "llava_v1_5_mix665k.json", records)
    return {"records": len(records), "language_only": n_language, "turns": dict(sorted(n_turns.items()))}
