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


# ------------------------------------------------------------------ decoding every mode (to_rgb)

FILL = (10, 20, 30)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    import numpy as np

    from vlmswap.image import to_rgb

    ramp = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I")
        rgb = to_rgb(image, FILL)
        plain = image.convert("RGB")
    assert [rgb.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (64, 64, 64), (128, 128, 128), (255, 255, 255)]
    assert plain.getpixel((1, 0)) == (255, 255, 255)  # what PIL's convert makes of it: clipped to white


def test_wide_grayscale_without_a_declared_range():
    import numpy as np

    from vlmswap.image import to_rgb

    eight_bit = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert to_rgb(eight_bit, FILL).getpixel((1, 0)) == (100, 100, 100)
    floats = Image.fromarray(np.array([[0.0, 1000.0, 2000.0]], dtype=np.float32), "F")
    assert to_rgb(floats, FILL).getpixel((2, 0)) == (8, 8, 8)  # 16-bit range: 2000 / 65535 * 255


def test_cmyk_palette_and_gray_convert_to_their_colours():
    from vlmswap.image import to_rgb

    assert to_rgb(Image.new("CMYK", (2, 2), (255, 0, 0, 0)), FILL).getpixel((0, 0)) == (0, 255, 255)  # cyan
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert to_rgb(palette, FILL).getpixel((0, 0)) == (200, 100, 50)
    assert to_rgb(Image.new("L", (2, 2), 77), FILL).getpixel((1, 1)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (2, 2), 1), FILL).getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode,transparent,opaque", [
    ("RGBA", (255, 0, 0, 0), (0, 255, 0, 255)),
    ("LA", (255, 0), (90, 255)),
])
def test_transparent_pixels_show_the_letterbox_fill(mode, transparent, opaque):
    from vlmswap.image import to_rgb

    image = Image.new(mode, (2, 1), transparent)
    image.putpixel((1, 0), opaque)
    rgb = to_rgb(image, FILL)
    assert rgb.getpixel((0, 0)) == FILL
    assert rgb.getpixel((1, 0)) == ((0, 255, 0) if mode == "RGBA" else (90, 90, 90))
    assert image.convert("RGB").getpixel((0, 0)) != FILL  # PIL drops alpha: the hidden colour shows


def test_half_transparency_blends_with_the_fill_and_palette_transparency_counts():
    from vlmswap.image import to_rgb

    half = Image.new("RGBA", (1, 1), (210, 220, 230, 128))
    assert to_rgb(half, FILL).getpixel((0, 0)) == tuple(round((c * 128 + f * 127) / 255) for c, f in
                                                         zip((210, 220, 230), FILL))
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # palette entry 0 is transparent (a GIF / PNG tRNS chunk)
    rgb = to_rgb(palette, FILL)
    assert rgb.getpixel((0, 0)) == FILL and rgb.getpixel((1, 0)) == (0, 0, 255)


def test_letterbox_fills_transparency_with_the_backbones_own_fill():
    image = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    out = letterbox(image, Geometry(4, 4), (1, 2, 3))
    assert out.getpixel((2, 2)) == (1, 2, 3)


def test_exif_orientation_is_not_applied_as_in_the_reference_harness(tmp_path):
    # vlm-evaluation opens images with Image.open(...).convert("RGB") and never calls exif_transpose
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    image.paste((0, 0, 255), (4, 0, 8, 4))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.png", exif=exif)
    with Image.open(tmp_path / "phone.png") as opened:
        assert opened.getexif()[0x0112] == 6
        out = letterbox(opened, Geometry(8, 4), FILL)
    # as stored: no padding band (a rotated 4x8 picture would be padded left and right), red | blue
    assert out.getpixel((0, 2)) == (255, 0, 0) and out.getpixel((7, 2)) == (0, 0, 255)


def test_check_image_names_what_is_wrong(tmp_path):
    from vlmswap.image import check_image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    assert check_image(good) is None
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    assert "does not decode" in check_image(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    assert "does not decode" in check_image(tmp_path / "text.jpg")
    assert check_image(tmp_path / "none.jpg") == "image file not found"
