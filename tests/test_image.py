"""Letterbox: Prismatic's pad-to-square with the mean colour, then resize; non-square targets."""

import pytest
import torch
from PIL import Image

from vlmswap.image import Geometry, fill_color, letterbox, preprocess


def test_geometry_parses_square_and_non_square():
    assert Geometry.parse("224") == Geometry(224, 224)
    assert Geometry.parse(224) == Geometry(224, 224)
    assert Geometry.parse("1333x800") == Geometry(1333, 800)
    assert str(Geometry(1333, 800)) == "1333x800" and str(Geometry(96, 96)) == "96"
    with pytest.raises(ValueError):
        Geometry.parse("0x10")


def test_fill_is_truncated_mean_times_255():
    # Prismatic: tuple(int(255 * c) for c in mean); CLIP's mean gives (122, 116, 104)
    assert fill_color((0.48145466, 0.4578275, 0.40821073)) == (122, 116, 104)
    assert fill_color((0.5, 0.5, 0.5)) == (127, 127, 127)


def test_wide_image_is_padded_top_and_bottom_with_the_fill():
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    out = letterbox(image, Geometry(100, 100), (10, 20, 30))
    assert out.size == (100, 100)
    assert out.getpixel((50, 5)) == (10, 20, 30)      # padding band (25 px each side)
    assert out.getpixel((50, 94)) == (10, 20, 30)
    assert out.getpixel((50, 50)) == (255, 0, 0)      # content keeps its aspect ratio
    assert out.getpixel((2, 50)) == (255, 0, 0)       # no horizontal padding


def test_odd_padding_is_cropped_back_to_square():
    image = Image.new("RGB", (101, 50), (0, 255, 0))  # (101-50)/2 = 25.5 -> 25 px, 1 px short
    out = letterbox(image, Geometry(64, 64), (0, 0, 0))
    assert out.size == (64, 64)


def test_non_square_target_pads_to_its_aspect_ratio():
    image = Image.new("RGB", (100, 100), (0, 0, 255))
    out = letterbox(image, Geometry(200, 100), (1, 2, 3))
    assert out.size == (200, 100)
    assert out.getpixel((10, 50)) == (1, 2, 3)       # side bands
    assert out.getpixel((100, 50)) == (0, 0, 255)


def test_preprocess_normalizes_with_the_backbone_statistics():
    image = Image.new("RGB", (8, 8), (255, 255, 255))
    pixels = preprocess(image, Geometry(8, 8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert pixels.shape == (3, 8, 8)
    assert torch.allclose(pixels, torch.ones_like(pixels))
