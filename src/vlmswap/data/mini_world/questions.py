"""Questions and referring expressions about a scene, in the styles of VQA-v2, POPE, TextVQA,
VizWiz and TallyQA (GQA's are in gqa.py), with the noisy answers annotators give."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from vlmswap.data.mini_world.scene import (
    COLORS, SHAPES, Scene, clear_reference, horizontal_side, unique_pairs, written_on,
)
from vlmswap.data.mini_world.text import TEXT_WORDS, text_questions
from vlmswap.evaluate.vizwiz import UNANSWERABLE

# name -> (templates, VQA question_type, VQA answer_type)
QUESTION_FAMILIES = {
    "color": (["What color is the {shape}?"], "what color is the", "other"),
    "shape": (["What shape is the {color} object?"], "what shape is the", "other"),
    "count": (["How many {shape}s are there?", "How many objects are there?"], "how many", "number"),
    "yes/no": (["Is there a {color} {shape}?"], "is there a", "yes/no"),
    "grounding": (
        ["the {color} {shape}", "the {shape}", "the {color} object", "the {shape} on the left",
         "the {shape} on the right", "the {color} {shape} on the left", "the {color} {shape} on the right"],
        None,
        None,
    ),
}
VQA_FAMILIES = ("color", "shape", "count", "yes/no")
POPE_TEMPLATE = "Is there a {object} in the image?"  # the question of AoiDragon/POPE's files
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five"]
SHAPE_REPHRASINGS = {"circle": "round", "square": "rectangle", "triangle": "triangular"}


@dataclass(frozen=True)
class Question:
    family: str
    question: str
    answer: str


def referring_expressions(scene: Scene) -> dict[int, list[str]]:
    """Expressions that pick out exactly one object, by index into `scene.shapes`."""
    shapes = scene.shapes
    by_shape = Counter(o.shape for o in shapes)
    by_color = Counter(o.color for o in shapes)
    by_pair = Counter((o.shape, o.color) for o in shapes)
    margin = 0.1 * scene.size  # "on the left" needs a clear horizontal gap
    found: dict[int, list[str]] = {}
    for i, o in enumerate(shapes):
        exprs = []
        if by_pair[o.shape, o.color] == 1:
            exprs.append(f"the {o.color} {o.shape}")
        if by_shape[o.shape] == 1:
            exprs.append(f"the {o.shape}")
        if by_color[o.color] == 1:
            exprs.append(f"the {o.color} object")
        for group, name in (
            ([p for p in shapes if p.shape == o.shape], f"the {o.shape}"),
            ([p for p in shapes if (p.shape, p.color) == (o.shape, o.color)], f"the {o.color} {o.shape}"),
        ):
            others = [p.cx for p in group if p is not o]
            if others and all(o.cx + margin <= c for c in others):
                exprs.append(f"{name} on the left")
            if others and all(o.cx - margin >= c for c in others):
                exprs.append(f"{name} on the right")
        if exprs:
            found[i] = exprs
    return found


def available_families(scene: Scene) -> list[str]:
    """VQA families with a well-defined answer: color/shape need an object unique by shape/color."""
    unique_shape = 1 in Counter(o.shape for o in scene.shapes).values()
    unique_color = 1 in Counter(o.color for o in scene.shapes).values()
    return [f for f, ok in zip(VQA_FAMILIES, (unique_shape, unique_color, True, True)) if ok]


def ask(scene: Scene, family: str, rng: np.random.Generator) -> Question:
    """One VQA question of `family` about `scene` (the family must be available)."""
    shapes = scene.shapes
    if family == "color":
        counts = Counter(o.shape for o in shapes)
        unique = [o for o in shapes if counts[o.shape] == 1]
        target = unique[int(rng.integers(len(unique)))]
        return Question(family, f"What color is the {target.shape}?", target.color)
    if family == "shape":
        counts = Counter(o.color for o in shapes)
        unique = [o for o in shapes if counts[o.color] == 1]
        target = unique[int(rng.integers(len(unique)))]
        return Question(family, f"What shape is the {target.color} object?", target.shape)
    if family == "count":
        if rng.random() < 0.25:
            return Question(family, "How many objects are there?", str(len(shapes)))
        kind = SHAPES[int(rng.integers(3))]
        return Question(family, f"How many {kind}s are there?", str(sum(o.shape == kind for o in shapes)))
    if family == "yes/no":
        present = sorted({(o.color, o.shape) for o in shapes})
        if rng.random() < 0.5:
            color, kind = present[int(rng.integers(len(present)))]
            return Question(family, f"Is there a {color} {kind}?", "yes")
        absent = [(c, k) for c in COLORS for k in SHAPES if (c, k) not in present]
        color, kind = absent[int(rng.integers(len(absent)))]
        return Question(family, f"Is there a {color} {kind}?", "no")
    raise ValueError(f"unknown question family {family!r}")


def annotator_answers(question: Question, rng: np.random.Generator) -> list[str]:
    """10 human answers: the truth, with 0-2 deterministic plausible slips or rephrasings."""
    answers = [question.answer] * 10
    n_noisy = int(rng.choice([0, 0, 0, 1, 1, 2]))
    for slot in rng.choice(10, size=n_noisy, replace=False):
        truth, rephrase = question.answer, rng.random() < 0.5
        if question.family == "count":
            n = int(truth)
            noisy = NUMBER_WORDS[n] if rephrase else str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
        elif question.family == "yes/no":
            noisy = "no" if truth == "yes" else "yes"
        elif question.family == "shape" and rephrase:
            noisy = SHAPE_REPHRASINGS[truth]
        else:
            pool = [v for v in (COLORS if question.family == "color" else SHAPES) if v != truth]
            noisy = pool[int(rng.integers(len(pool)))]
        answers[int(slot)] = noisy
    return answers


def ask_pope(scene: Scene, rng: np.random.Generator) -> Question:
    """POPE-style probe: a present object (answer "Yes") or an absent one ("No") with equal odds.

    Answers are capitalized because vlm-evaluation scores POPE from the first-token probabilities
    of "Yes" and "No" (prismatic_spec.md 3.1)."""
    present = sorted({(o.color, o.shape) for o in scene.shapes})
    if rng.random() < 0.5:
        color, kind = present[int(rng.integers(len(present)))]
        return Question("pope", POPE_TEMPLATE.format(object=f"{color} {kind}"), "Yes")
    absent = [(c, k) for c in COLORS for k in SHAPES if (c, k) not in present]
    color, kind = absent[int(rng.integers(len(absent)))]
    return Question("pope", POPE_TEMPLATE.format(object=f"{color} {kind}"), "No")


def ask_text(scene: Scene, rng: np.random.Generator) -> Question:
    options = text_questions(scene)
    question, answer = options[int(rng.integers(len(options)))]
    return Question("textvqa", question, answer)


def text_answers(answer: str, rng: np.random.Generator) -> list[str]:
    """10 TextVQA annotator answers: the word, with 0-2 misreadings (another word of the vocabulary)."""
    answers = [answer] * 10
    for slot in rng.choice(10, size=int(rng.choice([0, 0, 0, 1, 1, 2])), replace=False):
        others = [t for t in TEXT_WORDS if t != answer]
        answers[int(slot)] = others[int(rng.integers(len(others)))]
    return answers


def ask_vizwiz(scene: Scene, rng: np.random.Generator, unanswerable: bool) -> Question | None:
    """A VizWiz-style question. Unanswerable ones ask about a shape or color that is absent, or for the
    word on an object that carries none; their answer is "unanswerable". None: no such question here."""
    shapes = scene.shapes
    if unanswerable:
        options = []
        absent_shapes = [k for k in SHAPES if all(o.shape != k for o in shapes)]
        absent_colors = [c for c in COLORS if all(o.color != c for o in shapes)]
        blank = [j for j in unique_pairs(scene) if written_on(scene, j) is None]
        if absent_shapes:
            options.append(f"What color is the {absent_shapes[int(rng.integers(len(absent_shapes)))]}?")
        if absent_colors:
            options.append(f"What shape is the {absent_colors[int(rng.integers(len(absent_colors)))]} object?")
        if blank:
            o = shapes[blank[int(rng.integers(len(blank)))]]
            options.append(f"What word is written on the {o.color} {o.shape}?")
        if not options:
            return None
        return Question("unanswerable", options[int(rng.integers(len(options)))], UNANSWERABLE)
    written = [j for j in unique_pairs(scene) if written_on(scene, j) is not None]
    if written and rng.random() < 0.5:
        j = written[int(rng.integers(len(written)))]
        return Question("text", f"What word is written on the {shapes[j].color} {shapes[j].shape}?",
                        written_on(scene, j))
    families = available_families(scene)
    return ask(scene, families[int(rng.integers(len(families)))], rng)


def vizwiz_answers(question: Question, rng: np.random.Generator) -> list[dict]:
    """10 VizWiz annotations {answer, answer_confidence}; "unsuitable" slips into unanswerable ones."""
    if question.family == "unanswerable":
        answers = [UNANSWERABLE] * 10
        for slot in rng.choice(10, size=int(rng.choice([0, 0, 1, 2])), replace=False):
            answers[int(slot)] = "unsuitable"
    elif question.family == "text":
        answers = text_answers(question.answer, rng)
    else:
        answers = annotator_answers(question, rng)
    majority = Counter(answers).most_common(1)[0][0]
    return [{"answer": a, "answer_confidence": "yes" if a == majority else "maybe"} for a in answers]


def ask_tally(scene: Scene, rng: np.random.Generator, simple: bool) -> Question | None:
    """A TallyQA-style counting question; answer = the count as a string. Simple questions count a
    color / shape / both; complex ones count what is left or right of a clearly placed, uniquely
    named object. None when no complex question is well defined here."""
    shapes = scene.shapes
    def pick(present: list, every: list):  # mostly something that is there, so counts are not mostly 0
        pool = present if rng.random() < 0.8 else every
        return pool[int(rng.integers(len(pool)))]

    if simple:
        kind = int(rng.integers(3))
        if kind == 0:
            color, shape = pick(sorted({(o.color, o.shape) for o in shapes}), [(c, k) for c in COLORS for k in SHAPES])
            n = sum((o.color, o.shape) == (color, shape) for o in shapes)
            return Question("tally-simple", f"How many {color} {shape}s are there?", str(n))
        if kind == 1:
            shape = pick(sorted({o.shape for o in shapes}), list(SHAPES))
            return Question("tally-simple", f"How many {shape}s are there?", str(sum(o.shape == shape for o in shapes)))
        color = pick(sorted({o.color for o in shapes}), list(COLORS))
        n = sum(o.color == color for o in shapes)
        return Question("tally-simple", f"How many {color} shapes are there?", str(n))
    refs = [j for j in unique_pairs(scene) if clear_reference(scene, j) and len(shapes) > 1]
    if not refs:
        return None
    r = refs[int(rng.integers(len(refs)))]
    ref = shapes[r]
    sides = {side: [o for k, o in enumerate(shapes) if k != r and horizontal_side(o, ref, scene.size) == side]
             for side in ("left", "right")}
    side = pick([side for side, found in sides.items() if found], ["left", "right"])
    on_side = sides[side]
    if rng.random() < 0.6:
        return Question("tally-complex", f"How many shapes are {side} of the {ref.color} {ref.shape}?",
                        str(len(on_side)))
    kind = pick(sorted({o.shape for o in on_side}), list(SHAPES)) if on_side else SHAPES[int(rng.integers(3))]
    return Question("tally-complex", f"How many {kind}s are {side} of the {ref.color} {ref.shape}?",
                    str(sum(o.shape == kind for o in on_side)))
