"""Text scenes (TextVQA skills): words of `TEXT_WORDS` written in PIL's built-in bitmap font on a
square / circle or on the background, what an ideal OCR reads, and what can be asked about them."""

from __future__ import annotations

import numpy as np

from vlmswap.data.mini_world.render import glyphs, text_scale
from vlmswap.data.mini_world.scene import Scene, Shape, Word, sample_scene, unique_pairs, written_on

TEXT_WORDS = ("stop", "open", "exit", "sale", "taxi", "cafe", "park", "menu", "bus", "cat", "dog", "sun")
TEXT_SIZE_RANGE = (0.4, 0.6)  # text scenes: shapes big enough to carry a word


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


def text_questions(scene: Scene) -> list[tuple[str, str]]:
    """TextVQA-style (question, answer) pairs whose answer is a word written in the scene."""
    options = []
    if len(scene.words) == 1:
        options.append(("What word is written in the image?", scene.words[0].text))
    for j in unique_pairs(scene):
        if (word := written_on(scene, j)) is not None:
            o = scene.shapes[j]
            options.append((f"What word is written on the {o.color} {o.shape}?", word))
    background = [w for w in scene.words if w.on == -1]
    if len(background) == 1:
        options.append(("What word is written on the background?", background[0].text))
    return options
