"""Image geometry: letterbox into the cell's input size, then normalize.

Square targets follow Prismatic exactly (`prismatic/models/backbones/vision/base_vision.py`,
`LetterboxPad`, then timm's eval transform with Resize(size) + CenterCrop(size)): pad the shorter
side by `int((m - side) / 2)` on both ends with `int(255 * mean)` per channel, resize the shorter
side to `size` (bicubic), centre-crop. Non-square targets (e.g. 1333x800 for detection backbones)
generalise the same idea: pad to the target aspect ratio, then resize to exactly (W, H).
"""

from __future__ import annotations

from dataclasses import dataclass
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


def letterbox(image: Image.Image, geometry: Geometry, fill: tuple[int, int, int]) -> Image.Image:
    """Pad `image` to the target aspect ratio with `fill`, then resize to `geometry`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
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
