"""Synthetic non-flower images: noise, gradients, stripes, checkerboards, flat colors and shapes.

They stand in for "not a flower" photos when none were collected: training
uses them to choose between OOD scores by AUROC, and export falls back to
them as sample inputs. They are generated, so the repository ships no images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("noise", "smooth_noise", "gradient", "stripes", "checkerboard", "flat", "shapes", "text_page")


def synthetic_image(kind: str, rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Draw one synthetic RGB image of `kind` (one of KINDS)."""
    width, height = size
    if kind == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels, "RGB")
    if kind == "smooth_noise":
        small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        image = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)
        return image.filter(ImageFilter.GaussianBlur(2))
    if kind == "gradient":
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        pixels = start + (end - start) * t[..., None]
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    if kind == "stripes":
        period = int(rng.integers(6, 40))
        colors = rng.integers(0, 256, (2, 3))
        xs = np.arange(width)[None, :] + np.arange(height)[:, None] * rng.uniform(-1, 1)
        mask = ((xs // period) % 2).astype(bool)
        pixels = np.where(mask[..., None], colors[0], colors[1])
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    if kind == "checkerboard":
        cell = int(rng.integers(8, 48))
        colors = rng.integers(0, 256, (2, 3))
        ys, xs = np.mgrid[0:height, 0:width]
        mask = ((xs // cell + ys // cell) % 2).astype(bool)
        pixels = np.where(mask[..., None], colors[0], colors[1])
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    if kind == "flat":
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        return Image.new("RGB", size, color)
    if kind == "shapes":
        image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.polygon([(x0, y0), (x1, y0 + 5), (x0 + 7, y1)], fill=fill)
        return image
    if kind == "text_page":
        image = Image.new("RGB", size, (245, 245, 240))
        draw = ImageDraw.Draw(image)
        for line in range(0, height, 14):
            length = int(rng.integers(width // 3, width - 10))
            draw.line((8, line + 7, length, line + 7), fill=(40, 40, 40), width=3)
        return image
    raise ValueError(f"unknown synthetic image kind {kind!r}; expected one of {', '.join(KINDS)}")


def synthetic_non_flowers(count: int, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    """Return `count` synthetic images, cycling through every kind, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [synthetic_image(KINDS[index % len(KINDS)], rng, size) for index in range(count)]
