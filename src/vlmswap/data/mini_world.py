"""The mini world: procedural shape scenes written in the file formats of the real datasets.

A scene is a light, slightly noisy background with 1-3 non-overlapping shapes (circle / square /
triangle in red / green / blue / yellow). From those scenes `generate` writes

- an instruction set in the LLaVA-v1.5 665K json format (VQA and grounding turns, plus ~5%
  language-only records), images under `coco/train2017/`;
- a VQA-v2 val set in the official questions / annotations format (10 answers per question, with a
  little deterministic annotator noise so that soft accuracy is exercised);
- a RefCOCO val set in the REFER format (`instances.json` loadable by pycocotools + `refs(unc).p`);
- a 12-class (shape x color) classification set for backbone pretraining;
- `scenes.json` (every scene's ground truth, boxes in pixels), `text_corpus.txt` (every string the
  tokenizer should see) and `world.json` (counts, question families, baselines, sha256 of each
  file).

Training turns use exactly the evaluation prompt styles (prismatic_spec.md 3.1): VQA turns end with
"\nAnswer the question using a single word or phrase." and grounding turns ask for
`[x1, y1, x2, y2]` normalized by the image size with 2 decimals, as vlm-evaluation's RefCOCO
harness writes its ground truth. Eval scenes are held out: their ids differ and no eval scene
repeats a training (or classification) scene's layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from vlmswap.atomic import write_bytes, write_json

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
CLASSES = [f"{color}_{shape}" for shape in SHAPES for color in COLORS]  # label = shape * 4 + color

SIZE_RANGE = (0.25, 0.45)  # shape side as a fraction of the image side
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
GROUNDING_PROMPT = 'Please provide the bounding box coordinate of the region this sentence describes: "{sentence}"'
# Every eval prompt suffix of vlm-evaluation (prismatic_spec.md 3.1), so the tokenizer knows them all.
EVAL_PROMPT_LINES = (
    "Answer the question using a single word or phrase.",
    "When the provided information is insufficient, respond with 'Unanswerable'.",
    *(f"{chr(ord('A') + i)}. {i}" for i in range(16)),
    "Answer with the option's letter from the given choices directly.",
    'Based on the image, is this statement "True" or "False"?',
    'Respond with "True" or "False" directly.',
    "USER:",
    "ASSISTANT:",
)

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
GROUNDING_SHARE = 0.3  # fraction of training turns that are grounding turns
LANGUAGE_SHARE = 0.05  # language-only records, relative to the number of training scenes
VQA_PER_SCENE = 2
CLASSIFY_VAL_SHARE = 0.1

# Disjoint id ranges make held-out sets obvious at a glance.
TRAIN_ID0, VQA_ID0, REFCOCO_ID0 = 1_000_000, 2_000_000, 3_000_000
CATEGORY_IDS = {shape: i + 1 for i, shape in enumerate(SHAPES)}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five"]
SHAPE_REPHRASINGS = {"circle": "round", "square": "rectangle", "triangle": "triangular"}


@dataclass(frozen=True)
class Shape:
    """One object: kind, color name and its square box in pixels (x, y = top-left; side s)."""

    shape: str
    color: str
    x: int
    y: int
    s: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.s, self.y + self.s

    @property
    def cx(self) -> float:
        return self.x + self.s / 2


@dataclass(frozen=True)
class Scene:
    """A rendered image's ground truth. `background` and `noise_seed` make rendering deterministic."""

    image_id: int
    size: int
    background: int
    noise_seed: int
    shapes: tuple[Shape, ...]

    def key(self) -> tuple:
        """Layout identity, used to hold eval scenes out of the training scenes."""
        return tuple(sorted((o.shape, o.color, o.x, o.y, o.s) for o in self.shapes))


# ---------------------------------------------------------------- scenes and rendering


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """One independent generator per (stream, item): any item can be regenerated on its own."""
    return np.random.default_rng([seed, stream, index])


def _place(rng: np.random.Generator, size: int, sides: list[int]) -> list[tuple[int, int, int]]:
    """Non-overlapping (1 px gap), fully inside positions; shrinks a side after repeated misses."""
    placed: list[tuple[int, int, int]] = []
    smallest = max(4, round(SIZE_RANGE[0] * size))
    for s in sides:
        for attempt in range(200):
            if attempt and attempt % 50 == 0:
                s = max(smallest, s - max(1, size // 32))
            x, y = (int(v) for v in rng.integers(0, size - s + 1, size=2))
            if all(x + s + 1 <= px or px + ps + 1 <= x or y + s + 1 <= py or py + ps + 1 <= y
                   for px, py, ps in placed):
                placed.append((x, y, s))
                break
    return placed


def sample_scene(rng: np.random.Generator, image_id: int, size: int, n_shapes: int | None = None) -> Scene:
    n = int(rng.integers(1, 4)) if n_shapes is None else n_shapes
    sides = [round(float(rng.uniform(*SIZE_RANGE)) * size) for _ in range(n)]
    sides.sort(reverse=True)  # big ones first: they are the hardest to fit
    positions = _place(rng, size, sides)
    colors = list(COLORS)
    shapes = tuple(
        Shape(SHAPES[int(rng.integers(3))], colors[int(rng.integers(4))], x, y, s) for x, y, s in positions
    )
    return Scene(image_id, size, int(rng.integers(200, 240)), int(rng.integers(2**31)), shapes)


def render(scene: Scene) -> Image.Image:
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, 4.0, size=(scene.size, scene.size, 1))
    tint = np.array([0.0, 1.0, 2.0]) * (scene.noise_seed % 3 - 1)  # a faint warm/cool cast
    pixels = np.clip(scene.background + noise + tint, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for o in scene.shapes:
        x0, y0, x1, y1 = o.x, o.y, o.x + o.s - 1, o.y + o.s - 1  # covers pixels x..x+s-1
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return image


def polygon(o: Shape) -> list[float]:
    """COCO segmentation polygon (flat x,y list) of a shape, in continuous pixel coordinates."""
    x, y, s = float(o.x), float(o.y), float(o.s)
    if o.shape == "square":
        points = [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]
    elif o.shape == "triangle":
        points = [(x, y + s), (x + s, y + s), (x + s / 2, y)]
    else:
        r = s / 2
        points = [(x + r + r * math.cos(2 * math.pi * k / 24), y + r + r * math.sin(2 * math.pi * k / 24))
                  for k in range(24)]
    return [round(v, 2) for point in points for v in point]


def area(o: Shape) -> float:
    return float(o.s * o.s * {"square": 1.0, "triangle": 0.5, "circle": math.pi / 4}[o.shape])


def box_string(o: Shape, size: int) -> str:
    """`[x1, y1, x2, y2]` normalized by the image side, 2 decimals (vlm-evaluation's RefCOCO GT)."""
    return "[" + ", ".join(f"{v / size:.2f}" for v in o.xyxy) + "]"


# ---------------------------------------------------------------- questions and expressions


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


# ---------------------------------------------------------------- language-only chat

MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("blue", "red"): "purple",
         ("red", "white"): "pink", ("black", "white"): "gray"}
WORDS = ("circle", "square", "triangle", "color", "shape", "red", "green", "blue", "yellow", "object")
SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}


def language_turns(rng: np.random.Generator) -> list[tuple[str, str]]:
    """1-2 deterministic text-only question/answer pairs (a stand-in for ShareGPT records)."""
    turns = []
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(4))
        if kind == 0:
            (a, b), mixed = list(MIXES.items())[int(rng.integers(len(MIXES)))]
            turns.append((f"What color do you get by mixing {a} and {b}?", f"Mixing {a} and {b} gives {mixed}."))
        elif kind == 1:
            word = WORDS[int(rng.integers(len(WORDS)))]
            turns.append((f"Spell the word {word}.", "-".join(word)))
        elif kind == 2:
            name, n = list(SIDES.items())[int(rng.integers(len(SIDES)))]
            turns.append((f"How many sides does a {name} have?", f"A {name} has {n} sides."))
        else:
            a, b = (int(v) for v in rng.integers(0, 10, size=2))
            turns.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return turns


# ---------------------------------------------------------------- writing


def _write_json(path: Path, obj) -> None:
    """Compact JSON (the data files are large); key order is the construction order, deterministic."""
    write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


def _write_image(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    if path.suffix == ".png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=95)
    write_bytes(path, buffer.getvalue())


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _held_out_scenes(seed: int, stream: int, id0: int, n: int, size: int, seen: set) -> list[Scene]:
    scenes, i = [], 0
    while len(scenes) < n:
        scene = sample_scene(_rng(seed, stream, i), id0 + i, size)
        i += 1
        if scene.key() not in seen:
            scenes.append(scene)
    return scenes


def generate(
    out: Path,
    seed: int = 0,
    n_train: int = 3000,
    n_eval: int = 300,
    n_classify: int = 2000,
    image_size: int = 64,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the mini world under `out` and return its manifest (also written as `world.json`).

    Deterministic: the same arguments give byte-identical JSON files and identical images.
    `n_eval` is the number of VQA-v2 scenes (2 questions each) and of RefCOCO sentences.
    """
    start = time.perf_counter()
    out = Path(out)
    size = image_size
    corpus: dict[str, None] = {}  # insertion-ordered set

    def remember(*texts: str) -> None:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    corpus.setdefault(line.strip())

    remember(SYSTEM_PROMPT, *EVAL_PROMPT_LINES)

    # -- 1. instruction set (LLaVA-665K format)
    train_scenes = [sample_scene(_rng(seed, 1, i), TRAIN_ID0 + i, size) for i in range(n_train)]
    records, answer_counts = [], {t: Counter() for t in ("yes/no", "number", "other")}
    n_turns = Counter()
    for scene in train_scenes:
        rng = _rng(seed, 2, scene.image_id)
        expressions = referring_expressions(scene)
        families = available_families(scene)
        turns, asked = [], set()
        for _ in range(int(rng.integers(2, 5))):
            for _retry in range(10):
                if expressions and rng.random() < GROUNDING_SHARE:
                    index = list(expressions)[int(rng.integers(len(expressions)))]
                    sentence = expressions[index][int(rng.integers(len(expressions[index])))]
                    human, gpt = GROUNDING_PROMPT.format(sentence=sentence), box_string(scene.shapes[index], size)
                    family = "grounding"
                else:
                    q = ask(scene, families[int(rng.integers(len(families)))], rng)
                    human, gpt, family = q.question + VQA_SUFFIX, q.answer, q.family
                if human not in asked:
                    break
            if human in asked:
                continue
            asked.add(human)
            n_turns[family] += 1
            if family != "grounding":
                answer_counts[QUESTION_FAMILIES[family][2]][gpt] += 1
            turns.append((human, gpt))
        conversations = []
        for k, (human, gpt) in enumerate(turns):
            conversations.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + human})
            conversations.append({"from": "gpt", "value": gpt})
            remember(human, gpt)
        records.append({"id": f"{scene.image_id:012d}", "image": f"coco/train2017/{scene.image_id:012d}.jpg",
                        "conversations": conversations})
        _write_image(out / "llava" / "coco" / "train2017" / f"{scene.image_id:012d}.jpg", render(scene))
    n_language = round(LANGUAGE_SHARE * n_train)
    for i in range(n_language):
        conversations = []
        for human, gpt in language_turns(_rng(seed, 3, i)):
            conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
            remember(human, gpt)
        records.append({"id": f"text_{i:06d}", "conversations": conversations})
    # Interleave text-only records through the mixture, as in the real file.
    records = [records[int(i)] for i in _rng(seed, 4, 0).permutation(len(records))]
    _write_json(out / "llava" / "llava_v1_5_mix665k.json", records)
    log(f"llava: {len(records)} records ({n_train} with images, {n_language} language-only), "
        f"{sum(n_turns.values())} turns {dict(sorted(n_turns.items()))}")

    # -- 4. classification set (generated before the eval sets so eval can be held out of it too)
    order = _rng(seed, 5, 0).permutation(np.arange(n_classify) % len(CLASSES))
    classify_scenes, lines = [], {"train": [], "val": []}
    n_val = round(CLASSIFY_VAL_SHARE * n_classify)
    for i in range(n_classify):
        rng = _rng(seed, 6, i)
        label = int(order[i])
        for _attempt in range(20):
            scene = sample_scene(rng, i, size, n_shapes=1 if rng.random() < 0.5 else int(rng.integers(2, 4)))
            # The labelled shape must be strictly the largest, so the label is unambiguous.
            sides = sorted((o.s for o in scene.shapes), reverse=True)
            if len(sides) == 1 or sides[0] > sides[1]:
                break
        primary = max(range(len(scene.shapes)), key=lambda j: scene.shapes[j].s)
        old = scene.shapes[primary]
        new = Shape(SHAPES[label // len(COLORS)], list(COLORS)[label % len(COLORS)], old.x, old.y, old.s)
        scene = Scene(scene.image_id, size, scene.background, scene.noise_seed,
                      scene.shapes[:primary] + (new,) + scene.shapes[primary + 1:])
        classify_scenes.append(scene)
        name = f"images/{i:06d}.png"
        _write_image(out / "classify" / name, render(scene))
        lines["val" if i >= n_classify - n_val else "train"].append(
            json.dumps({"image": name, "label": label, "label_name": CLASSES[label]}))
    for split, split_lines in lines.items():
        write_bytes(out / "classify" / f"{split}.jsonl", ("\n".join(split_lines) + "\n").encode())
    _write_json(out / "classify" / "classes.json", CLASSES)
    log(f"classify: {len(lines['train'])} train / {len(lines['val'])} val images, {len(CLASSES)} classes")

    seen = {s.key() for s in train_scenes} | {s.key() for s in classify_scenes}

    # -- 2. VQA-v2 val (official format)
    vqa_scenes = _held_out_scenes(seed, 7, VQA_ID0, n_eval, size, seen)
    questions, annotations = [], []
    family_cycle = 0
    for scene in vqa_scenes:
        rng = _rng(seed, 8, scene.image_id)
        families, asked = available_families(scene), set()
        for k in range(VQA_PER_SCENE):
            wanted = VQA_FAMILIES[family_cycle % len(VQA_FAMILIES)]  # keeps the families balanced
            family_cycle += 1
            for _retry in range(10):
                q = ask(scene, wanted if wanted in families else families[int(rng.integers(len(families)))], rng)
                if q.question not in asked:
                    break
                wanted = families[int(rng.integers(len(families)))]
            asked.add(q.question)
            _, question_type, answer_type = QUESTION_FAMILIES[q.family]
            question_id = scene.image_id * 1000 + k
            answers = annotator_answers(q, rng)
            questions.append({"image_id": scene.image_id, "question": q.question, "question_id": question_id})
            annotations.append({
                "question_id": question_id, "image_id": scene.image_id, "question_type": question_type,
                "answer_type": answer_type, "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(answers)],
            })
            remember(q.question + VQA_SUFFIX, *answers)
        _write_image(out / "vqa-v2" / "val2014" / f"COCO_val2014_{scene.image_id:012d}.jpg", render(scene))
    info = {"description": "vlmswap mini world (procedural shapes)", "version": "2.0", "year": 2017,
            "contributor": "vlmswap", "date_created": "2017-04-26 17:00:44"}
    license = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}
    _write_json(out / "vqa-v2" / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license,
        "data_subtype": "val2014", "questions": questions})
    _write_json(out / "vqa-v2" / "v2_mscoco_val2014_annotations.json", {
        "info": info, "license": license, "data_subtype": "val2014", "annotations": annotations,
        "data_type": "mscoco"})
    log(f"vqa-v2: {len(questions)} questions over {len(vqa_scenes)} images "
        f"{dict(sorted(Counter(a['answer_type'] for a in annotations).items()))}")

    # -- 3. RefCOCO val (REFER format): refs until n_eval sentences
    seen |= {s.key() for s in vqa_scenes}
    images, anns, refs, ref_scenes = [], [], [], []
    sent_id, i = 0, 0
    while sent_id < n_eval:
        scene = sample_scene(_rng(seed, 9, i), REFCOCO_ID0 + i, size)
        i += 1
        expressions = referring_expressions(scene)
        if scene.key() in seen or not expressions:
            continue
        ref_scenes.append(scene)
        rng = _rng(seed, 10, scene.image_id)
        file_name = f"COCO_train2014_{scene.image_id:012d}.jpg"
        images.append({"id": scene.image_id, "file_name": file_name, "width": size, "height": size})
        for j, o in enumerate(scene.shapes):
            anns.append({"id": scene.image_id * 10 + j, "image_id": scene.image_id,
                         "bbox": [float(o.x), float(o.y), float(o.s), float(o.s)],
                         "category_id": CATEGORY_IDS[o.shape], "area": area(o), "iscrowd": 0,
                         "segmentation": [polygon(o)]})
        referred = list(expressions)
        referred = [referred[int(j)] for j in rng.permutation(len(referred))][: int(rng.integers(1, 3))]
        for j in referred:
            if sent_id >= n_eval:
                break
            pool = expressions[j]
            n_sent = min(len(pool), int(rng.integers(1, 3)), n_eval - sent_id)
            sentences = []
            for k in rng.choice(len(pool), size=n_sent, replace=False):
                raw = pool[int(k)]
                sentences.append({"tokens": raw.lower().split(), "raw": raw, "sent_id": sent_id, "sent": raw.lower()})
                sent_id += 1
                remember(GROUNDING_PROMPT.format(sentence=raw.lower()), box_string(scene.shapes[j], size))
            o, ann_id = scene.shapes[j], scene.image_id * 10 + j
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": scene.image_id, "split": "val",
                         "category_id": CATEGORY_IDS[o.shape],
                         "file_name": f"COCO_train2014_{scene.image_id:012d}_{ann_id}.jpg",
                         "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
        _write_image(out / "refcoco" / "train2014" / file_name, render(scene))
    categories = [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES]
    _write_json(out / "refcoco" / "refcoco" / "instances.json", {
        "info": info, "images": images, "licenses": [dict(license, id=1)], "annotations": anns,
        "categories": categories})
    write_bytes(out / "refcoco" / "refcoco" / "refs(unc).p", pickle.dumps(refs, protocol=2))
    log(f"refcoco: {len(refs)} refs, {sent_id} sentences over {len(images)} images ({len(anns)} objects)")

    # -- 5. ground truth, corpus, baselines, manifest
    _write_json(out / "scenes.json", {
        name: [asdict(s) for s in scenes] for name, scenes in
        (("llava", train_scenes), ("vqa-v2", vqa_scenes), ("refcoco", ref_scenes), ("classify", classify_scenes))
    })
    write_bytes(out / "text_corpus.txt", ("\n".join(corpus) + "\n").encode())

    majority = {t: c.most_common(1)[0][0] for t, c in answer_counts.items() if c}
    overall = sum(answer_counts.values(), Counter()).most_common(1)[0][0] if records else ""
    by_type = [a["multiple_choice_answer"] == majority.get(a["answer_type"]) for a in annotations]
    by_all = [a["multiple_choice_answer"] == overall for a in annotations]
    center = (0.25, 0.25, 0.75, 0.75)
    ann_boxes = {a["id"]: a["bbox"] for a in anns}
    ious = []
    for r in refs:
        x, y, w, h = ann_boxes[r["ann_id"]]
        gt = tuple(round(v / size, 2) for v in (x, y, x + w, y + h))  # as vlm-evaluation's RefCOCO GT
        ious += [_iou(center, gt)] * len(r["sentences"])
    baselines = {
        "vqa_majority_per_answer_type": majority,
        "vqa_majority_per_answer_type_accuracy": round(100 * sum(by_type) / max(1, len(by_type)), 2),
        "vqa_majority_overall": overall,
        "vqa_majority_overall_accuracy": round(100 * sum(by_all) / max(1, len(by_all)), 2),
        "vqa_majority_note": "most frequent training answer per answer_type (or overall), exact match "
                             "against multiple_choice_answer, percent",
        "refcoco_center_box": list(center),
        "refcoco_center_box_accuracy": round(100 * sum(v >= 0.5 for v in ious) / max(1, len(ious)), 2),
        "refcoco_center_box_note": "Acc@IoU>=0.5 per sentence against the 2-decimal normalized GT, percent",
    }
    log(f"baselines: VQA majority {baselines['vqa_majority_per_answer_type_accuracy']}% per answer type, "
        f"{baselines['vqa_majority_overall_accuracy']}% overall; "
        f"RefCOCO central box {baselines['refcoco_center_box_accuracy']}%")

    files = {
        "llava": "llava/llava_v1_5_mix665k.json",
        "llava_images": "llava",
        "vqa_questions": "vqa-v2/v2_OpenEnded_mscoco_val2014_questions.json",
        "vqa_annotations": "vqa-v2/v2_mscoco_val2014_annotations.json",
        "vqa_images": "vqa-v2/val2014",
        "refcoco_instances": "refcoco/refcoco/instances.json",
        "refcoco_refs": "refcoco/refcoco/refs(unc).p",
        "refcoco_images": "refcoco/train2014",
        "classify_train": "classify/train.jsonl",
        "classify_val": "classify/val.jsonl",
        "classify_classes": "classify/classes.json",
        "scenes": "scenes.json",
        "text_corpus": "text_corpus.txt",
    }
    world = {
        "seed": seed,
        "image_size": size,
        "counts": {
            "train_scenes": n_train, "llava_records": len(records), "llava_language_only": n_language,
            "llava_turns": dict(sorted(n_turns.items())), "vqa_images": len(vqa_scenes),
            "vqa_questions": len(questions), "refcoco_images": len(images), "refcoco_refs": len(refs),
            "refcoco_sentences": sent_id, "classify_train": len(lines["train"]), "classify_val": len(lines["val"]),
            "text_corpus_lines": len(corpus),
        },
        "classes": CLASSES,
        "shapes": list(SHAPES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "question_families": {
            name: {"templates": templates, "question_type": qtype, "answer_type": atype}
            for name, (templates, qtype, atype) in QUESTION_FAMILIES.items()
        },
        "prompts": {"system": SYSTEM_PROMPT, "vqa_suffix": VQA_SUFFIX, "grounding": GROUNDING_PROMPT},
        "files": files,
        "sha256": {
            path: hashlib.sha256((out / path).read_bytes()).hexdigest()
            for path in files.values() if (out / path).is_file()
        },
        "baselines": baselines,
    }
    write_json(out / "world.json", world)  # written last: its presence marks a complete world
    log(f"world: written to {out} in {time.perf_counter() - start:.1f} s")
    return world
