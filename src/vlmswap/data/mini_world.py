"""The mini world: procedural shape scenes written in the file formats of the real datasets.

A scene is a light, slightly noisy background with 1-3 non-overlapping shapes (circle / square /
triangle in red / green / blue / yellow). Text scenes add 1-2 words of `TEXT_WORDS` in PIL's
built-in bitmap font, on a square / circle or on the background; counting scenes hold 1-5 smaller
shapes from a small palette; OCID-Ref scenes are 640x480 tables with 2-8 shapes. From those scenes
`generate` writes, under `out/` (n = `n_eval`; a scene's ground truth is in `scenes.json` under the
benchmark's name, its `image_id` recoverable from the file name as noted):

    llava/llava_v1_5_mix665k.json     LLaVA-v1.5 665K format: [{id, image?, conversations}], ~5%
    llava/coco/train2017/{id:012d}.jpg  language-only records; see "Training turns" below
    vqa-v2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json
    vqa-v2/val2014/COCO_val2014_{image_id:012d}.jpg   n images x 2 questions, 10 answers with a
                                      little deterministic annotator noise (soft accuracy is exercised)
    refcoco/refcoco/instances.json, refs(unc).p       REFER format (pycocotools + pickle protocol 2),
    refcoco/train2014/COCO_train2014_{image_id:012d}.jpg   n sentences, split "val"
    classify/{train,val}.jsonl, classes.json, images/{i:06d}.png   12-class (shape x color) set:
                                      {image, label (the largest shape), label_name, size, objects:
                                      [{label, bbox xyxy px, polygon}]} (every shape: the detection
                                      and segmentation targets of backbone pretraining)
    gqa/testdev_balanced_questions.json   {"<qid>": {semantic: [{operation, dependencies, argument}],
                                      entailed: [], equivalent: [qid], question, imageId: "n<image_id>",
                                      isBalanced: true, groups: {global, local}, answer, semanticStr,
                                      annotations, types: {structural, semantic, detailed}, fullAnswer}};
    gqa/images/{imageId}.jpg          n questions, 3 per image (query / verify / choose / logical /
                                      compare kinds, relations "to the left of"), one-word answers
    vizwiz/Annotations/val.json       [{image, question, answers: 10 x {answer, answer_confidence},
                                      answer_type, answerable: 0/1}], one question per image; 15%
                                      ask about an absent shape / color or for the word on an object
                                      that carries none: answers "unanswerable", answer_type
                                      "unanswerable", answerable 0
    vizwiz/val/VizWiz_val_{image_id - 5000000:08d}.jpg
    textvqa/TextVQA_0.5.1_val.json    {dataset_type, dataset_name, dataset_version, data: [{question,
                                      image_id: "{image_id:016x}", image_classes, flickr_original_url,
                                      flickr_300k_url, image_width, image_height, answers: 10 strings,
                                      question_tokens, question_id, set_name}]}, n questions, 1-2 per image
    textvqa/textvqa_val_v051_ocr.jsonl  one JSON per line, same order: {question_id, image:
                                      "{image_id}.jpg", text: question + "\nReference OCR token: w1, w2"
                                      (the rendered words, reading order), category}
    textvqa/train_images/{image_id}.jpg
    pope/coco_pope_{adversarial,popular,random}.json   JSON lines {question_id (1.. per split), image:
                                      "COCO_val2014_{image_id:012d}.jpg", text: "Is there a {color}
                                      {shape} in the image?", label: "yes"/"no"}, n//2 yes/no pairs per
                                      split over the same images, the yes probes shared (see _write_pope)
    pope/val2014/{image}
    tallyqa/test.json                 [{image: "VG_100K[_2]/{image_id}.jpg", answer: int 0..5,
                                      data_source, question, image_id, question_id, issimple}], n
                                      questions, 2 per image, simple ("How many {color} {shape}s are
                                      there?") and complex ("How many shapes are left of the {color}
                                      {shape}?") alternating
    tallyqa/{image}
    ocid-ref/val_expressions.json     {"<id>": {take_id 0..20, scene_path, sub_dataset, class,
                                      sentence, bbox: "[x1, y1, x2, y2]" (pixels, a JSON string as in
                                      the released file: vlm-evaluation json.loads it), scene_id,
                                      anno_id, instance_id, sequence_path}}, n expressions, <= 3 per
                                      scene; scenes cycle through the clutter splits (take 0-9 / 10-16
                                      / 17-20) and hold 2 + round(6 * take_id / 20) objects
    ocid-ref/OCID-dataset/{scene_path}  640x480 PNG, e.g. ARID20/table/top/seq03/rgb/result_2018-08-20-10-00-37.png
    scenes.json                       every scene's ground truth by benchmark (boxes in pixels; text
                                      scenes add `words`, OCID scenes `height`)
    text_corpus.txt                   every string the tokenizer should see
    world.json                        counts, question families, prompts, baselines, sha256 of each file

Training turns use exactly the evaluation prompt styles (prismatic_spec.md 3.1): VQA-v2, GQA, POPE
and TextVQA turns end with "\nAnswer the question using a single word or phrase." (TextVQA turns
carry the OCR line before it two times in three, the rest are "Pure"); VizWiz turns add the
"respond with 'Unanswerable'" line before it; TallyQA turns list the 16 choices "A. 0" .. "P. 15"
and are answered with the letter; POPE turns are answered "Yes" / "No" (capitalized: POPE is scored
from the first-token probabilities of those strings); grounding turns ask for `[x1, y1, x2, y2]`
normalized by the image size with 2 decimals, as vlm-evaluation's RefCOCO harness writes its ground
truth. 15% of the training slots are text scenes and 15% counting scenes; grounding is ~28% of the
turns. Eval scenes are held out: their ids differ and no eval scene repeats the layout of a
training (or classification) scene or of another eval scene. The VQA-v2 / RefCOCO / classification
files do not depend on the other benchmarks: they are byte-identical to those of earlier versions.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import math
import pickle
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
GROUNDING_SHARE = 0.3  # chance that a plain training turn is a grounding turn (~28% of all turns)
LANGUAGE_SHARE = 0.05  # language-only records, relative to the number of training scenes
VQA_PER_SCENE = 2
CLASSIFY_VAL_SHARE = 0.1

# Disjoint id ranges make held-out sets obvious at a glance.
TRAIN_ID0, VQA_ID0, REFCOCO_ID0 = 1_000_000, 2_000_000, 3_000_000
GQA_ID0, VIZWIZ_ID0, TEXTVQA_ID0, POPE_ID0, TALLY_ID0, OCID_ID0 = (
    4_000_000, 5_000_000, 6_000_000, 7_000_000, 8_000_000, 9_000_000)

# The other benchmarks' eval prompts (prismatic_spec.md 3.1); training turns use them verbatim.
VIZWIZ_SUFFIX = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + VQA_SUFFIX
TALLY_SUFFIX = "".join(f"\n{chr(ord('A') + i)}. {i}" for i in range(16)) + (
    "\nAnswer with the option's letter from the given choices directly.")
OCR_PREFIX = "\nReference OCR token: "  # LLaVA's TextVQA question file: question + this + "tok1, tok2"
POPE_TEMPLATE = "Is there a {object} in the image?"
UNANSWERABLE = "unanswerable"

TEXT_WORDS = ("stop", "open", "exit", "sale", "taxi", "cafe", "park", "menu", "bus", "cat", "dog", "sun")
INKS = {"white": (250, 250, 250), "black": (20, 20, 20)}
TEXT_SIZE_RANGE = (0.4, 0.6)  # text scenes: shapes big enough to carry a word
TALLY_SIZE_RANGE = (0.16, 0.3)  # counting scenes: up to 5 smaller shapes
TALLY_MAX_SHAPES = 5
RELATION_MARGIN = 0.05  # "left of" needs the centres this far apart (fraction of the width)
OCID_WH = (640, 480)  # every OCID image is 640 x 480 (vlm-evaluation's ocidref.py)
OCID_SIZE_RANGE = (0.16, 0.3)
# OCID take_id -> clutter split, as vlm-evaluation's ocidref.py: 0-9 / 10-16 / 17-20.
OCID_CLUTTER = {"Minimum": (0, 9), "Medium": (10, 16), "Maximum": (17, 20)}
OCID_SUBSETS = (("ARID20", ""), ("ARID10", "box"), ("ARID10", "fruits"), ("YCB10", "cuboid"), ("YCB10", "curved"))
NOISE_BLOCK = 4  # OCID scenes: noise in 4x4 blocks keeps a 640x480 PNG near 30 KB

GQA_PER_SCENE = 3
TEXTVQA_PER_SCENE = 2
TALLY_PER_SCENE = 2
OCID_PER_SCENE = 3
POPE_PAIRS_PER_SCENE = 2  # POPE asks balanced yes/no pairs about each image
UNANSWERABLE_SHARE = 0.15  # of the VizWiz val questions
# Training mixture: each training slot is a plain scene, a text scene or a counting scene; a turn is
# grounding with probability TURN_GROUNDING[kind] (when the scene has a referring expression),
# otherwise one of the prompt styles below, drawn with these weights.
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
class Word:
    """A word written in the image: its text, the box its glyphs fill (pixels, top-left x, y), the index
    of the shape it is written on (-1: on the background) and its ink."""

    text: str
    x: int
    y: int
    w: int
    h: int
    on: int
    ink: str

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.w, self.y + self.h


@dataclass(frozen=True)
class Scene:
    """A rendered image's ground truth. `background` and `noise_seed` make rendering deterministic.

    `size` is the width, and the height too unless `height` is set (OCID-Ref scenes are 640 x 480).
    """

    image_id: int
    size: int
    background: int
    noise_seed: int
    shapes: tuple[Shape, ...]
    words: tuple[Word, ...] = ()
    height: int | None = None

    def key(self) -> tuple:
        """Layout identity, used to hold eval scenes out of the training scenes. Only the shapes count,
        so a text scene and a plain scene with the same shapes are the same layout (the stricter rule)."""
        return tuple(sorted((o.shape, o.color, o.x, o.y, o.s) for o in self.shapes))

    @property
    def wh(self) -> tuple[int, int]:
        return self.size, self.size if self.height is None else self.height


def scene_record(scene: Scene) -> dict:
    """`scenes.json` entry: the dataclass fields, leaving out `words` / `height` where unused."""
    record = asdict(scene)
    if not scene.words:
        del record["words"]
    if scene.height is None:
        del record["height"]
    return record


# ---------------------------------------------------------------- scenes and rendering


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """One independent generator per (stream, item): any item can be regenerated on its own."""
    return np.random.default_rng([seed, stream, index])


def _place(rng: np.random.Generator, size: int, sides: list[int], smallest: int | None = None,
           height: int | None = None, grid: int = 1) -> list[tuple[int, int, int]]:
    """Non-overlapping (1 px gap), fully inside positions; shrinks a side after repeated misses.
    With `grid` > 1 (pixels), positions and sides are multiples of it."""
    placed: list[tuple[int, int, int]] = []
    smallest = max(4, round(SIZE_RANGE[0] * size)) if smallest is None else smallest
    for s in sides:
        for attempt in range(200):
            if attempt and attempt % 50 == 0:
                s = max(smallest, s - max(grid, size // 32))
            if height is None:
                x, y = (int(v) * grid for v in rng.integers(0, (size - s) // grid + 1, size=2))
            else:
                x, y = (int(rng.integers(0, (size - s) // grid + 1)) * grid,
                        int(rng.integers(0, (height - s) // grid + 1)) * grid)
            if all(x + s + 1 <= px or px + ps + 1 <= x or y + s + 1 <= py or py + ps + 1 <= y
                   for px, py, ps in placed):
                placed.append((x, y, s))
                break
    return placed


def sample_scene(rng: np.random.Generator, image_id: int, size: int, n_shapes: int | None = None,
                 size_range: tuple[float, float] = SIZE_RANGE, height: int | None = None, grid: int = 0) -> Scene:
    """1-3 shapes (or `n_shapes`) with sides in `size_range` times the shorter image side. With
    `grid` > 0, boxes snap to a grid of `grid` x `grid` cells over the image (positions and sides
    whole cells), so that a box is a few discrete coordinates."""
    n = int(rng.integers(1, 4)) if n_shapes is None else n_shapes
    short = size if height is None else min(size, height)
    step = short // grid if grid else 1
    sides = [round(float(rng.uniform(*size_range)) * short) for _ in range(n)]
    if grid:
        sides = [max(step, round(side / step) * step) for side in sides]
    sides.sort(reverse=True)  # big ones first: they are the hardest to fit
    positions = _place(rng, size, sides, max(4, round(size_range[0] * short)) if not grid else step, height, step)
    colors = list(COLORS)
    shapes = tuple(
        Shape(SHAPES[int(rng.integers(3))], colors[int(rng.integers(4))], x, y, s) for x, y, s in positions
    )
    return Scene(image_id, size, int(rng.integers(200, 240)), int(rng.integers(2**31)), shapes, height=height)


@functools.lru_cache(maxsize=None)
def glyphs(text: str, scale: int) -> Image.Image:
    """The word in PIL's built-in bitmap font (no font file, identical everywhere) as an "L" mask,
    scaled up `scale` times with nearest-neighbour so strokes stay crisp."""
    font = ImageFont.load_default_imagefont()
    _, _, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right, bottom))
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    return mask.resize((right * scale, bottom * scale), Image.NEAREST) if scale > 1 else mask


def text_scale(size: int) -> int:
    """Glyph magnification: the 11 px high bitmap font as is up to 95 px images, x2 from 96 px, x3 from 144."""
    return max(1, size // 48)


def _fits(o: Shape, w: int, h: int) -> bool:
    """A w x h word centred on a square or circle stays inside it, with a 2 px margin."""
    if o.shape == "square":
        return w <= o.s - 4 and h <= o.s - 4
    if o.shape == "circle":
        return (w / 2) ** 2 + (h / 2) ** 2 <= (o.s / 2 - 2) ** 2
    return False


def sample_text_scene(rng: np.random.Generator, image_id: int, size: int) -> Scene:
    """1-2 large shapes and 1-2 distinct words of TEXT_WORDS, each centred on a square or circle that
    can hold it (white ink, black on yellow) or on a free patch of background (black ink)."""
    scale = text_scale(size)
    while True:
        scene = sample_scene(rng, image_id, size, n_shapes=int(rng.integers(1, 3)), size_range=TEXT_SIZE_RANGE)
        n_words, words, used = int(rng.integers(1, 3)), [], set()
        for j in (int(j) for j in rng.permutation(len(scene.shapes))):
            o = scene.shapes[j]
            fitting = [t for t in TEXT_WORDS if t not in used and _fits(o, *glyphs(t, scale).size)]
            if len(words) == n_words or not fitting or rng.random() < 0.25:
                continue
            text = fitting[int(rng.integers(len(fitting)))]
            w, h = glyphs(text, scale).size
            words.append(Word(text, o.x + (o.s - w) // 2, o.y + (o.s - h) // 2, w, h, j,
                              "black" if o.color == "yellow" else "white"))
            used.add(text)
        boxes = [o.xyxy for o in scene.shapes]
        for _attempt in range(100):
            if len(words) >= n_words:
                break
            free = [t for t in TEXT_WORDS if t not in used and glyphs(t, scale).size[0] <= size - 4]
            text = free[int(rng.integers(len(free)))]
            w, h = glyphs(text, scale).size
            x, y = int(rng.integers(1, size - w)), int(rng.integers(1, size - h))
            if all(x + w + 2 <= bx0 or bx1 + 2 <= x or y + h + 2 <= by0 or by1 + 2 <= y
                   for bx0, by0, bx1, by1 in boxes):
                words.append(Word(text, x, y, w, h, -1, "black"))
                boxes.append((x, y, x + w, y + h))
                used.add(text)
        reading_order = tuple(sorted(words, key=lambda wd: (wd.y, wd.x)))
        scene = Scene(image_id, size, scene.background, scene.noise_seed, scene.shapes, reading_order)
        if text_questions(scene):  # some word can be asked about unambiguously
            return scene


def ocr_tokens(scene: Scene) -> list[str]:
    """The words an ideal OCR system reads from the scene, in reading order (top to bottom, left to right)."""
    return [w.text for w in sorted(scene.words, key=lambda wd: (wd.y, wd.x))]


def draw_shape(draw: ImageDraw.ImageDraw, o: Shape, fill) -> None:
    """Paint the pixels of shape `o` (x..x+s-1, y..y+s-1): the renderer's, and the segmentation masks'."""
    x0, y0, x1, y1 = o.x, o.y, o.x + o.s - 1, o.y + o.s - 1
    if o.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif o.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def class_mask(objects: Sequence[Mapping], size: int) -> Image.Image:
    """The segmentation target of a classification-set image (its `objects` records): an "L" image,
    0 = background, label + 1 on exactly the pixels the renderer paints for that shape."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for o in objects:
        x0, y0, x1, _ = o["bbox"]
        shape = Shape(CLASSES[o["label"]].split("_")[1], CLASSES[o["label"]].split("_")[0], x0, y0, x1 - x0)
        draw_shape(draw, shape, o["label"] + 1)
    return mask


def render(scene: Scene) -> Image.Image:
    width, height = scene.wh
    rng = np.random.default_rng(scene.noise_seed)
    if scene.height is None:
        noise = rng.normal(0.0, 4.0, size=(height, width, 1))
    else:  # 640 x 480 OCID-Ref scenes get blocky sensor noise: per-pixel noise makes 300 KB PNGs
        block = NOISE_BLOCK
        coarse = rng.normal(0.0, 4.0, size=(-(-height // block), -(-width // block), 1))
        noise = coarse.repeat(block, 0).repeat(block, 1)[:height, :width]
    tint = np.array([0.0, 1.0, 2.0]) * (scene.noise_seed % 3 - 1)  # a faint warm/cool cast
    pixels = np.clip(scene.background + noise + tint, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for o in scene.shapes:
        draw_shape(draw, o, COLORS[o.color])
    for word in scene.words:
        mask = glyphs(word.text, word.h // glyphs(word.text, 1).size[1])
        image.paste(INKS[word.ink], word.xyxy, mask)
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


# ---------------------------------------------------------------- questions of the other benchmarks


def _unique_pairs(scene: Scene) -> list[int]:
    """Objects that "the {color} {shape}" names unambiguously."""
    counts = Counter((o.shape, o.color) for o in scene.shapes)
    return [j for j, o in enumerate(scene.shapes) if counts[o.shape, o.color] == 1]


def _unique_shapes(scene: Scene) -> list[int]:
    """Objects that "the {shape}" names unambiguously."""
    counts = Counter(o.shape for o in scene.shapes)
    return [j for j, o in enumerate(scene.shapes) if counts[o.shape] == 1]


def _unique_colors(scene: Scene) -> list[int]:
    """Objects that "the {color} object" names unambiguously."""
    counts = Counter(o.color for o in scene.shapes)
    return [j for j, o in enumerate(scene.shapes) if counts[o.color] == 1]


def side_of(o: Shape, ref: Shape, width: int) -> str | None:
    """"left" / "right" when o's centre is clearly (RELATION_MARGIN) left / right of ref's, else None."""
    margin = RELATION_MARGIN * width
    if o.cx <= ref.cx - margin:
        return "left"
    if o.cx >= ref.cx + margin:
        return "right"
    return None


def _clear_reference(scene: Scene, j: int) -> bool:
    """Every other object is clearly left or right of object j, so "left of j" is well defined."""
    ref = scene.shapes[j]
    return all(side_of(o, ref, scene.size) for k, o in enumerate(scene.shapes) if k != j)


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
    pairs, shapes = _unique_pairs(scene), _unique_shapes(scene)
    kinds = []
    if shapes or _unique_colors(scene):
        kinds.append("query-attr")
    if _relation_targets(scene):
        kinds.append("query-rel")
    if shapes:
        kinds += ["verify-attr", "choose-attr"]
    kinds.append("logical-and")
    if len(shapes) >= 2:
        kinds.append("compare-color")
    if any(side_of(scene.shapes[a], scene.shapes[b], scene.size) for a in pairs for b in pairs if a != b):
        kinds.append("verify-rel")
    return kinds


def _relation_targets(scene: Scene) -> list[tuple[int, str, int]]:
    """(reference, side, target): target is the only object on that side of a clear, unique reference."""
    found = []
    for r in _unique_pairs(scene):
        if not _clear_reference(scene, r):
            continue
        for side in ("left", "right"):
            on_side = [k for k, o in enumerate(scene.shapes)
                       if k != r and side_of(o, scene.shapes[r], scene.size) == side]
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
        by_shape, by_color = _unique_shapes(scene), _unique_colors(scene)
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
        j = pick(_unique_shapes(scene))
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
        i, j = (int(v) for v in rng.choice(_unique_shapes(scene), size=2, replace=False))
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
        pairs = _unique_pairs(scene)
        options = [(a, b) for a in pairs for b in pairs if a != b and side_of(shapes[a], shapes[b], scene.size)]
        i, j = pick(options)
        a, b = shapes[i], shapes[j]
        truth = side_of(a, b, scene.size)
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


def _written_on(scene: Scene, j: int) -> str | None:
    return next((w.text for w in scene.words if w.on == j), None)


def text_questions(scene: Scene) -> list[tuple[str, str]]:
    """TextVQA-style (question, answer) pairs whose answer is a word written in the scene."""
    options = []
    if len(scene.words) == 1:
        options.append(("What word is written in the image?", scene.words[0].text))
    for j in _unique_pairs(scene):
        if (word := _written_on(scene, j)) is not None:
            o = scene.shapes[j]
            options.append((f"What word is written on the {o.color} {o.shape}?", word))
    background = [w for w in scene.words if w.on == -1]
    if len(background) == 1:
        options.append(("What word is written on the background?", background[0].text))
    return options


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
        blank = [j for j in _unique_pairs(scene) if _written_on(scene, j) is None]
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
    written = [j for j in _unique_pairs(scene) if _written_on(scene, j) is not None]
    if written and rng.random() < 0.5:
        j = written[int(rng.integers(len(written)))]
        return Question("text", f"What word is written on the {shapes[j].color} {shapes[j].shape}?",
                        _written_on(scene, j))
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
    refs = [j for j in _unique_pairs(scene) if _clear_reference(scene, j) and len(shapes) > 1]
    if not refs:
        return None
    r = refs[int(rng.integers(len(refs)))]
    ref = shapes[r]
    sides = {side: [o for k, o in enumerate(shapes) if k != r and side_of(o, ref, scene.size) == side]
             for side in ("left", "right")}
    side = pick([side for side, found in sides.items() if found], ["left", "right"])
    on_side = sides[side]
    if rng.random() < 0.6:
        return Question("tally-complex", f"How many shapes are {side} of the {ref.color} {ref.shape}?",
                        str(len(on_side)))
    kind = pick(sorted({o.shape for o in on_side}), list(SHAPES)) if on_side else SHAPES[int(rng.integers(3))]
    return Question("tally-complex", f"How many {kind}s are {side} of the {ref.color} {ref.shape}?",
                    str(sum(o.shape == kind for o in on_side)))


def tally_letter(count: int) -> str:
    """TallyQA's multiple-choice answer: "A" for 0 ... "P" for 15."""
    return chr(ord("A") + count)


def soft_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA-style accuracy of one prediction: min(1, matches among the other 9 / 3), averaged over the 10."""
    scores = [min(1.0, (answers[:k] + answers[k + 1:]).count(prediction) / 3) for k in range(len(answers))]
    return sum(scores) / len(scores)


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


def _held_out_scenes(seed: int, stream: int, id0: int, n: int, size: int, seen: set, grid: int = 0) -> list[Scene]:
    scenes, i = [], 0
    while len(scenes) < n:
        scene = sample_scene(_rng(seed, stream, i), id0 + i, size, grid=grid)
        i += 1
        if scene.key() not in seen:
            scenes.append(scene)
    return scenes


def _fresh(make: Callable[[int], Scene], seen: set) -> Iterator[Scene]:
    """make(0), make(1), ... skipping layouts in `seen`; each scene handed out joins `seen`, so the
    benchmarks stay disjoint from the training scenes and from each other."""
    for i in itertools.count():
        scene = make(i)
        if scene.key() not in seen:
            seen.add(scene.key())
            yield scene


def _tally_scene(rng: np.random.Generator, image_id: int, size: int) -> Scene:
    """A counting scene: 1-5 smaller shapes drawn from a palette of 1-3 colors and 1-3 kinds, so that
    objects repeat and counts (and "left of" counts) vary."""
    n = int(rng.integers(1, TALLY_MAX_SHAPES + 1))
    scene = sample_scene(rng, image_id, size, n_shapes=n, size_range=TALLY_SIZE_RANGE)
    colors = [str(c) for c in rng.choice(list(COLORS), size=int(rng.integers(1, 4)), replace=False)]
    kinds = [str(k) for k in rng.choice(SHAPES, size=int(rng.integers(1, 4)), replace=False)]
    shapes = tuple(Shape(kinds[int(rng.integers(len(kinds)))], colors[int(rng.integers(len(colors)))], o.x, o.y, o.s)
                   for o in scene.shapes)
    return Scene(image_id, size, scene.background, scene.noise_seed, shapes)


def ocid_objects(take_id: int) -> int:
    """Objects on the table at an OCID take: 2 at take 0 up to 8 at take 20 (OCID adds objects per take)."""
    return 2 + round(take_id * 6 / 20)


def ocid_clutter(take_id: int) -> str:
    return next(name for name, (lo, hi) in OCID_CLUTTER.items() if lo <= take_id <= hi)


def _instruction_turn(scene: Scene, kind: str, rng: np.random.Generator, expressions: dict[int, list[str]],
                      tally_done: bool, mix: str = "all") -> tuple[str, str, str, str]:
    """One training turn for a slot of `kind`: (human, gpt, label, answer), in an eval prompt format."""
    size = scene.size
    grounding_share, styles = (TURN_GROUNDING[kind], TURN_STYLES[kind]) if mix == "all" else FOCUSED_MIX
    if expressions and rng.random() < grounding_share:
        index = list(expressions)[int(rng.integers(len(expressions)))]
        sentence = expressions[index][int(rng.integers(len(expressions[index])))]
        box = box_string(scene.shapes[index], size)
        return GROUNDING_PROMPT.format(sentence=sentence), box, "grounding", box
    weights = np.array(list(styles.values()))
    style = list(styles)[int(rng.choice(len(styles), p=weights / weights.sum()))]
    if style == "tally" and tally_done:  # one 16-choice prompt per record keeps records short
        style = "vqa"
    if style == "gqa":
        kinds = gqa_kinds(scene)
        q = ask_gqa(scene, kinds[int(rng.integers(len(kinds)))], rng)
        return q.question + VQA_SUFFIX, q.answer, "gqa", q.answer
    if style == "pope":
        q = ask_pope(scene, rng)
        return q.question + VQA_SUFFIX, q.answer, "pope", q.answer
    if style == "vizwiz":
        q = ask_vizwiz(scene, rng, rng.random() < TRAIN_UNANSWERABLE_SHARE) or ask_vizwiz(scene, rng, False)
        return q.question + VIZWIZ_SUFFIX, q.answer, "vizwiz", q.answer
    if style == "textvqa":
        q = ask_text(scene, rng)
        ocr = OCR_PREFIX + ", ".join(ocr_tokens(scene)) if rng.random() < TRAIN_OCR_SHARE else ""
        return q.question + ocr + VQA_SUFFIX, q.answer, "textvqa", q.answer
    if style == "tally":
        q = ask_tally(scene, rng, simple=rng.random() < 0.5) or ask_tally(scene, rng, simple=True)
        return q.question + TALLY_SUFFIX, tally_letter(int(q.answer)), "tally", q.answer
    families = available_families(scene)
    q = ask(scene, families[int(rng.integers(len(families)))], rng)
    return q.question + VQA_SUFFIX, q.answer, q.family, q.answer


def _write_gqa(out: Path, seed: int, n: int, size: int, seen: set, remember: Callable,
               grid: int = 0) -> tuple[list[Scene], dict]:
    """GQA testdev-balanced: `testdev_balanced_questions.json` + `images/{imageId}.jpg`."""
    kinds_all = ("query-attr", "verify-attr", "query-rel", "choose-attr", "logical-and", "compare-color",
                 "verify-rel")
    questions, scenes, cycle = {}, [], 0
    fresh = _fresh(lambda i: sample_scene(_rng(seed, 21, i), GQA_ID0 + i, size, grid=grid), seen)
    while len(questions) < n:
        scene = next(fresh)
        rng = _rng(seed, 22, scene.image_id)
        kinds, asked, image_id = gqa_kinds(scene), set(), f"n{scene.image_id}"
        for k in range(GQA_PER_SCENE):
            wanted = kinds_all[cycle % len(kinds_all)]  # keeps the kinds balanced
            cycle += 1
            for _retry in range(10):
                q = ask_gqa(scene, wanted if wanted in kinds else kinds[int(rng.integers(len(kinds)))], rng)
                if q.question not in asked:
                    break
                wanted = kinds[int(rng.integers(len(kinds)))]
            if q.question in asked or len(questions) >= n:
                continue
            asked.add(q.question)
            qid = str(scene.image_id * 10 + k)
            questions[qid] = gqa_record(q, qid, image_id)
            remember(q.question + VQA_SUFFIX, q.answer, q.full_answer)
        scenes.append(scene)
        _write_image(out / "gqa" / "images" / f"{image_id}.jpg", render(scene))
    _write_json(out / "gqa" / "testdev_balanced_questions.json", questions)
    return scenes, questions


def _write_vizwiz(out: Path, seed: int, n: int, size: int, seen: set, remember: Callable,
                  grid: int = 0) -> tuple[list[Scene], list]:
    """VizWiz val: `Annotations/val.json` + `val/VizWiz_val_{n:08d}.jpg`, one question per image."""
    unanswerable = {int(i) for i in _rng(seed, 23, 0).permutation(n)[: round(UNANSWERABLE_SHARE * n)]}
    records, scenes = [], []
    fresh = _fresh(lambda i: sample_scene(_rng(seed, 24, i), VIZWIZ_ID0 + i, size, grid=grid), seen)
    while len(records) < n:
        scene = next(fresh)
        rng = _rng(seed, 25, scene.image_id)
        q = ask_vizwiz(scene, rng, len(records) in unanswerable)
        if q is None:
            continue
        answers = vizwiz_answers(q, rng)
        answer_type = {"unanswerable": "unanswerable", "text": "other"}.get(q.family) or QUESTION_FAMILIES[q.family][2]
        name = f"VizWiz_val_{scene.image_id - VIZWIZ_ID0:08d}.jpg"
        records.append({"image": name, "question": q.question, "answers": answers, "answer_type": answer_type,
                        "answerable": int(q.family != "unanswerable")})
        remember(q.question + VIZWIZ_SUFFIX, *(a["answer"] for a in answers))
        scenes.append(scene)
        _write_image(out / "vizwiz" / "val" / name, render(scene))
    _write_json(out / "vizwiz" / "Annotations" / "val.json", records)
    return scenes, records


def _write_textvqa(out: Path, seed: int, n: int, size: int, seen: set, remember: Callable) -> tuple[list[Scene], list]:
    """TextVQA val: `TextVQA_0.5.1_val.json`, LLaVA's `textvqa_val_v051_ocr.jsonl` (same order) and
    `train_images/{image_id}.jpg`."""
    data, lines, scenes = [], [], []
    fresh = _fresh(lambda i: sample_text_scene(_rng(seed, 26, i), TEXTVQA_ID0 + i, size), seen)
    while len(data) < n:
        scene = next(fresh)
        rng = _rng(seed, 27, scene.image_id)
        image_id, options = f"{scene.image_id:016x}", text_questions(scene)
        tokens = ocr_tokens(scene)
        for k in rng.permutation(len(options))[:TEXTVQA_PER_SCENE]:
            if len(data) >= n:
                break
            question, answer = options[int(k)]
            qid = scene.image_id * 10 + int(k)
            answers = text_answers(answer, rng)
            data.append({"question": question, "image_id": image_id, "image_classes": [], "flickr_original_url": "",
                         "flickr_300k_url": "", "image_width": size, "image_height": size, "answers": answers,
                         "question_tokens": question.lower().rstrip("?").split(), "question_id": qid,
                         "set_name": "val"})
            text = question + OCR_PREFIX + ", ".join(tokens)
            lines.append(json.dumps({"question_id": qid, "image": f"{image_id}.jpg", "text": text,
                                     "category": "default"}))
            remember(text + VQA_SUFFIX, *answers)
        scenes.append(scene)
        _write_image(out / "textvqa" / "train_images" / f"{image_id}.jpg", render(scene))
    _write_json(out / "textvqa" / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    write_bytes(out / "textvqa" / "textvqa_val_v051_ocr.jsonl", ("\n".join(lines) + "\n").encode())
    return scenes, data


def _write_pope(out: Path, seed: int, n: int, size: int, seen: set, remember: Callable,
                grid: int = 0) -> tuple[list[Scene], dict]:
    """POPE: `coco_pope_{adversarial,popular,random}.json` (JSON lines) over the same images
    `val2014/COCO_val2014_{id:012d}.jpg`, n//2 yes/no pairs per split. As in POPE, the "yes" probes are
    shared by the splits; the "no" probes are drawn uniformly (random), from the most frequent absent
    objects (popular), or from absent objects sharing a color or shape with a present one, ranked by
    co-occurrence with the present objects (adversarial)."""
    n_pairs, scenes, positives = n // 2, [], []
    fresh = _fresh(lambda i: sample_scene(_rng(seed, 28, i), POPE_ID0 + i, size, grid=grid), seen)
    while sum(len(p) for p in positives) < n_pairs:
        scene = next(fresh)
        rng = _rng(seed, 29, scene.image_id)
        present = sorted({(o.color, o.shape) for o in scene.shapes})
        k = min(POPE_PAIRS_PER_SCENE, len(present), n_pairs - sum(len(p) for p in positives))
        positives.append([present[int(i)] for i in rng.choice(len(present), size=k, replace=False)])
        scenes.append(scene)
        _write_image(out / "pope" / "val2014" / f"COCO_val2014_{scene.image_id:012d}.jpg", render(scene))
    every = [(c, k) for c in COLORS for k in SHAPES]
    frequency, cooccur = Counter(), Counter()
    for scene in scenes:
        present = sorted({(o.color, o.shape) for o in scene.shapes})
        frequency.update(present)
        cooccur.update((a, b) for a in present for b in present if a != b)
    splits = {}
    for stream, split in enumerate(("adversarial", "popular", "random")):
        lines = []
        for scene, chosen in zip(scenes, positives):
            present = {(o.color, o.shape) for o in scene.shapes}
            absent = [c for c in every if c not in present]
            popular = sorted(absent, key=lambda c: (-frequency[c], c))
            if split == "random":
                rng = _rng(seed, 30 + stream, scene.image_id)
                negatives = [absent[int(i)] for i in rng.choice(len(absent), size=len(chosen), replace=False)]
            elif split == "popular":
                negatives = popular[: len(chosen)]
            else:
                near = [c for c in absent if any(c[0] == p[0] or c[1] == p[1] for p in present)]
                near.sort(key=lambda c: (-sum(cooccur[c, p] for p in present), c))
                negatives = (near + [c for c in popular if c not in near])[: len(chosen)]
            for yes, no in zip(chosen, negatives):
                for (color, kind), label in ((yes, "yes"), (no, "no")):
                    text = POPE_TEMPLATE.format(object=f"{color} {kind}")
                    lines.append(json.dumps({"question_id": len(lines) + 1,
                                             "image": f"COCO_val2014_{scene.image_id:012d}.jpg",
                                             "text": text, "label": label}))
                    remember(text + VQA_SUFFIX)
        write_bytes(out / "pope" / f"coco_pope_{split}.json", ("\n".join(lines) + "\n").encode())
        splits[split] = [json.loads(line) for line in lines]
    return scenes, splits


def _write_tallyqa(out: Path, seed: int, n: int, size: int, seen: set, remember: Callable) -> tuple[list[Scene], list]:
    """TallyQA test: `test.json` + images at its relative paths (`VG_100K[_2]/{id}.jpg`); simple and
    complex questions alternate where the scene allows a complex one."""
    records, scenes = [], []
    fresh = _fresh(lambda i: _tally_scene(_rng(seed, 33, i), TALLY_ID0 + i, size), seen)
    while len(records) < n:
        scene = next(fresh)
        rng = _rng(seed, 34, scene.image_id)
        image = f"{'VG_100K_2' if scene.image_id % 2 else 'VG_100K'}/{scene.image_id}.jpg"
        asked = set()
        for k in range(TALLY_PER_SCENE):
            n_simple = sum(r["issimple"] for r in records)
            for _retry in range(10):
                q = ask_tally(scene, rng, simple=2 * n_simple < len(records)) or ask_tally(scene, rng, simple=True)
                if q.question not in asked:
                    break
            if q.question in asked or len(records) >= n:
                continue
            asked.add(q.question)
            simple = q.family == "tally-simple"
            records.append({"image": image, "answer": int(q.answer),
                            "data_source": "imported_genome" if simple else "amt", "question": q.question,
                            "image_id": scene.image_id, "question_id": scene.image_id * 10 + k, "issimple": simple})
            remember(q.question + TALLY_SUFFIX, tally_letter(int(q.answer)))
        scenes.append(scene)
        _write_image(out / "tallyqa" / image, render(scene))
    _write_json(out / "tallyqa" / "test.json", records)
    return scenes, records


def _write_ocid(out: Path, seed: int, n: int, seen: set, remember: Callable) -> tuple[list[Scene], dict]:
    """OCID-Ref val: `val_expressions.json` + 640x480 PNGs at `OCID-dataset/{scene_path}`. Candidate
    scenes cycle through the clutter splits; the take_id sets how many objects stand on the table."""
    width, height = OCID_WH
    takes: dict[int, int] = {}

    def make(i: int) -> Scene:
        rng = _rng(seed, 35, i)
        lo, hi = list(OCID_CLUTTER.values())[i % len(OCID_CLUTTER)]
        takes[OCID_ID0 + i] = take = int(rng.integers(lo, hi + 1))
        return sample_scene(rng, OCID_ID0 + i, width, n_shapes=ocid_objects(take), size_range=OCID_SIZE_RANGE,
                            height=height)

    expressions, scenes = {}, []
    fresh = _fresh(make, seen)
    while len(expressions) < n:
        scene = next(fresh)
        found = referring_expressions(scene)
        if not found:
            continue
        rng = _rng(seed, 36, scene.image_id)
        index, take = scene.image_id - OCID_ID0, takes[scene.image_id]
        sub_dataset, category = OCID_SUBSETS[int(rng.integers(len(OCID_SUBSETS)))]
        place, view = ("table", "floor")[int(rng.integers(2))], ("top", "bottom")[int(rng.integers(2))]
        sequence = "/".join(p for p in (sub_dataset, place, view, category, f"seq{int(rng.integers(1, 21)):02d}") if p)
        seconds = 10 * 3600 + 37 * index  # a unique capture time per scene, as OCID file names
        day, hms = 20 + seconds // 86400, seconds % 86400
        stamp = f"2018-08-{day:02d}-{hms // 3600:02d}-{hms // 60 % 60:02d}-{hms % 60:02d}"
        scene_path = f"{sequence}/rgb/result_{stamp}.png"
        referred = [list(found)[int(j)] for j in rng.permutation(len(found))][:OCID_PER_SCENE]
        for j in referred:
            if len(expressions) >= n:
                break
            o, sentence = scene.shapes[j], found[j][int(rng.integers(len(found[j])))]
            ex_id = len(expressions)
            expressions[str(ex_id)] = {
                "take_id": take, "scene_path": scene_path, "sub_dataset": sub_dataset, "class": o.shape,
                "sentence": sentence, "bbox": json.dumps(list(o.xyxy)), "scene_id": index, "anno_id": ex_id,
                "instance_id": j, "sequence_path": sequence}
            remember(GROUNDING_PROMPT.format(sentence=sentence), ocid_box_string(o))
        scenes.append(scene)
        _write_image(out / "ocid-ref" / "OCID-dataset" / scene_path, render(scene))
    _write_json(out / "ocid-ref" / "val_expressions.json", expressions)
    return scenes, expressions


def ocid_box_string(o: Shape) -> str:
    """`[x1, y1, x2, y2]` divided by (640, 480), 2 decimals: vlm-evaluation's OCID-Ref ground truth."""
    return "[" + ", ".join(f"{v / d:.2f}" for v, d in zip(o.xyxy, OCID_WH * 2)) + "]"


def _benchmark_baselines(style_answers: dict[str, Counter], gqa: dict, vizwiz: list, textvqa: list, pope: dict,
                         tally: list, ocid: dict, center: tuple[float, ...]) -> dict:
    """Trivial baselines for the other benchmarks, each scored as its vlm-evaluation scorer does, in percent."""

    def majority(style: str, fallback: list) -> str:  # the eval answers stand in for a world too small to train
        counts = style_answers[style] or Counter(fallback)
        return counts.most_common(1)[0][0]

    def pct(hits: list) -> float:
        return round(100 * sum(hits) / max(1, len(hits)), 2)

    gqa_answer = majority("gqa", [q["answer"] for q in gqa.values()])
    vizwiz_answer = majority("vizwiz", [r["answers"][0]["answer"] for r in vizwiz])
    textvqa_answer = majority("textvqa", [d["answers"][0] for d in textvqa])
    tally_answer = int(majority("tally", [str(r["answer"]) for r in tally]))
    tally_hits = {split: [r["answer"] == tally_answer for r in tally if r["issimple"] == (split == "simple")]
                  for split in ("simple", "complex")}
    ious: dict[str, list[bool]] = {name: [] for name in OCID_CLUTTER}
    for e in ocid.values():
        x1, y1, x2, y2 = json.loads(e["bbox"])
        gt = tuple(round(v / d, 2) for v, d in zip((x1, y1, x2, y2), OCID_WH * 2))  # as vlm-evaluation's GT
        ious[ocid_clutter(e["take_id"])].append(_iou(center, gt) >= 0.25)
    pope_split = {split: pct([row["label"] == "yes" for row in rows]) for split, rows in pope.items()}
    return {
        "gqa_majority": gqa_answer,
        "gqa_majority_accuracy": pct([q["answer"] == gqa_answer for q in gqa.values() if q["isBalanced"]]),
        "vizwiz_majority": vizwiz_answer,
        "vizwiz_majority_accuracy": round(100 * sum(soft_accuracy(vizwiz_answer, [a["answer"] for a in r["answers"]])
                                                    for r in vizwiz) / max(1, len(vizwiz)), 2),
        "textvqa_majority": textvqa_answer,
        "textvqa_majority_accuracy": round(100 * sum(soft_accuracy(textvqa_answer, d["answers"]) for d in textvqa)
                                           / max(1, len(textvqa)), 2),
        "pope_always_yes_accuracy": round(sum(pope_split.values()) / max(1, len(pope_split)), 2),
        "pope_always_yes_accuracy_per_split": pope_split,
        "tallyqa_majority": tally_answer,
        "tallyqa_majority_accuracy": {**{split: pct(hits) for split, hits in tally_hits.items()},
                                      "final": pct(tally_hits["simple"] + tally_hits["complex"])},
        "ocidref_center_box": list(center),
        "ocidref_center_box_accuracy": {**{name: pct(hits) for name, hits in ious.items()},
                                        "All": pct(sum(ious.values(), []))},
        "benchmark_baselines_note": "majority = most frequent answer of the matching training turns (GQA exact "
                                    "match; VizWiz / TextVQA leave-one-out soft accuracy over the 10 answers); "
                                    "POPE answers Yes to all (final = mean of the 3 splits); TallyQA: most "
                                    "frequent training count (final = micro average); OCID-Ref: the central "
                                    "box, Acc@IoU>=0.25 against the (640, 480)-normalized 2-decimal GT; percent",
    }


def generate(
    out: Path,
    seed: int = 0,
    n_train: int = 3000,
    n_eval: int = 300,
    n_classify: int = 2000,
    image_size: int = 64,
    log: Callable[[str], None] = print,
    mix: str = "all",
    grid: int = 0,
) -> dict:
    """Write the mini world under `out` and return its manifest (also written as `world.json`).

    Deterministic: the same arguments give byte-identical JSON files and identical images.
    `n_eval` is the number of VQA-v2 scenes (2 questions each), of RefCOCO sentences, and of the
    questions (expressions) of GQA, VizWiz, TextVQA, TallyQA and OCID-Ref and of each POPE split.
    `grid` > 0 snaps the boxes of the plain scenes (training, classification, VQA-v2, RefCOCO, GQA,
    VizWiz, POPE) to a `grid` x `grid` layout (`sample_scene`); 0 places them freely.
    """
    if mix not in TRAINING_MIXES:
        raise ValueError(f"unknown training mix {mix!r}; allowed: {', '.join(TRAINING_MIXES)}")
    start = time.perf_counter()
    out = Path(out)
    size = image_size
    corpus: dict[str, None] = {}  # insertion-ordered set

    def remember(*texts: str) -> None:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    corpus.setdefault(line.strip())

    remember(SYSTEM_PROMPT, *EVAL_PROMPT_LINES, "Yes", "No", UNANSWERABLE)

    # The training slots: each is a plain scene, a text scene (TextVQA skills) or a counting scene
    # (TallyQA skills). The plain layouts of all slots are drawn first, as they always were, so that
    # the VQA-v2 and RefCOCO eval sets (held out of them) do not depend on the slot kinds.
    train_scenes = [sample_scene(_rng(seed, 1, i), TRAIN_ID0 + i, size, grid=grid) for i in range(n_train)]
    draws = _rng(seed, 11, 0).random(n_train)
    shares = SLOT_SHARE if mix == "all" else {"text": 0.0, "tally": 0.0}
    slot_kinds = ["text" if u < shares["text"] else "tally" if u < shares["text"] + shares["tally"]
                  else "plain" for u in draws]

    # -- 1. classification set (generated before the eval sets so eval can be held out of it too)
    order = _rng(seed, 5, 0).permutation(np.arange(n_classify) % len(CLASSES))
    classify_scenes, lines = [], {"train": [], "val": []}
    n_val = round(CLASSIFY_VAL_SHARE * n_classify)
    for i in range(n_classify):
        rng = _rng(seed, 6, i)
        label = int(order[i])
        for _attempt in range(20):
            scene = sample_scene(rng, i, size, n_shapes=1 if rng.random() < 0.5 else int(rng.integers(2, 4)), grid=grid)
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
        # every shape as a labelled instance: the detection (box) and segmentation (polygon) targets
        objects = [{"label": CLASSES.index(f"{o.color}_{o.shape}"), "bbox": list(o.xyxy), "polygon": polygon(o)}
                   for o in scene.shapes]
        lines["val" if i >= n_classify - n_val else "train"].append(
            json.dumps({"image": name, "label": label, "label_name": CLASSES[label], "size": size,
                        "objects": objects}))
    for split, split_lines in lines.items():
        write_bytes(out / "classify" / f"{split}.jsonl", ("\n".join(split_lines) + "\n").encode())
    _write_json(out / "classify" / "classes.json", CLASSES)
    log(f"classify: {len(lines['train'])} train / {len(lines['val'])} val images, {len(CLASSES)} classes")

    seen = {s.key() for s in train_scenes} | {s.key() for s in classify_scenes}

    # -- 2. VQA-v2 val (official format)
    vqa_scenes = _held_out_scenes(seed, 7, VQA_ID0, n_eval, size, seen, grid)
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
        scene = sample_scene(_rng(seed, 9, i), REFCOCO_ID0 + i, size, grid=grid)
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
    scene_objects = {sc.image_id * 10 + j: o for sc in ref_scenes for j, o in enumerate(sc.shapes)}
    categories = [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES]
    _write_json(out / "refcoco" / "refcoco" / "instances.json", {
        "info": info, "images": images, "licenses": [dict(license, id=1)], "annotations": anns,
        "categories": categories})
    write_bytes(out / "refcoco" / "refcoco" / "refs(unc).p", pickle.dumps(refs, protocol=2))
    # RefCOCO+ (unc) and RefCOCOg (umd) share the images and objects, each with its own folder, as
    # in REFER. RefCOCO+ keeps the appearance-only wording; RefCOCOg's expressions are longer.
    for dataset, split_by, wording in (("refcoco+", "unc", "{}"), ("refcocog", "umd", "{} in the picture")):
        variant = []
        for ref in refs:
            sentences = []
            for sent in ref["sentences"]:
                raw = wording.format(sent["raw"])
                sentences.append({**sent, "raw": raw, "sent": raw.lower(), "tokens": raw.lower().split()})
                o = scene_objects[ref["ann_id"]]
                remember(GROUNDING_PROMPT.format(sentence=raw.lower()), box_string(o, size))
            variant.append({**ref, "sentences": sentences})
        _write_json(out / "refcoco" / dataset / "instances.json", {
            "info": info, "images": images, "licenses": [dict(license, id=1)], "annotations": anns,
            "categories": categories})
        write_bytes(out / "refcoco" / dataset / f"refs({split_by}).p", pickle.dumps(variant, protocol=2))
    log(f"refcoco: {len(refs)} refs, {sent_id} sentences over {len(images)} images ({len(anns)} objects)")


    # -- 4. the other benchmarks, each held out of the training layouts and of every other eval set
    seen |= {s.key() for s in ref_scenes}
    gqa_scenes, gqa_questions = _write_gqa(out, seed, n_eval, size, seen, remember, grid)
    log(f"gqa: {len(gqa_questions)} questions over {len(gqa_scenes)} images "
        f"{dict(sorted(Counter(q['types']['structural'] for q in gqa_questions.values()).items()))}")
    vizwiz_scenes, vizwiz = _write_vizwiz(out, seed, n_eval, size, seen, remember, grid)
    log(f"vizwiz: {len(vizwiz)} questions, {sum(1 - r['answerable'] for r in vizwiz)} unanswerable")
    textvqa_scenes, textvqa = _write_textvqa(out, seed, n_eval, size, seen, remember)
    log(f"textvqa: {len(textvqa)} questions over {len(textvqa_scenes)} images "
        f"({sum(len(s.words) for s in textvqa_scenes)} words)")
    pope_scenes, pope = _write_pope(out, seed, n_eval, size, seen, remember, grid)
    log(f"pope: {' / '.join(f'{k} {len(v)}' for k, v in pope.items())} questions over {len(pope_scenes)} images")
    tally_scenes, tally = _write_tallyqa(out, seed, n_eval, size, seen, remember)
    log(f"tallyqa: {len(tally)} questions ({sum(r['issimple'] for r in tally)} simple) over "
        f"{len(tally_scenes)} images, answers {dict(sorted(Counter(r['answer'] for r in tally).items()))}")
    ocid_scenes, ocid = _write_ocid(out, seed, n_eval, seen, remember)
    log(f"ocid-ref: {len(ocid)} expressions over {len(ocid_scenes)} scenes "
        f"{dict(Counter(ocid_clutter(e['take_id']) for e in ocid.values()))}")
    eval_keys = {s.key() for scenes in (vqa_scenes, ref_scenes, gqa_scenes, vizwiz_scenes, textvqa_scenes,
                                        pope_scenes, tally_scenes, ocid_scenes) for s in scenes}

    # -- 5. instruction set (LLaVA-665K format); text / counting slots get fresh layouts held out of
    # every eval set, the plain slots keep theirs (the eval sets were held out of them)
    for i, kind in enumerate(slot_kinds):
        if kind != "plain":
            rng = _rng(seed, 12 if kind == "text" else 13, i)
            sample = sample_text_scene if kind == "text" else _tally_scene
            while (scene := sample(rng, TRAIN_ID0 + i, size)).key() in eval_keys:
                pass
            train_scenes[i] = scene
    records, answer_counts = [], {t: Counter() for t in ("yes/no", "number", "other")}
    style_answers = {style: Counter() for style in ("gqa", "vizwiz", "textvqa", "tally")}
    n_turns = Counter()
    for scene, kind in zip(train_scenes, slot_kinds):
        rng = _rng(seed, 2, scene.image_id)
        expressions = referring_expressions(scene)
        turns, asked, tally_done = [], set(), False
        for _ in range(int(rng.integers(2, 5))):
            for _retry in range(10):
                human, gpt, label, answer = _instruction_turn(scene, kind, rng, expressions, tally_done, mix)
                if human not in asked:
                    break
            if human in asked or (len(turns) >= 2 and sum(map(len, sum(turns, ()))) + len(human) + len(gpt)
                                  > RECORD_CHARS):
                continue
            asked.add(human)
            tally_done |= label == "tally"
            n_turns[label] += 1
            if label in VQA_FAMILIES:
                answer_counts[QUESTION_FAMILIES[label][2]][gpt] += 1
            if label in style_answers:
                style_answers[label][answer] += 1
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
    log(f"llava: {len(records)} records ({n_train} with images: {dict(sorted(Counter(slot_kinds).items()))}, "
        f"{n_language} language-only), {sum(n_turns.values())} turns {dict(sorted(n_turns.items()))}, "
        f"grounding {n_turns['grounding'] / max(1, sum(n_turns.values())):.1%}")

    # -- 6. ground truth, corpus, baselines, manifest
    _write_json(out / "scenes.json", {
        name: [scene_record(s) for s in scenes] for name, scenes in
        (("llava", train_scenes), ("vqa-v2", vqa_scenes), ("refcoco", ref_scenes), ("classify", classify_scenes),
         ("gqa", gqa_scenes), ("vizwiz", vizwiz_scenes), ("textvqa", textvqa_scenes), ("pope", pope_scenes),
         ("tallyqa", tally_scenes), ("ocid-ref", ocid_scenes))
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
        **_benchmark_baselines(style_answers, gqa_questions, vizwiz, textvqa, pope, tally, ocid, center),
    }
    log(f"baselines: VQA majority {baselines['vqa_majority_per_answer_type_accuracy']}% per answer type, "
        f"{baselines['vqa_majority_overall_accuracy']}% overall; "
        f"RefCOCO central box {baselines['refcoco_center_box_accuracy']}%; "
        f"GQA {baselines['gqa_majority_accuracy']}%, VizWiz {baselines['vizwiz_majority_accuracy']}%, "
        f"TextVQA {baselines['textvqa_majority_accuracy']}%, POPE always-Yes {baselines['pope_always_yes_accuracy']}%, "
        f"TallyQA {baselines['tallyqa_majority_accuracy']['final']}%, "
        f"OCID-Ref central box {baselines['ocidref_center_box_accuracy']['All']}%")

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
        "gqa_questions": "gqa/testdev_balanced_questions.json",
        "gqa_images": "gqa/images",
        "vizwiz_annotations": "vizwiz/Annotations/val.json",
        "vizwiz_images": "vizwiz/val",
        "textvqa_annotations": "textvqa/TextVQA_0.5.1_val.json",
        "textvqa_questions": "textvqa/textvqa_val_v051_ocr.jsonl",
        "textvqa_images": "textvqa/train_images",
        **{f"pope_{split}": f"pope/coco_pope_{split}.json" for split in pope},
        "pope_images": "pope/val2014",
        "tallyqa_test": "tallyqa/test.json",
        "tallyqa_images": "tallyqa",
        "ocidref_expressions": "ocid-ref/val_expressions.json",
        "ocidref_images": "ocid-ref/OCID-dataset",
        "scenes": "scenes.json",
        "text_corpus": "text_corpus.txt",
    }
    world = {
        "seed": seed,
        "image_size": size,
        "mix": mix,
        "counts": {
            "train_scenes": n_train, "llava_records": len(records), "llava_language_only": n_language,
            "llava_turns": dict(sorted(n_turns.items())), "vqa_images": len(vqa_scenes),
            "vqa_questions": len(questions), "refcoco_images": len(images), "refcoco_refs": len(refs),
            "refcoco_sentences": sent_id, "classify_train": len(lines["train"]), "classify_val": len(lines["val"]),
            "text_corpus_lines": len(corpus),
            "llava_slots": dict(sorted(Counter(slot_kinds).items())),
            "gqa_questions": len(gqa_questions), "gqa_images": len(gqa_scenes),
            "vizwiz_questions": len(vizwiz), "vizwiz_unanswerable": sum(1 - r["answerable"] for r in vizwiz),
            "textvqa_questions": len(textvqa), "textvqa_images": len(textvqa_scenes),
            **{f"pope_{split}": len(rows) for split, rows in pope.items()}, "pope_images": len(pope_scenes),
            "tallyqa_questions": len(tally), "tallyqa_simple": sum(r["issimple"] for r in tally),
            "tallyqa_images": len(tally_scenes),
            "ocidref_expressions": len(ocid), "ocidref_scenes": len(ocid_scenes),
            "ocidref_clutter": {name: sum(ocid_clutter(e["take_id"]) == name for e in ocid.values())
                                for name in OCID_CLUTTER},
        },
        "classes": CLASSES,
        "shapes": list(SHAPES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "question_families": {
            name: {"templates": templates, "question_type": qtype, "answer_type": atype}
            for name, (templates, qtype, atype) in QUESTION_FAMILIES.items()
        },
        "prompts": {"system": SYSTEM_PROMPT, "vqa_suffix": VQA_SUFFIX, "grounding": GROUNDING_PROMPT},
        "benchmark_prompts": {"vizwiz_suffix": VIZWIZ_SUFFIX, "tallyqa_suffix": TALLY_SUFFIX,
                              "textvqa_ocr_prefix": OCR_PREFIX, "pope": POPE_TEMPLATE},
        "text_words": list(TEXT_WORDS),
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
