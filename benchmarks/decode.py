"""Decoding large photos: JPEG draft mode against a full decode, in time and in the prediction.

    .venv/bin/python -m benchmarks.decode [--photos 20]

Phone-sized JPEGs are made from flowers5 val photos: center-cropped to 4:3
and upscaled (bicubic) to 4000 x 3000 and 2000 x 1500. Gaussian grain (sigma
4 gray levels) gives them fine detail like a camera photo, and they are saved
at quality 90. Each is decoded and preprocessed to the 3 x 224 x 224
array both ways; the arrays go through the fp32 torch model.
"""

from __future__ import annotations

import argparse
import io
import logging
import time

import numpy as np
from PIL import Image

from benchmarks.common import Report, add_common_arguments, configure_logging, markdown_table, resolve_bundle, val_photos, wait_for_quiet

logger = logging.getLogger(__name__)

SIZES = ((4000, 3000), (2000, 1500))
GRAIN_SIGMA = 4.0
REPEATS = 3


def phone_jpeg(source: bytes, size: tuple[int, int], seed: int) -> bytes:
    """Return `source` cropped to the aspect of `size`, upscaled to it, with grain, as a quality-90 JPEG."""
    image = Image.open(io.BytesIO(source)).convert("RGB")
    width, height = image.size
    target_ratio = size[0] / size[1]
    if width / height > target_ratio:
        crop_width = round(height * target_ratio)
        box = ((width - crop_width) // 2, 0, (width + crop_width) // 2, height)
    else:
        crop_height = round(width / target_ratio)
        box = (0, (height - crop_height) // 2, width, (height + crop_height) // 2)
    large = np.asarray(image.crop(box).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    large += np.random.default_rng(seed).normal(0.0, GRAIN_SIGMA, large.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(large, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def best_time(function, repeats: int = REPEATS):
    best = float("inf")
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--photos", type=int, default=20, help="val photos turned into large JPEGs per size (default: 20)")
    args = parser.parse_args(argv)
    configure_logging()
    if args.quick:
        args.photos = 2

    from classifier.backends import load_backend
    from classifier.bundle import Bundle
    from classifier.decode import decode_image
    from classifier.preprocess import to_array

    bundle_dir, bundle_note = resolve_bundle(args.model)
    bundle = Bundle.load(bundle_dir)
    spec = bundle.preprocessing
    backend = load_backend(bundle, "torch", "cpu", "fp32")
    backend.warmup()
    sources = [path.read_bytes() for path in val_photos(args.data, args.photos)]
    photos = {size: [phone_jpeg(data, size, seed) for seed, data in enumerate(sources)] for size in SIZES}

    if args.wait_quiet:
        wait_for_quiet(max_wait_s=args.wait_quiet * 60)
    report = Report("decode", "Decoding large photos: JPEG draft mode", quick=args.quick)
    report.begin()
    rows = []
    results = []
    for size, jpegs in photos.items():
        full_times, draft_times, tensor_diffs, logit_diffs, same_top1 = [], [], [], [], 0
        for data in jpegs:
            full_s, full = best_time(lambda data=data: to_array(decode_image(data, draft_size=None), spec))
            draft_s, drafted = best_time(lambda data=data: to_array(decode_image(data, draft_size=2 * spec.resize), spec))
            full_logits, draft_logits = backend.logits(np.stack([full, drafted]))
            full_times.append(full_s)
            draft_times.append(draft_s)
            tensor_diffs.append(float(np.mean(np.abs(full - drafted))))
            logit_diffs.append(float(np.max(np.abs(full_logits - draft_logits))))
            same_top1 += int(full_logits.argmax() == draft_logits.argmax())
        result = {
            "size": f"{size[0]}x{size[1]}", "photos": len(jpegs), "mean_bytes": float(np.mean([len(data) for data in jpegs])),
            "full_ms": float(np.median(full_times) * 1000), "draft_ms": float(np.median(draft_times) * 1000),
            "mean_abs_tensor_diff": float(np.mean(tensor_diffs)), "max_abs_logit_diff": float(np.max(logit_diffs)),
            "same_top1": same_top1,
        }
        results.append(result)
        rows.append([
            result["size"], len(jpegs), f"{result['mean_bytes'] / 1e6:.1f}", f"{result['full_ms']:.0f}", f"{result['draft_ms']:.0f}",
            f"{result['full_ms'] / result['draft_ms']:.1f}x", f"{result['mean_abs_tensor_diff']:.4f}",
            f"{result['max_abs_logit_diff']:.4f}", f"{same_top1}/{len(jpegs)}",
        ])
    report.end()

    report.add(
        f"Model: {bundle_note}, torch fp32. Each large JPEG is a flowers5 val photo cropped to 4:3, upscaled (bicubic), "
        f"with Gaussian grain (sigma {GRAIN_SIGMA:g}), saved at quality 90. Times are the median over the photos of the "
        f"best of {REPEATS} runs of decode + preprocess to 3 x 224 x 224 on one thread. Draft mode is what the service "
        f"uses: the JPEG decoder scales by 1/2, 1/4 or 1/8 while the short side stays at least {2 * spec.resize} pixels. "
        "The tensor difference is the mean absolute difference of the normalized arrays."
    )
    report.add(markdown_table(
        ["size", "photos", "mean MB", "full decode (ms)", "draft decode (ms)", "speed-up", "mean tensor diff",
         "max logit diff", "same top-1"],
        rows))
    report.data = {"bundle": bundle_note, "sizes": results}
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
