"""Table 5: top-1 agreement of each backend and precision with fp32 torch on the flowers5 val photos.

    .venv/bin/python -m benchmarks.agreement [--variants a,b,...]

Every val photo is decoded and preprocessed once, the way the service does
it, and the same arrays go through every variant in batches of 8. The table
is measured for the trained flowers5 bundle (build/flowers5-none, when it
exists), for a random-init bundle, and for that bundle with every layer scale
set to 0.5. Random-init ConvNeXt blocks start with layer scales of 1e-6 and
barely change the residual stream, so only the last bundle puts the rounding
inside the blocks to the test. Logits that lie close together (see the
median top-2 margin) make any rounding flip more top-1 classes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from benchmarks.common import random_bundle as common_random_bundle
from benchmarks.common import (
    active_random_bundle,
    Report,
    add_common_arguments,
    bundle_with_onnx,
    configure_logging,
    markdown_table,
    onnx_int8_path,
    resolve_bundle,
    val_photos,
)
from benchmarks.variants import VARIANT_NAMES, build_variants

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = (
    "torch-fp32-jit",
    "torch-bf16-autocast",
    "torch-bf16-precast",
    "torch-bf16-pure",
    "torch-bf16-mixed",
    "torch-bf16-pure-jit",
    "torch-auto",
    "onnx-fp32",
    "onnx-int8",
    "torchscript-int8",
)
BATCH = 8


def load_arrays(paths: list[Path], spec) -> np.ndarray:
    from classifier.decode import decode_image
    from classifier.preprocess import to_array

    # The service decodes with draft_size = 2 x resize; the same here keeps the inputs identical.
    return np.stack([to_array(decode_image(path.read_bytes(), draft_size=2 * spec.resize), spec) for path in paths]).astype(np.float32)


def run_all(run, arrays: np.ndarray) -> np.ndarray:
    return np.concatenate([run(arrays[start : start + BATCH]) for start in range(0, len(arrays), BATCH)])


def measure_bundle(bundle_dir: Path, label: str, names: list[str], arrays: np.ndarray, truth: np.ndarray, data_dir: Path) -> list[dict]:
    from classifier.backends import load_backend
    from classifier.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    reference_backend = load_backend(bundle, "torch", "cpu", "fp32")
    reference = run_all(reference_backend.logits, arrays)
    reference_backend.close()
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = float(np.median(top2[:, 1] - top2[:, 0]))
    reference_top1 = reference.argmax(axis=1)

    onnx_bundle = None
    onnx_int8 = None
    if any(name.startswith("onnx") or name == "torchscript-int8" for name in names):
        onnx_bundle = Bundle.load(bundle_with_onnx(bundle_dir, data_dir))
        if "onnx-int8" in names:
            onnx_int8 = onnx_int8_path(onnx_bundle.path)

    rows = [{
        "model": label, "variant": "torch-fp32", "note": "reference", "agreement": 1.0, "disagreements": 0,
        "max_abs_diff": 0.0, "mean_abs_diff": 0.0, "accuracy": float(np.mean(reference_top1 == truth)), "median_margin": margin,
    }]
    for variant in build_variants(bundle, onnx_bundle, names, onnx_int8):
        logits = run_all(variant.run, arrays)
        top1 = logits.argmax(axis=1)
        difference = np.abs(logits - reference)
        rows.append({
            "model": label, "variant": variant.name, "note": variant.note,
            "agreement": float(np.mean(top1 == reference_top1)),
            "disagreements": int(np.sum(top1 != reference_top1)),
            "max_abs_diff": float(difference.max()),
            "mean_abs_diff": float(difference.mean()),
            "accuracy": float(np.mean(top1 == truth)),
            "median_margin": margin,
        })
        logger.info("%s", rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated variants compared with torch-fp32, from: {', '.join(VARIANT_NAMES)}")
    parser.add_argument("--no-random", action="store_true", help="measure only the given or trained bundle, not a random-init one too")
    args = parser.parse_args(argv)
    configure_logging()
    names = [name.strip() for name in args.variants.split(",") if name.strip()]

    from classifier.bundle import Bundle

    main_dir, main_note = resolve_bundle(args.model)
    bundles = [(main_dir, "trained" if "trained with" in main_note else "random-init", main_note)]
    if not args.no_random:
        random_dir, random_note = common_random_bundle()
        if random_dir != main_dir:
            bundles.append((random_dir, "random-init", random_note))
        active_dir, active_note = active_random_bundle()
        bundles.append((active_dir, "random-init, active blocks", active_note))
    photos = val_photos(args.data, 16 if args.quick else None)
    class_ids = Bundle.load(bundles[0][0]).labels.class_ids
    truth = np.array([class_ids.index(path.parent.name) if path.parent.name in class_ids else -1 for path in photos])
    arrays = load_arrays(photos, Bundle.load(bundles[0][0]).preprocessing)

    report = Report("agreement", "5. Top-1 agreement with fp32 torch on the flowers5 val photos", quick=args.quick)
    report.begin()
    rows = []
    for bundle_dir, label, _ in bundles:
        rows += measure_bundle(bundle_dir, label, names, arrays, truth, args.data)
    report.end()

    report.add("Models: " + "; ".join(f"{label}: {note}" for _, label, note in bundles) + ".")
    report.add(
        f"{len(photos)} val photos, decoded and preprocessed once as the service does. Agreement is the fraction whose "
        "top-1 class equals that of torch fp32 on the same bundle; logit differences are absolute, in logit units. "
        "Accuracy is against the photos' folders. The median top-2 margin is the reference's median gap between its "
        "two largest logits: the smaller it is, the more easily rounding flips the top-1 class."
    )
    report.add(markdown_table(
        ["model", "variant", "configuration", "top-1 agreement", "disagreements", "max logit diff", "mean logit diff", "accuracy", "median top-2 margin"],
        [[row["model"], row["variant"], row["note"], f"{row['agreement']:.3f}", row["disagreements"], f"{row['max_abs_diff']:.4f}",
          f"{row['mean_abs_diff']:.4f}", f"{row['accuracy']:.3f}", f"{row['median_margin']:.4f}"] for row in rows],
    ))
    report.data = {"photos": len(photos), "rows": rows}
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
