"""Evaluation preprocessing in NumPy and Pillow, without torch.

`to_array` reproduces torchvision's eval transform on PIL images,
`Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])`.
The short side is resized with Pillow's bilinear filter, which always
antialiases. The long side becomes `int(resize * long / short)`, as
torchvision computes it, and the crop offsets are rounded the same way. So the
ONNX serving install preprocesses exactly like training evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize the short side to `spec.resize` and take the center `spec.crop` square, as torchvision does."""
    width, height = image.size
    new_size = resized_size(width, height, spec.resize)
    if new_size != (width, height):
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
