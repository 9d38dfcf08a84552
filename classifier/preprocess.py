"""Evaluation preprocessing in NumPy and Pillow, without torch.

`to_array` reproduces torchvision's eval transform on PIL images,
`Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])`.
The short side is resized with Pillow's bilinear filter, which always
antialiases. The long side becomes `int(resize * long / short)`, as
torchvision computes it, and the crop offsets are rounded the same way. So the
ONNX serving install preprocesses exactly like training evaluates.

An elongated image would make that resize huge (160000 x 1 becomes
40960000 x 256), so when the resized long side would exceed `MAX_RESIZED_SIDE`,
only the window that the center crop keeps is resized.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Resized long sides above this are never allocated. `decode_image` rejects
# aspect ratios over 20:1, so with the default resize of 256 the long side of
# a decoded photo is at most 5120 and takes the exact torchvision path.
MAX_RESIZED_SIDE = 8192
# Source pixels a filter reads on each side of a sample at scale 1; bicubic
# needs 2 and bilinear 1, so 3 leaves room.
_MAX_FILTER_RADIUS = 3

_INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing stored in a bundle: resize the short side, center crop, normalize."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize < 1 or self.crop < 1:
            raise ValueError(f"resize and crop must be positive, got resize={self.resize} crop={self.crop}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {', '.join(_INTERPOLATIONS)}"
            )
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values each, std positive; got {self.mean} and {self.std}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image: (3, crop, crop)."""
        return (3, self.crop, self.crop)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Build from `to_dict` output; missing keys take the defaults and unknown keys raise."""
        known = {"resize", "crop", "mean", "std", "interpolation"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {', '.join(sorted(unknown))}")
        return cls(**dict(data))


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Return the (width, height) that torchvision's `Resize(short_side)` produces."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def resize_and_crop(image: Image.Image, spec: Preprocessing, *, max_side: int = MAX_RESIZED_SIDE) -> Image.Image:
    """Resize the short side to `spec.resize` and take the center `spec.crop` square, as torchvision does.

    When the resized long side would exceed `max_side`, only the center window
    along the long side is resized, so memory stays bounded for any aspect ratio.
    """
    width, height = image.size
    new_size = resized_size(width, height, spec.resize)
    if max(new_size) > max(max_side, spec.crop):
        image = _resize_center_window(image, new_size, spec)
    elif new_size != (width, height):
        image = image.resize(new_size, _INTERPOLATIONS[spec.interpolation])

    width, height = image.size
    crop = spec.crop
    if crop > width or crop > height:
        # torchvision pads with zeros (black) before cropping when the image is smaller than the crop.
        padded = Image.new(image.mode, (max(width, crop), max(height, crop)), 0)
        padded.paste(image, ((max(crop - width, 0)) // 2, (max(crop - height, 0)) // 2))
        image = padded
        width, height = image.size
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _resize_center_window(image: Image.Image, new_size: tuple[int, int], spec: Preprocessing) -> Image.Image:
    """Resize only the `spec.crop` long center window of the long side, at the scale of `new_size`.

    The source is first cut to that window plus a margin wider than the filter
    support, then resized with a `box` inside the cut. With Pillow 13.0 this
    matches resizing the whole image and cropping to within 1 (of 255) on under
    0.1% of pixels, from float rounding of the window edges. A `box` on the
    uncut image gave rows up to 23 off in the vertical case.
    """
    width, height = image.size
    new_width, new_height = new_size
    crop = spec.crop
    resample = _INTERPOLATIONS[spec.interpolation]
    horizontal = new_width >= new_height
    source_long, resized_long = (width, new_width) if horizontal else (height, new_height)

    offset = int(round((resized_long - crop) / 2.0))
    scale = source_long / resized_long
    window_start = offset * scale
    window_end = (offset + crop) * scale
    # Bicubic reads 2 source pixels on each side of a sample when upscaling and
    # 2 * scale when downscaling. A margin of 3 * scale + 2 covers both.
    margin = math.ceil(_MAX_FILTER_RADIUS * max(scale, 1.0)) + 2
    cut_start = max(0, math.floor(window_start) - margin)
    cut_end = min(source_long, math.ceil(window_end) + margin)

    if horizontal:
        cut = image.crop((cut_start, 0, cut_end, height))
        box = (window_start - cut_start, 0, window_end - cut_start, height)
        return cut.resize((crop, new_height), resample, box=box)
    cut = image.crop((0, cut_start, width, cut_end))
    box = (0, window_start - cut_start, width, window_end - cut_start)
    return cut.resize((new_width, crop), resample, box=box)


def to_array(image: Image.Image, spec: Preprocessing | None = None) -> np.ndarray:
    """Turn an RGB PIL image into a normalized float32 array of shape (3, crop, crop)."""
    spec = spec or Preprocessing()
    if image.mode != "RGB":
        image = image.convert("RGB")
    cropped = resize_and_crop(image, spec)

    pixels = np.asarray(cropped, dtype=np.float32)  # (H, W, 3), 0..255
    pixels = pixels / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    normalized = (pixels - mean) / std
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))
