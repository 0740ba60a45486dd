"""Image geometry: letterbox into the cell's input size, then normalize.

Square targets follow Prismatic exactly (`prismatic/models/backbones/vision/base_vision.py`,
`LetterboxPad`, then timm's eval transform with Resize(size) + CenterCrop(size)): pad the shorter
side by `int((m - side) / 2)` on both ends with `int(255 * mean)` per channel, resize the shorter
side to `size` (bicubic), centre-crop. Non-square targets (e.g. 1333x800 for detection backbones)
generalise the same idea: pad to the target aspect ratio, then resize to exactly (W, H).

Decoding follows the reference harness (vlm-evaluation `tasks/harnesses/vqav2.py`:
`Image.open(path).convert("RGB")`, no `ImageOps.exif_transpose`): pixels as stored, EXIF
orientation not applied. Where PIL's plain `convert("RGB")` loses the picture, `to_rgb` does what
the mode means instead: 16-bit grayscale is scaled to 8 bits (PIL clips it, mostly to white), and
transparent pixels show the letterbox fill (PIL drops alpha, showing whatever colour is stored
under it). `check_image` decodes a file once at prepare time and says why it cannot be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch

# torch/torchvision are imported inside the functions: `Geometry` is used by the config loader,
# which Snakemake imports on every (dry) run and which should stay light.


@dataclass(frozen=True)
class Geometry:
    """An input geometry, width x height in pixels. Written `224` (square) or `1333x800`."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str | int) -> "Geometry":
        text = str(text).strip().lower()
        if "x" in text:
            w, h = text.split("x", 1)
            geometry = cls(int(w), int(h))
        else:
            geometry = cls(int(text), int(text))
        if geometry.width <= 0 or geometry.height <= 0:
            raise ValueError(f"geometry {text!r}: width and height must be positive")
        return geometry

    @property
    def square(self) -> bool:
        return self.width == self.height

    def __str__(self) -> str:
        return str(self.width) if self.square else f"{self.width}x{self.height}"


def fill_color(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The letterbox fill: the normalization mean in 0..255, truncated as Prismatic does."""
    return tuple(int(255 * c) for c in mean)  # type: ignore[return-value]


_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16-bit, 32-bit integer and float grayscale
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")


def _gray_to_8bit(image: Image.Image) -> Image.Image:
    """Scale a wide grayscale image to 0..255. 16-bit modes span 0..65535; 32-bit integer and float
    images carry no declared range, so values up to 255 are taken as 8-bit, up to 65535 as 16-bit
    (how PNG/TIFF 16-bit files often open), anything larger by its maximum."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        peak = float(np.nanmax(values)) if values.size else 0.0
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def to_rgb(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Any PIL image -> RGB: wide grayscale scaled to 8 bits, transparency (alpha, LA, palette or
    grayscale with a transparent entry) composited over `fill`, other modes (L, 1, P, CMYK, YCbCr)
    through PIL's conversion."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GRAY:
        return _gray_to_8bit(image).convert("RGB")
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*fill, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_image(path: str | Path) -> str | None:
    """Decode the image at `path` completely; None if it can be used, else why not (one line)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # the whole file: a truncated JPEG fails here, not at Image.open
                if image.width < 1 or image.height < 1:
                    return "image has no pixels"
                to_rgb(image, (0, 0, 0))
    except FileNotFoundError:
        return "image file not found"
    except (OSError, SyntaxError, ValueError, TypeError, MemoryError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:  # PIL reports a bad file through all of these
        return f"image does not decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
    return None


def letterbox(image: Image.Image, geometry: Geometry, fill: tuple[int, int, int]) -> Image.Image:
    """Pad `image` to the target aspect ratio with `fill`, then resize to `geometry`. Transparent
    pixels show `fill` too, so they look like the padding around them."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = to_rgb(image, fill)
    w, h = image.size
    if geometry.square:
        m = max(w, h)
        pad_w, pad_h = int((m - w) / 2), int((m - h) / 2)
        padded = TF.pad(image, [pad_w, pad_h, pad_w, pad_h], fill=fill, padding_mode="constant")
        resized = TF.resize(padded, geometry.width, interpolation=InterpolationMode.BICUBIC)
        return TF.center_crop(resized, [geometry.height, geometry.width])
    target = geometry.width / geometry.height
    if w / h < target:
        pad_w, pad_h = int((round(h * target) - w) / 2), 0
    else:
        pad_w, pad_h = 0, int((round(w / target) - h) / 2)
    padded = TF.pad(image, [pad_w, pad_h, pad_w, pad_h], fill=fill, padding_mode="constant")
    return TF.resize(padded, [geometry.height, geometry.width], interpolation=InterpolationMode.BICUBIC)


def to_pixels(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> "torch.Tensor":
    """PIL RGB image -> normalized float tensor (3, H, W)."""
    from torchvision.transforms import functional as TF

    return TF.normalize(TF.to_tensor(image), list(mean), list(std))


def preprocess(
    image: Image.Image,
    geometry: Geometry,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> "torch.Tensor":
    """Letterbox with the backbone's own fill, then normalize with its own statistics."""
    return to_pixels(letterbox(image, geometry, fill_color(mean)), mean, std)


@dataclass(frozen=True)
class PixelTransform:
    """A backbone's image transform: letterbox with each view's fill, normalize with its statistics,
    views stacked along the channels (one view per tower of a fused backbone, else one). Plain data,
    so data-loader workers receive it without the model."""

    views: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]

    def __call__(self, image: Image.Image, geometry: Geometry) -> "torch.Tensor":
        import torch

        tensors = [preprocess(image, geometry, mean, std) for mean, std in self.views]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
