"""Grad-CAM (Selvaraju et al., 2017) on the last ConvNeXt stage, drawn over the photo.

The heat map is ReLU(sum over channels k of w_k * A_k). A is the output of
`model.features[-1]` (768 x 7 x 7 for a 224-pixel input), and w_k is the
spatial mean of d(logit of the class) / d(A_k). The map covers the center
crop that the model receives, so the overlay is drawn on that region of the photo.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from classifier.bundle import Bundle
from classifier.preprocess import resized_size, to_array
from training.data import load_image
from training.engine import resolve_device

logger = logging.getLogger(__name__)

# Anchor colors of the heat map, from cold (0) to hot (1): blue, cyan, green, yellow, red.
_COLOR_STOPS = np.array([[0, 0, 160], [0, 190, 255], [40, 220, 60], [255, 230, 0], [230, 20, 0]], dtype=np.float64)


def grad_cam(model: torch.nn.Module, batch: torch.Tensor, class_index: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """Return the Grad-CAM map (h, w) scaled to 0..1, the explained class and the softmax probabilities.

    `batch` is one preprocessed image (1, 3, H, W). Without `class_index`,
    the predicted class is explained. Runs in fp32; parameter gradients are
    neither computed nor left behind.
    """
    captured: dict[str, torch.Tensor] = {}

    def capture_activation(module, inputs, output) -> torch.Tensor:
        # A detached copy that requires grad becomes a leaf, so backward stops
        # here instead of running through the whole backbone.
        leaf = output.detach().requires_grad_(True)
        captured["activation"] = leaf
        return leaf

    model.eval()
    flags = [parameter.requires_grad for parameter in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    handle = model.features[-1].register_forward_hook(capture_activation)
    try:
        with torch.enable_grad():
            logits = model(batch)
            probabilities = torch.softmax(logits.detach().double(), dim=1)[0].numpy()
            target = int(logits.argmax(dim=1)) if class_index is None else class_index
            if not 0 <= target < logits.shape[1]:
                raise ValueError(f"class index {target} is outside 0..{logits.shape[1] - 1}")
            logits[0, target].backward()
    finally:
        handle.remove()
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)

    activation = captured["activation"].detach()[0]  # (C, h, w)
    gradient = captured["activation"].grad[0]  # (C, h, w)
    weights = gradient.mean(dim=(1, 2))  # (C,)
    cam = torch.relu((weights[:, None, None] * activation).sum(dim=0))
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.numpy(), target, probabilities


def colorize(heat: np.ndarray) -> np.ndarray:
    """Map values 0..1 (h, w) to RGB uint8 (h, w, 3) through the blue-to-red color stops."""
    positions = np.clip(heat, 0.0, 1.0) * (len(_COLOR_STOPS) - 1)
    lower = np.floor(positions).astype(int).clip(0, len(_COLOR_STOPS) - 2)
    fraction = (positions - lower)[..., None]
    colors = _COLOR_STOPS[lower] * (1 - fraction) + _COLOR_STOPS[lower + 1] * fraction
    return colors.astype(np.uint8)


def center_crop_box(width: int, height: int, *, resize: int, crop: int) -> tuple[int, int, int, int]:
    """Return the box (left, top, right, bottom) of the original photo that the center crop shows."""
    new_width, new_height = resized_size(width, height, resize)
    scale_x, scale_y = width / new_width, height / new_height
    left = (new_width - crop) / 2.0 * scale_x
    top = (new_height - crop) / 2.0 * scale_y
    return (
        int(round(max(left, 0))),
        int(round(max(top, 0))),
        int(round(min(left + crop * scale_x, width))),
        int(round(min(top + crop * scale_y, height))),
    )


def overlay(image: Image.Image, cam: np.ndarray, *, alpha: float = 0.45) -> Image.Image:
    """Blend the heat map, resized to `image`, over it."""
    heat = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8), "L").resize(image.size, Image.Resampling.BICUBIC)
    colored = Image.fromarray(colorize(np.asarray(heat, dtype=np.float64) / 255.0), "RGB")
    return Image.blend(image.convert("RGB"), colored, alpha)


def write_gradcam(
    model: str | os.PathLike | Bundle,
    image_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    class_index: int | None = None,
    alpha: float = 0.45,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write a PNG of the photo's center crop with the Grad-CAM overlay and a caption; return what it shows.

    The returned dict has `out`, `class_index`, `class_id`, `name` and
    `probability` (calibrated with the bundle's temperature).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    bundle = model if isinstance(model, Bundle) else Bundle.load(model)
    torch_device = resolve_device(device)
    network = bundle.build_torch_model().to(torch_device)
    photo = load_image(image_path)
    batch = torch.from_numpy(to_array(photo, bundle.preprocessing))[None].to(torch_device)
    cam, target, _ = grad_cam(network, batch, class_index)
    with torch.inference_mode():
        calibrated = torch.softmax(network(batch).double().cpu() / bundle.temperature, dim=1)[0]

    spec = bundle.preprocessing
    box = center_crop_box(photo.width, photo.height, resize=spec.resize, crop=spec.crop)
    region = photo.crop(box)
    scale = max(1.0, 320 / min(region.size))
    if scale > 1.0:
        region = region.resize((round(region.width * scale), round(region.height * scale)), Image.Resampling.BICUBIC)
    blended = overlay(region, cam, alpha=alpha)

    name = bundle.labels.display_name(target, "en")
    probability = float(calibrated[target])
    caption = f"{name}: {probability:.1%} (Grad-CAM, class {target})"
    font = ImageFont.load_default(size=16)
    canvas = Image.new("RGB", (blended.width, blended.height + 28), "white")
    canvas.paste(blended, (0, 0))
    ImageDraw.Draw(canvas).text((6, blended.height + 5), caption, fill="black", font=font)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    logger.info("Grad-CAM for %s: %s (%.3f) written to %s", image_path, name, probability, out)
    return {
        "out": str(out),
        "class_index": target,
        "class_id": bundle.labels.class_ids[target],
        "name": name,
        "probability": probability,
    }
