"""Measure calibration and out-of-distribution rejection of a flowers5 bundle.

    python -m benchmarks.calibration_ood --data ../shared/data/flowers5 [--model DIR]

Without `--model`, the script uses `build/flowers5-none` when it contains a bundle,
and otherwise trains one there first (random-init weights, frozen backbone, one
cached view per photo, every other recipe value at its default).

It reports, on the flowers5 val photos, read and preprocessed as the bot reads
photos:

- the expected calibration error (15 equal-width bins) and NLL before and
  after temperature scaling. "In-sample" applies the bundle's temperature,
  which training fitted on these same photos. "Cross-fitted" fits a temperature
  on one half of them and measures on the other half, both ways round, which is
  the fairer estimate for new photos;
- the AUROC of each OOD score (`energy` with T = 1, `msp` with the calibration
  temperature) between those photos and a set of synthetic non-flower images
  the script draws itself (see `non_flower_set`), overall and per kind. It also
  reports the share of non-flowers accepted at the threshold that keeps 95% of
  the val photos (FPR at 95% TPR), and both reject rates at the bundle's own
  threshold.

The result is printed as Markdown and written as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from classifier.backends import load_backend
from classifier.bundle import Bundle
from classifier.decode import decode_image
from classifier.preprocess import to_array
from training.calibration import auroc, expected_calibration_error, fit_temperature, negative_log_likelihood, ood_scores
from training.synthetic import KINDS as TRAINING_KINDS
from training.synthetic import synthetic_image

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers5"
DEFAULT_MODEL = Path("build/flowers5-none")
DEFAULT_OUT = Path("build/benchmarks/calibration_ood.json")
ECE_BINS = 15
TRUE_POSITIVE_RATE = 0.95
IMAGE_SIZE = (320, 240)
# Kinds drawn here in addition to the ones in training.synthetic.
EXTRA_KINDS = ("scene", "marble", "glyphs")
NON_FLOWER_KINDS = (*TRAINING_KINDS, *EXTRA_KINDS)
# Differs from the seed training draws its synthetic images with (the recipe seed, 0 by default).
DEFAULT_SEED = 2024
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,;:!?"


# -- the non-flower set ---------------------------------------------------------------


def scene_image(rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """Draw a flat-shaded outdoor scene: sky gradient, ground, sun, a house and a tree trunk with a round crown."""
    width, height = size
    horizon = int(height * rng.uniform(0.45, 0.7))
    top, bottom = rng.uniform(60, 160, 3), rng.uniform(170, 255, 3)
    rows = np.linspace(0.0, 1.0, horizon)[:, None, None]
    sky = (top + (bottom - top) * rows).repeat(width, axis=1)
    ground = np.broadcast_to(rng.uniform(30, 140, 3), (height - horizon, width, 3))
    image = Image.fromarray(np.concatenate([sky, ground]).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    sun_x, sun_y, radius = rng.integers(20, width - 20), rng.integers(10, max(11, horizon - 30)), rng.integers(10, 30)
    draw.ellipse((sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius), fill=(250, 230, 120))
    house_x, house_w, house_h = int(rng.integers(10, width // 2)), int(rng.integers(50, 110)), int(rng.integers(40, 80))
    wall = tuple(int(c) for c in rng.integers(100, 240, 3))
    draw.rectangle((house_x, horizon - house_h, house_x + house_w, horizon + 5), fill=wall)
    draw.polygon([(house_x - 8, horizon - house_h), (house_x + house_w // 2, horizon - house_h - 35), (house_x + house_w + 8, horizon - house_h)], fill=(120, 40, 30))
    tree_x = int(rng.integers(width // 2, width - 30))
    draw.rectangle((tree_x, horizon - 60, tree_x + 10, horizon + 5), fill=(90, 60, 30))
    draw.ellipse((tree_x - 30, horizon - 110, tree_x + 40, horizon - 45), fill=tuple(int(c) for c in (rng.integers(20, 60), rng.integers(90, 150), rng.integers(20, 60))))
    return image


def marble_image(rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """Draw a veined stone or wood-grain texture: a sine of coordinates disturbed by smooth noise."""
    width, height = size
    noise = Image.fromarray(rng.integers(0, 256, (height // 12 + 2, width // 12 + 2), dtype=np.uint8), "L")
    smooth = np.asarray(noise.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6)), dtype=np.float64) / 255.0
    ys, xs = np.mgrid[0:height, 0:width]
    angle, frequency, turbulence = rng.uniform(0, np.pi), rng.uniform(0.02, 0.08), rng.uniform(4, 12)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) * frequency + turbulence * smooth
    veins = (np.sin(phase) + 1.0) / 2.0
    light, dark = rng.uniform(150, 255, 3), rng.uniform(20, 140, 3)
    pixels = dark + (light - dark) * veins[..., None]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def glyphs_image(rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """Draw lines of random characters in Pillow's built-in font, like a photo of a printed page or a sign."""
    background = tuple(int(c) for c in rng.integers(200, 256, 3))
    ink = tuple(int(c) for c in rng.integers(0, 80, 3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font_size = int(rng.integers(12, 28))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow before 10.1 has one fixed-size default font
        font = None
    for top in range(4, size[1] - font_size, font_size + 4):
        line = "".join(rng.choice(list(GLYPHS + "   ")) for _ in range(60))
        draw.text((6, top), line, fill=ink, font=font)
    return image


def draw_non_flower(kind: str, rng: np.random.Generator) -> Image.Image:
    """Draw one non-flower image of `kind`, one of NON_FLOWER_KINDS."""
    if kind == "scene":
        return scene_image(rng)
    if kind == "marble":
        return marble_image(rng)
    if kind == "glyphs":
        return glyphs_image(rng)
    return synthetic_image(kind, rng, IMAGE_SIZE)


def non_flower_set(per_kind: int, *, seed: int = DEFAULT_SEED) -> list[tuple[str, bytes]]:
    """Return `per_kind` JPEGs (quality 90, 320 x 240) of each kind in NON_FLOWER_KINDS, as `(kind, bytes)`.

    The kinds: uniform noise, smooth color noise, linear gradients, stripes,
    checkerboards, flat colors, random rectangles and triangles, ruled text-like
    lines (from training.synthetic), plus outdoor scenes, marble and wood-grain
    textures and lines of printed characters (drawn here). They are JPEG-encoded
    because photos reach the bot as JPEGs.
    """
    rng = np.random.default_rng(seed)
    images = []
    for kind in NON_FLOWER_KINDS:
        for _ in range(per_kind):
            buffer = io.BytesIO()
            draw_non_flower(kind, rng).save(buffer, format="JPEG", quality=90)
            images.append((kind, buffer.getvalue()))
    return images


# -- measurements ---------------------------------------------------------------------


def cross_fitted_probabilities(logits: torch.Tensor, labels: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, list[float]]:
    """Return probabilities where each half of the rows is scaled by a temperature fitted on the other half."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    halves = [order[: len(order) // 2], order[len(order) // 2 :]]
    probabilities = torch.empty_like(logits, dtype=torch.float64)
    temperatures = []
    for fit_rows, apply_rows in (halves, halves[::-1]):
        temperature = fit_temperature(logits[fit_rows], labels[fit_rows])
        temperatures.append(temperature)
        probabilities[apply_rows] = torch.softmax(logits[apply_rows].double() / temperature, dim=1)
    return probabilities, temperatures


def false_positive_rate_at(in_scores: np.ndarray, out_scores: np.ndarray, true_positive_rate: float = TRUE_POSITIVE_RATE) -> float:
    """Return the share of `out_scores` at or above the threshold that keeps `true_positive_rate` of `in_scores`."""
    threshold = np.quantile(in_scores, 1.0 - true_positive_rate)
    return float(np.mean(out_scores >= threshold))


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, bundle_temperature: float, *, seed: int) -> dict[str, Any]:
    """Return accuracy, ECE and NLL before and after temperature scaling, in-sample and cross-fitted."""
    logits = logits.double()
    cross_probabilities, fold_temperatures = cross_fitted_probabilities(logits, labels, seed=seed)
    cross_nll = float(torch.nn.functional.nll_loss(cross_probabilities.clamp_min(1e-12).log(), labels))
    return {
        "samples": int(len(labels)),
        "top1": float((logits.argmax(dim=1) == labels).double().mean()),
        "bins": ECE_BINS,
        "bundle_temperature": bundle_temperature,
        "ece_before": expected_calibration_error(torch.softmax(logits, dim=1), labels, ECE_BINS),
        "ece_after_in_sample": expected_calibration_error(torch.softmax(logits / bundle_temperature, dim=1), labels, ECE_BINS),
        "ece_after_cross_fitted": expected_calibration_error(cross_probabilities, labels, ECE_BINS),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after_in_sample": negative_log_likelihood(logits, labels, bundle_temperature),
        "nll_after_cross_fitted": cross_nll,
        "cross_fitted_temperatures": fold_temperatures,
    }


def ood_report(
    val_logits: np.ndarray, non_flower_logits: np.ndarray, kinds: Sequence[str], bundle: Bundle
) -> dict[str, Any]:
    """Return AUROC and FPR at 95% TPR per score, per kind, and the reject rates at the bundle's threshold."""
    temperatures = {"energy": 1.0, "msp": bundle.temperature}
    kinds = np.asarray(kinds)
    scores: dict[str, Any] = {}
    for name, temperature in temperatures.items():
        in_scores = ood_scores(val_logits, name, temperature)
        out_scores = ood_scores(non_flower_logits, name, temperature)
        scores[name] = {
            "temperature": temperature,
            "auroc": auroc(in_scores, out_scores),
            "fpr_at_95_tpr": false_positive_rate_at(in_scores, out_scores),
            "auroc_by_kind": {kind: auroc(in_scores, out_scores[kinds == kind]) for kind in dict.fromkeys(kinds.tolist())},
        }
    report: dict[str, Any] = {
        "non_flower_samples": int(len(non_flower_logits)),
        "scores": scores,
        "better_score": max(scores, key=lambda name: scores[name]["auroc"]),
        "bundle_score": bundle.ood.get("score"),
        "bundle_threshold": bundle.ood_threshold,
        "bundle_fit": {key: bundle.ood.get(key) for key in ("method", "auroc", "non_flower_source", "non_flower_samples")},
    }
    if bundle.ood_threshold is not None:
        name = bundle.ood.get("score", "energy")
        temperature = float(bundle.ood.get("temperature") or 1.0)
        report["val_reject_rate"] = float(np.mean(ood_scores(val_logits, name, temperature) < bundle.ood_threshold))
        report["non_flower_reject_rate"] = float(np.mean(ood_scores(non_flower_logits, name, temperature) < bundle.ood_threshold))
    return report


# -- running the model ---------------------------------------------------------------


def serving_logits(backend: Any, bundle: Bundle, images: Sequence[bytes], *, batch_size: int) -> np.ndarray:
    """Return logits for encoded images, decoded and preprocessed exactly as the bot does."""
    rows = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([to_array(decode_image(data), bundle.preprocessing) for data in images[start : start + batch_size]])
        rows.append(backend.logits(batch))
    return np.concatenate(rows).astype(np.float64)


def val_photos(data: Path, bundle: Bundle, limit_per_class: int | None) -> tuple[list[Path], list[int]]:
    """Return the val photo paths and their label indices in `bundle`'s label set."""
    paths, labels = [], []
    for index, class_id in enumerate(bundle.labels.class_ids):
        files = sorted((data / "val" / class_id).glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"no val photos for class {class_id!r} in {data / 'val' / class_id}")
        files = files[:limit_per_class] if limit_per_class else files
        paths.extend(files)
        labels.extend([index] * len(files))
    return paths, labels


def train_quick_bundle(data: Path, out: Path) -> Bundle:
    """Train a random-init flowers5 bundle at `out` with one cached view per photo."""
    from training.data import DataSpec
    from training.recipe import Recipe
    from training.train import train

    logger.info("no bundle at %s; training one on %s (random-init weights, one view)", out, data)
    return train(Recipe(views=1), DataSpec(source=str(data)), "none", out, show_progress_bar=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole measurement and return the report."""
    started = time.monotonic()
    model_dir = Path(args.model) if args.model else DEFAULT_MODEL
    trained_here = False
    if not (model_dir / "bundle.json").is_file():
        if args.model:
            raise FileNotFoundError(f"--model {model_dir} is not a model bundle (no bundle.json)")
        train_quick_bundle(Path(args.data), model_dir)
        trained_here = True
    bundle = Bundle.load(model_dir)
    backend = load_backend(bundle, "torch", args.device, "fp32")

    paths, labels = val_photos(Path(args.data), bundle, args.limit_per_class)
    val_logits = serving_logits(backend, bundle, [path.read_bytes() for path in paths], batch_size=args.batch_size)
    non_flowers = non_flower_set(args.non_flower_per_kind, seed=args.seed)
    non_flower_logits = serving_logits(backend, bundle, [data for _, data in non_flowers], batch_size=args.batch_size)
    backend.close()

    report = {
        "model": str(model_dir),
        "bundle_version": bundle.version,
        "trained_here": trained_here,
        "recipe": {key: bundle.recipe.get(key) for key in ("views", "epochs", "seed", "ood_synthetic")},
        "bundle_val_top1": bundle.metrics.get("val_top1"),
        "calibration": calibration_report(torch.from_numpy(val_logits), torch.tensor(labels), bundle.temperature, seed=args.seed),
        "ood": ood_report(val_logits, non_flower_logits, [kind for kind, _ in non_flowers], bundle),
        "non_flower_set": {"kinds": list(NON_FLOWER_KINDS), "per_kind": args.non_flower_per_kind, "seed": args.seed, "size": list(IMAGE_SIZE)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "processor": platform.machine(), "threads": torch.get_num_threads()},
        "seconds": round(time.monotonic() - started, 1),
    }
    return report


def markdown(report: dict[str, Any]) -> str:
    """Return the report as the Markdown tables docs/benchmarks.md shows."""
    calibration, ood = report["calibration"], report["ood"]

    def number(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    lines = [
        f"Bundle `{report['bundle_version']}` ({report['model']}), {calibration['samples']} val photos, "
        f"top-1 {number(calibration['top1'], 3)}; {ood['non_flower_samples']} non-flower images.",
        "",
        "| | ECE (15 bins) | NLL | temperature |",
        "| --- | --- | --- | --- |",
        f"| before scaling | {number(calibration['ece_before'])} | {number(calibration['nll_before'])} | 1 |",
        f"| after, in-sample | {number(calibration['ece_after_in_sample'])} | {number(calibration['nll_after_in_sample'])} | {number(calibration['bundle_temperature'], 3)} |",
        f"| after, cross-fitted | {number(calibration['ece_after_cross_fitted'])} | {number(calibration['nll_after_cross_fitted'])} | "
        + ", ".join(number(value, 3) for value in calibration["cross_fitted_temperatures"])
        + " |",
        "",
        "| score | AUROC | FPR at 95% TPR |",
        "| --- | --- | --- |",
    ]
    for name, values in ood["scores"].items():
        lines.append(f"| {name} (T = {number(values['temperature'], 3)}) | {number(values['auroc'])} | {number(values['fpr_at_95_tpr'], 3)} |")
    kinds = list(next(iter(ood["scores"].values()))["auroc_by_kind"])
    lines += ["", "| kind | " + " | ".join(f"AUROC {name}" for name in ood["scores"]) + " |", "| --- |" + " --- |" * len(ood["scores"])]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(number(values["auroc_by_kind"][kind], 3) for values in ood["scores"].values()) + " |")
    if "val_reject_rate" in ood:
        lines += [
            "",
            f"The bundle's threshold ({ood['bundle_score']}, {number(ood['bundle_threshold'])}) rejects "
            f"{ood['val_reject_rate']:.1%} of the val photos and {ood['non_flower_reject_rate']:.1%} of the non-flower images.",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration_ood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help=f"flowers5 ImageFolder with val/ (default: {DEFAULT_DATA})")
    parser.add_argument("--model", help=f"bundle to measure (default: {DEFAULT_MODEL}, trained there first when missing)")
    parser.add_argument("--non-flower-per-kind", type=int, default=10, help=f"synthetic images per kind, {len(NON_FLOWER_KINDS)} kinds (default: 10)")
    parser.add_argument("--limit-per-class", type=int, help="use only the first N val photos of each class (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the non-flower images and of the cross-fit split (default: {DEFAULT_SEED})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="inference device (default: cpu)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON report path (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    print(f"\nreport written to {out} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
