"""Scenes: the ground truth of one image (its shapes, its words) and how scenes are sampled.

A scene is a light, slightly noisy background with non-overlapping shapes (circle / square /
triangle in red / green / blue / yellow). Every item is drawn from its own generator
(`stream_rng`), so any scene can be regenerated on its own, and eval scenes are held out of the
layouts already used (`held_out_scenes`, `fresh_scenes`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

from vlmswap.evaluate.ocidref import IMAGE_SIZE as OCID_WH  # every OCID image is 640 x 480

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
CLASSES = [f"{color}_{shape}" for shape in SHAPES for color in COLORS]  # label = shape * 4 + color

SIZE_RANGE = (0.25, 0.45)  # shape side as a fraction of the image side
TALLY_SIZE_RANGE = (0.16, 0.3)  # counting scenes: up to 5 smaller shapes
TALLY_MAX_SHAPES = 5
RELATION_MARGIN = 0.05  # "left of" needs the centres this far apart (fraction of the width)
OCID_SIZE_RANGE = (0.16, 0.3)
# OCID take_id ranges of the clutter splits, as vlm-evaluation's ocidref.py: 0-9 / 10-16 / 17-20.
OCID_CLUTTER = {"Minimum": (0, 9), "Medium": (10, 16), "Maximum": (17, 20)}

# Disjoint id ranges make held-out sets obvious at a glance.
TRAIN_ID0, VQA_ID0, REFCOCO_ID0 = 1_000_000, 2_000_000, 3_000_000
GQA_ID0, VIZWIZ_ID0, TEXTVQA_ID0, POPE_ID0, TALLY_ID0, OCID_ID0 = (
    4_000_000, 5_000_000, 6_000_000, 7_000_000, 8_000_000, 9_000_000)


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


# ---------------------------------------------------------------- sampling


def stream_rng(seed: int, stream: int, index: int) -> np.random.Generator:
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
    positions = _place(rng, size, sides, step if grid else max(4, round(size_range[0] * short)), height, step)
    colors = list(COLORS)
    shapes = tuple(
        Shape(SHAPES[int(rng.integers(3))], colors[int(rng.integers(4))], x, y, s) for x, y, s in positions
    )
    return Scene(image_id, size, int(rng.integers(200, 240)), int(rng.integers(2**31)), shapes, height=height)


def sample_tally_scene(rng: np.random.Generator, image_id: int, size: int) -> Scene:
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


def held_out_scenes(seed: int, stream: int, id0: int, n: int, size: int, seen: set, grid: int = 0) -> list[Scene]:
    """The first n plain scenes of `stream` whose layouts are not in `seen` (`seen` is left as it is:
    the VQA-v2 set may repeat a layout of its own, as it always could)."""
    scenes, i = [], 0
    while len(scenes) < n:
        scene = sample_scene(stream_rng(seed, stream, i), id0 + i, size, grid=grid)
        i += 1
        if scene.key() not in seen:
            scenes.append(scene)
    return scenes


def fresh_scenes(make: Callable[[int], Scene], seen: set) -> Iterator[Scene]:
    """make(0), make(1), ... skipping layouts in `seen`; each scene handed out joins `seen`, so the
    benchmarks stay disjoint from the training scenes and from each other."""
    for i in itertools.count():
        scene = make(i)
        if scene.key() not in seen:
            seen.add(scene.key())
            yield scene


# ---------------------------------------------------------------- what names an object unambiguously


def unique_pairs(scene: Scene) -> list[int]:
    """Objects that "the {color} {shape}" names unambiguously."""
    counts = Counter((o.shape, o.color) for o in scene.shapes)
    return [j for j, o in enumerate(scene.shapes) if counts[o.shape, o.color] == 1]


def unique_shapes(scene: Scene) -> list[int]:
    """Objects that "the {shape}" names unambiguously."""
    counts = Counter(o.shape for o in scene.shapes)
    return [j for j, o in enumerate(scene.shapes) if counts[o.shape] == 1]


def unique_colors(scene: Scene) -> list[int]:
    """Objects that "the {color} object" names unambiguously."""
    counts = Counter(o.color for o in scene.shapes)
    return [j for j, o in enumerate(scene.shapes) if counts[o.color] == 1]


def written_on(scene: Scene, j: int) -> str | None:
    """The word written on object j, if any."""
    return next((w.text for w in scene.words if w.on == j), None)


def horizontal_side(o: Shape, ref: Shape, width: int) -> str | None:
    """"left" / "right" when o's centre is clearly (RELATION_MARGIN) left / right of ref's, else None."""
    margin = RELATION_MARGIN * width
    if o.cx <= ref.cx - margin:
        return "left"
    if o.cx >= ref.cx + margin:
        return "right"
    return None


def clear_reference(scene: Scene, j: int) -> bool:
    """Every other object is clearly left or right of object j, so "left of j" is well defined."""
    ref = scene.shapes[j]
    return all(horizontal_side(o, ref, scene.size) for k, o in enumerate(scene.shapes) if k != j)
