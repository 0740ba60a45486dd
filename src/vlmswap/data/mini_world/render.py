"""Rendering: a scene's pixels, its shapes as COCO polygons and boxes, and the classification
set's segmentation masks (painted exactly where the renderer paints)."""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmswap.data.mini_world.scene import CLASSES, COLORS, OCID_WH, Scene, Shape

INKS = {"white": (250, 250, 250), "black": (20, 20, 20)}
NOISE_BLOCK = 4  # OCID scenes: noise in 4x4 blocks keeps a 640x480 PNG near 30 KB


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


def ocid_box_string(o: Shape) -> str:
    """`[x1, y1, x2, y2]` divided by (640, 480), 2 decimals: vlm-evaluation's OCID-Ref ground truth."""
    return "[" + ", ".join(f"{v / d:.2f}" for v, d in zip(o.xyxy, OCID_WH * 2)) + "]"
