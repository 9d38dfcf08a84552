"""Evaluate a bundle: top-1 and top-5 accuracy, per-class accuracy, a confusion-matrix PNG and a JSON report.

Images go through `classifier.preprocess.to_array` with the bundle's
preprocessing, the same arrays serving computes, and through the bundle's
PyTorch model. Calibrated metrics use the bundle's temperature, and the OOD
rejection rate uses its score and threshold.

`evaluate_bundle(model_dir, data, split="val")` returns the report dict and
writes `report.json` and `confusion.png` into `out`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from classifier.bundle import Bundle
from classifier.labels import LabelSet
from classifier.preprocess import Preprocessing, to_array
from training.calibration import expected_calibration_error, negative_log_likelihood, ood_scores
from training.data import (
    DataSpec,
    ImageDataError,
    ImageSamples,
    Sample,
    SkippedImages,
    UnreadableImage,
    drop_unreadable,
    find_unreadable_images,
    load_splits,
    raise_unreadable,
    resolve_examples,
)
from training.engine import resolve_device, resolve_precision, resolve_workers, topk_correct
from training.errors import InputError
from training.features import predict_logits

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
CONFUSION_NAME = "confusion.png"


class ServingTransform:
    """PIL image -> tensor with serving's NumPy preprocessing (picklable for DataLoader workers)."""

    def __init__(self, spec: Preprocessing) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(to_array(image, self.spec))


def map_to_bundle_labels(samples: Sequence[Sample], data_labels: LabelSet, bundle_labels: LabelSet) -> list[Sample]:
    """Re-index samples labelled by `data_labels` to the bundle's output indices, matching class ids.

    Raises ValueError naming the data classes the bundle does not predict.
    """
    if data_labels.matches(bundle_labels):
        return list(samples)
    missing = [class_id for class_id in data_labels.class_ids if class_id not in bundle_labels.class_ids]
    if missing:
        raise ValueError(f"the data has classes the model does not predict: {', '.join(missing[:10])}")
    mapping = {index: bundle_labels.index_of(class_id) for index, class_id in enumerate(data_labels.class_ids)}
    return [Sample(sample.path, mapping[sample.label]) for sample in samples]


def recorded_data_spec(bundle: Bundle) -> DataSpec | None:
    """Return the data spec the bundle was trained on, when it recorded one."""
    recorded = bundle.recipe.get("data")
    return DataSpec.from_dict(recorded) if isinstance(recorded, dict) and recorded.get("source") else None


def check_recorded_source(spec: DataSpec, bundle: Bundle) -> None:
    """Raise InputError when the data directory a bundle records is not a directory from here.

    Bundles written before sources were recorded as absolute paths may hold a
    path relative to the directory training ran in. Such a path is read from
    the current directory when it exists there, with a warning.
    """
    if spec.is_flowers102:
        return
    source = Path(spec.source)
    if source.is_dir():
        if not source.is_absolute():
            logger.warning(
                "bundle %s records its data as the relative path %s; reading it from the current directory %s",
                bundle.version,
                spec.source,
                Path.cwd(),
            )
        return
    if not source.is_absolute():
        raise InputError(
            f"bundle {bundle.path} records its data as the relative path {spec.source!r}, "
            f"which is not a directory from {Path.cwd()}; pass --data with the data directory"
        )
    raise InputError(f"bundle {bundle.path} records its data as {spec.source}, which does not exist; pass --data with the data directory")


def evaluate_bundle(
    model: str | os.PathLike | Bundle,
    data: DataSpec | str | None = None,
    *,
    split: str = "val",
    examples: Iterable[Any] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    workers: int = -1,
    show_progress_bar: bool = True,
    limit_per_class: int | None = None,
    strict_data: bool = False,
) -> dict[str, Any]:
    """Evaluate a bundle on a split of `data`, or on labelled `examples`, and write the report.

    - `data`: a DataSpec, an ImageFolder directory or 'flowers102'; None uses
      the data recorded in the bundle, with all its images unless
      `limit_per_class` is given (the limit used in training is not reused).
      Its classes are matched to the bundle's by class id.
    - `examples`: labelled photos as for `train(extra_examples=...)`; when
      given, `data` and `split` are ignored.
    - `out`: directory for report.json and confusion.png; default
      `<bundle>-eval-<split>` beside the bundle.
    - `strict_data`: stop with ImageDataError at the first image that cannot
      be read or decoded, instead of leaving it out of the report.

    Returns the report: `top1`, `top5`, `samples`, `skipped_images`,
    `per_class` (index, id, name, samples, correct, accuracy), `confusion`
    (rows are true classes), `nll`, `ece` (calibrated), `ood_reject_rate`,
    and the written paths.
    """
    bundle = model if isinstance(model, Bundle) else Bundle.load(model)
    if bundle.path is None:
        raise ValueError("evaluate_bundle needs a bundle that was saved to a directory")
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)

    if examples is not None:
        samples = resolve_examples(examples, bundle.labels)
        source = "examples"
        split = "examples"
    else:
        if isinstance(data, DataSpec):
            spec = data
        elif data is not None:
            spec = DataSpec(source=str(data))
        else:
            spec = recorded_data_spec(bundle)
            if spec is not None:
                check_recorded_source(spec, bundle)
                spec = dataclasses.replace(spec, limit_per_class=limit_per_class)
        if spec is None:
            raise ValueError(f"bundle {bundle.path} records no training data; pass --data DIR or flowers102")
        splits = load_splits(spec)
        samples = map_to_bundle_labels(splits.split(split), splits.labels, bundle.labels)
        source = spec.source
    if not samples:
        raise ValueError(f"no images to evaluate in {source} ({split})")

    # Every image is decoded once before the model runs, and unreadable ones are left out.
    loader_workers = resolve_workers(workers)
    skipped = SkippedImages()
    unreadable = find_unreadable_images([sample.path for sample in samples], threads=max(1, loader_workers))
    samples = drop_unreadable({split: samples}, unreadable, strict=strict_data, skipped=skipped)[split]
    skipped.log_summary()
    if not samples:
        raise ImageDataError(f"none of the {len(skipped)} images to evaluate in {source} ({split}) could be read")

    out_dir = Path(out) if out is not None else bundle.path.parent / f"{bundle.path.name}-eval-{split}"
    logger.info("evaluating bundle %s on %d images of %s (%s) into %s", bundle.version, len(samples), source, split, out_dir)

    def skip_during_run(image: UnreadableImage) -> None:
        skipped.add(image, "during_run")

    network = bundle.build_torch_model().to(torch_device)
    rows = predict_logits(
        network,
        ImageSamples(samples, ServingTransform(bundle.preprocessing), mark_unreadable=True),
        list(range(len(samples))),
        device=torch_device,
        precision=resolved_precision,
        batch_size=batch_size,
        workers=loader_workers,
        show_progress_bar=show_progress_bar,
        description=f"evaluate {split}",
        on_unreadable=raise_unreadable if strict_data else skip_during_run,
    )
    if not bool(rows.readable.any()):
        raise ImageDataError(f"no image of {source} ({split}) could be read during the evaluation")
    if skipped.by_source["during_run"]:
        skipped.log_summary()
    labels = torch.tensor([sample.label for sample in samples], dtype=torch.long)[rows.readable]
    report = build_report(rows.readable_values(), labels, bundle)
    report.update(
        {
            "model": str(bundle.path),
            "version": bundle.version,
            "data": source,
            "split": split,
            "precision": resolved_precision,
            "skipped_images": len(skipped),
        }
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    image = draw_confusion_matrix(
        np.asarray(report["confusion"]),
        bundle.labels.display_names("en"),
        title=f"{bundle.version} on {Path(source).name if source != 'examples' else 'examples'} ({split}): top-1 {report['top1']:.3f}",
    )
    image.save(out_dir / CONFUSION_NAME)
    report["confusion_png"] = str(out_dir / CONFUSION_NAME)
    report["report"] = str(out_dir / REPORT_NAME)
    (out_dir / REPORT_NAME).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    logger.info("top-1 %.4f, top-5 %.4f on %d images; report in %s", report["top1"], report["top5"], len(samples), out_dir)
    return report


def build_report(logits: torch.Tensor, labels: torch.Tensor, bundle: Bundle) -> dict[str, Any]:
    """Compute the accuracy, calibration and OOD figures of a report from logits and labels."""
    num_classes = bundle.num_classes
    counts = topk_correct(logits, labels, (1, 5))
    predictions = logits.argmax(dim=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predictions.numpy()), 1)

    per_class = []
    for index in range(num_classes):
        support = int(confusion[index].sum())
        correct = int(confusion[index, index])
        per_class.append(
            {
                "index": index,
                "id": bundle.labels.class_ids[index],
                "name": bundle.labels.display_name(index, "en"),
                "samples": support,
                "correct": correct,
                "accuracy": correct / support if support else None,
            }
        )

    temperature = bundle.temperature
    probabilities = torch.softmax(logits.double() / temperature, dim=1)
    report: dict[str, Any] = {
        "samples": int(len(labels)),
        "top1": counts[1] / len(labels),
        "top5": counts[5] / len(labels),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "temperature": temperature,
        "nll": negative_log_likelihood(logits, labels, temperature),
        "ece": expected_calibration_error(probabilities, labels, int(bundle.calibration.get("bins", 15))),
    }
    threshold = bundle.ood_threshold
    if threshold is not None:
        scores = ood_scores(logits, bundle.ood["score"], float(bundle.ood.get("temperature") or 1.0))
        report["ood_reject_rate"] = float(np.mean(scores < threshold))
    return report


# ---------------------------------------------------------------------------
# Confusion matrix image


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _blend(value: float) -> tuple[int, int, int]:
    """Map 0..1 to white..dark blue."""
    low, high = np.array([255, 255, 255]), np.array([8, 48, 107])
    return tuple(int(c) for c in low + (high - low) * value)


def draw_confusion_matrix(matrix: np.ndarray, names: Sequence[str], *, title: str = "") -> Image.Image:
    """Draw a confusion matrix (rows: true class, columns: predicted class) as an RGB image.

    Cells are shaded by the row-normalized fraction (per-class recall on the
    diagonal). Counts are printed in the cells when they are large enough
    to hold them: up to about 40 classes.
    """
    count = len(names)
    cell = int(max(12, min(44, 900 // max(count, 1))))
    label_font = _font(max(9, min(14, cell - 2)))
    count_font = _font(max(8, min(14, cell // 2)))
    title_font = _font(16)

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(int(measure.textlength(name, font=label_font)) for name in names) + 12
    title_height = 34
    caption = 22
    left = label_width + caption
    top = title_height + label_width + caption
    title_width = int(measure.textlength(title, font=title_font)) + 20
    size = (max(left + count * cell + 10, title_width), top + count * cell + 10)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black", font=title_font)

    row_totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(matrix, row_totals, out=np.zeros_like(matrix, dtype=np.float64), where=row_totals > 0)
    for row in range(count):
        for column in range(count):
            x0, y0 = left + column * cell, top + row * cell
            fill = _blend(fractions[row, column])
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=(220, 220, 220))
            if cell >= 22 and matrix[row, column]:
                text = str(int(matrix[row, column]))
                color = "white" if fractions[row, column] > 0.5 else "black"
                width = measure.textlength(text, font=count_font)
                draw.text((x0 + (cell - width) / 2, y0 + cell / 2 - count_font.size / 2 - 1), text, fill=color, font=count_font)

    # Row labels (true classes) on the left, right-aligned.
    for row, name in enumerate(names):
        width = measure.textlength(name, font=label_font)
        draw.text((left - 6 - width, top + row * cell + (cell - label_font.size) / 2 - 1), name, fill="black", font=label_font)
    # Column labels (predicted classes) on top, rotated to read bottom-up.
    for column, name in enumerate(names):
        strip = Image.new("RGB", (label_width, cell), "white")
        ImageDraw.Draw(strip).text((4, (cell - label_font.size) / 2 - 1), name, fill="black", font=label_font)
        rotated = strip.rotate(90, expand=True)
        image.paste(rotated, (left + column * cell, top - label_width - 2))

    # Axis captions.
    draw.text((left, title_height), "predicted class", fill=(90, 90, 90), font=label_font)
    vertical = Image.new("RGB", (180, caption), "white")
    ImageDraw.Draw(vertical).text((2, 2), "true class", fill=(90, 90, 90), font=label_font)
    image.paste(vertical.rotate(90, expand=True), (2, top))
    return image
