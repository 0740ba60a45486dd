"""GQA-style questions: query / verify / choose / logical / compare kinds with their functional
programs (GQA's `semantic` list) and type labels, written as `testdev_balanced_questions.json` entries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmswap.data.mini_world.scene import (
    COLORS, SHAPES, Scene, clear_reference, horizontal_side, unique_colors, unique_pairs, unique_shapes,
)

GQA_KINDS = ("query-attr", "verify-attr", "query-rel", "choose-attr", "logical-and", "compare-color", "verify-rel")


@dataclass(frozen=True)
class GQAQuestion:
    """A GQA-style question with its functional program (GQA's `semantic` list) and type labels."""

    kind: str
    question: str
    answer: str
    full_answer: str
    semantic: tuple[tuple[str, str, tuple[int, ...]], ...]  # (operation, argument, dependencies)
    structural: str
    semantic_type: str
    detailed: str
    group: str | None  # GQA `groups.global`: the answer's category for open questions


def gqa_kinds(scene: Scene) -> list[str]:
    """GQA question kinds with a well-defined answer on this scene."""
    pairs, shapes = unique_pairs(scene), unique_shapes(scene)
    kinds = []
    if shapes or unique_colors(scene):
        kinds.append("query-attr")
    if _relation_targets(scene):
        kinds.append("query-rel")
    if shapes:
        kinds += ["verify-attr", "choose-attr"]
    kinds.append("logical-and")
    if len(shapes) >= 2:
        kinds.append("compare-color")
    if any(horizontal_side(scene.shapes[a], scene.shapes[b], scene.size) for a in pairs for b in pairs if a != b):
        kinds.append("verify-rel")
    return kinds


def _relation_targets(scene: Scene) -> list[tuple[int, str, int]]:
    """(reference, side, target): target is the only object on that side of a clear, unique reference."""
    found = []
    for r in unique_pairs(scene):
        if not clear_reference(scene, r):
            continue
        for side in ("left", "right"):
            on_side = [k for k, o in enumerate(scene.shapes)
                       if k != r and horizontal_side(o, scene.shapes[r], scene.size) == side]
            if len(on_side) == 1:
                found.append((r, side, on_side[0]))
    return found


def ask_gqa(scene: Scene, kind: str, rng: np.random.Generator) -> GQAQuestion:
    """One GQA-style question of `kind` (which must be in `gqa_kinds(scene)`)."""
    shapes = scene.shapes

    def oid(j: int) -> int:
        return scene.image_id * 10 + j

    def pick(items: list):
        return items[int(rng.integers(len(items)))]

    if kind == "query-attr":
        by_shape, by_color = unique_shapes(scene), unique_colors(scene)
        if by_shape and (not by_color or rng.random() < 0.5):
            j = pick(by_shape)
            o = shapes[j]
            return GQAQuestion(kind, f"What is the color of the {o.shape}?", o.color, f"The {o.shape} is {o.color}.",
                               (("select", f"{o.shape} ({oid(j)})", ()), ("query", "color", (0,))),
                               "query", "attr", "queryAttr", "color")
        j = pick(by_color)
        o = shapes[j]
        return GQAQuestion(kind, f"What is the shape of the {o.color} object?", o.shape,
                           f"The {o.color} object is a {o.shape}.",
                           (("select", f"object ({oid(j)})", ()), ("filter color", o.color, (0,)),
                            ("query", "shape", (1,))),
                           "query", "attr", "queryAttr", "shape")
    if kind == "query-rel":
        r, side, t = pick(_relation_targets(scene))
        ref, target = shapes[r], shapes[t]
        attribute = "color" if rng.random() < 0.5 else "shape"
        answer = getattr(target, attribute)
        said = answer if attribute == "color" else f"a {answer}"
        return GQAQuestion(
            kind, f"What {attribute} is the object to the {side} of the {ref.color} {ref.shape}?", answer,
            f"The object to the {side} of the {ref.color} {ref.shape} is {said}.",
            (("select", f"{ref.shape} ({oid(r)})", ()), ("filter color", ref.color, (0,)),
             ("relate", f"object,to the {side} of,s ({oid(t)})", (1,)), ("query", attribute, (2,))),
            "query", "rel", "relS", attribute)
    if kind in ("verify-attr", "choose-attr"):
        j = pick(unique_shapes(scene))
        o = shapes[j]
        other = pick([c for c in COLORS if c != o.color])
        if kind == "choose-attr":
            first, second = (o.color, other) if rng.random() < 0.5 else (other, o.color)
            return GQAQuestion(kind, f"Is the {o.shape} {first} or {second}?", o.color, f"The {o.shape} is {o.color}.",
                               (("select", f"{o.shape} ({oid(j)})", ()), ("choose color", f"{first}|{second}", (0,))),
                               "choose", "attr", "chooseAttr", "color")
        asked = o.color if rng.random() < 0.5 else other
        yes = asked == o.color
        return GQAQuestion(kind, f"Is the {o.shape} {asked}?", "yes" if yes else "no",
                           f"{'Yes' if yes else 'No'}, the {o.shape} is {o.color}.",
                           (("select", f"{o.shape} ({oid(j)})", ()), ("verify color", asked, (0,))),
                           "verify", "attr", "verifyAttr", None)
    if kind == "logical-and":
        present = sorted({(o.color, o.shape) for o in shapes})
        every = [(c, k) for c in COLORS for k in SHAPES]
        if len(present) >= 2 and rng.random() < 0.5:
            a, b = (present[int(i)] for i in rng.choice(len(present), size=2, replace=False))
        else:
            a, b = (every[int(i)] for i in rng.choice(len(every), size=2, replace=False))
        yes = a in present and b in present
        missing = b if a in present else a
        ids = {(o.color, o.shape): oid(j) for j, o in enumerate(shapes)}
        return GQAQuestion(
            kind, f"Are there both a {a[0]} {a[1]} and a {b[0]} {b[1]}?", "yes" if yes else "no",
            f"Yes, there are both a {a[0]} {a[1]} and a {b[0]} {b[1]}." if yes else
            f"No, there is no {missing[0]} {missing[1]}.",
            (("select", f"{a[1]} ({ids.get(a, '-')})", ()), ("filter color", a[0], (0,)), ("exist", "?", (1,)),
             ("select", f"{b[1]} ({ids.get(b, '-')})", ()), ("filter color", b[0], (3,)), ("exist", "?", (4,)),
             ("and", "", (2, 5))),
            "logical", "obj", "logicAnd", None)
    if kind == "compare-color":
        i, j = (int(v) for v in rng.choice(unique_shapes(scene), size=2, replace=False))
        a, b = shapes[i], shapes[j]
        yes = a.color == b.color
        return GQAQuestion(
            kind, f"Do the {a.shape} and the {b.shape} have the same color?", "yes" if yes else "no",
            f"Yes, both the {a.shape} and the {b.shape} are {a.color}." if yes else
            f"No, the {a.shape} is {a.color} and the {b.shape} is {b.color}.",
            (("select", f"{a.shape} ({oid(i)})", ()), ("select", f"{b.shape} ({oid(j)})", ()),
             ("same color", "", (0, 1))),
            "compare", "attr", "sameColor", None)
    if kind == "verify-rel":
        pairs = unique_pairs(scene)
        options = [(a, b) for a in pairs for b in pairs if a != b and horizontal_side(shapes[a], shapes[b], scene.size)]
        i, j = pick(options)
        a, b = shapes[i], shapes[j]
        truth = horizontal_side(a, b, scene.size)
        asked = truth if rng.random() < 0.5 else {"left": "right", "right": "left"}[truth]
        yes = asked == truth
        return GQAQuestion(
            kind, f"Is the {a.color} {a.shape} to the {asked} of the {b.color} {b.shape}?", "yes" if yes else "no",
            f"{'Yes' if yes else 'No'}, the {a.color} {a.shape} is to the {truth} of the {b.color} {b.shape}.",
            (("select", f"{a.shape} ({oid(i)})", ()), ("filter color", a.color, (0,)),
             ("verify rel", f"{b.shape},to the {asked} of,o ({oid(j)})", (1,))),
            "verify", "rel", "relVerify", None)
    raise ValueError(f"unknown GQA question kind {kind!r}")


def gqa_record(q: GQAQuestion, qid: str, image_id: str) -> dict:
    """An entry of GQA's `testdev_balanced_questions.json`, with its fields in the official order."""
    semantic = [{"operation": op, "dependencies": list(deps), "argument": arg} for op, arg, deps in q.semantic]
    semantic_str = "->".join(f"{op}: {arg}" + (f" [{', '.join(map(str, deps))}]" if deps else "")
                             for op, arg, deps in q.semantic)
    return {
        "semantic": semantic, "entailed": [], "equivalent": [qid], "question": q.question, "imageId": image_id,
        "isBalanced": True, "groups": {"global": q.group, "local": f"{q.detailed}-{q.answer}"},
        "answer": q.answer, "semanticStr": semantic_str,
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"structural": q.structural, "semantic": q.semantic_type, "detailed": q.detailed},
        "fullAnswer": q.full_answer,
    }
