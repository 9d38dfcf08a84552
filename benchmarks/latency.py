"""Table 1: latency of each backend and precision next to a GEMM probe of the same machine.

    .venv/bin/python -m benchmarks.latency [--variants a,b,...] [--rounds 40]

Each variant runs one 224 x 224 image (batch 1) and a batch of 8, in
interleaved rounds (every variant once per round), with the thread count the
product uses (the CPUs this process may use). The GEMM probe, a square
`torch.matmul` in fp32 and in bf16 with the same thread count, takes part in
the same rounds, and its best round gives the peak. Achieved GFLOP/s is 8.9
GFLOP per image divided by the best time. The fraction divides that by the
GEMM peak of the variant's dtype.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from benchmarks.common import (
    CONVNEXT_TINY_GFLOP,
    Report,
    add_common_arguments,
    bundle_with_onnx,
    configure_logging,
    markdown_table,
    onnx_int8_path,
    resolve_bundle,
    time_interleaved,
    val_photos,
    wait_for_quiet,
)
from benchmarks.variants import VARIANT_NAMES, build_variants

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = (
    "torch-fp32",
    "torch-fp32-jit",
    "torch-bf16-autocast",
    "torch-bf16-precast",
    "torch-bf16-pure",
    "torch-bf16-mixed",
    "torch-bf16-precast-jit",
    "torch-bf16-pure-jit",
    "torch-bf16-mixed-inductor",
    "torch-auto",
    "onnx-fp32",
    "onnx-int8",
    "torchscript-int8",
)


def gemm_call(dtype_name: str, size: int, threads: int):
    """Return a call of a `size` x `size` x `size` torch.matmul in `dtype_name` (2 * size**3 FLOP)."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    return lambda: torch.matmul(a, b, out=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated variants to measure, from: {', '.join(VARIANT_NAMES)}")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timed rounds of batch 1 (default: 40)")
    parser.add_argument("--batch-rounds", type=int, default=12, help="interleaved timed rounds of the larger batch (default: 12)")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch size measured besides 1 (default: 8)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square GEMM probe (default: 2048)")
    args = parser.parse_args(argv)
    configure_logging()
    if args.quick:
        args.rounds, args.batch_rounds, args.gemm_size = 2, 2, 512

    from classifier.backends import available_cpus
    from classifier.bundle import Bundle
    from classifier.decode import decode_image
    from classifier.preprocess import to_array

    threads = available_cpus()
    bundle_dir, bundle_note = resolve_bundle(args.model)
    bundle = Bundle.load(bundle_dir)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    onnx_bundle = None
    onnx_int8 = None
    if any(name.startswith("onnx") or name == "torchscript-int8" for name in names):
        onnx_bundle = Bundle.load(bundle_with_onnx(bundle_dir, args.data))
        if "onnx-int8" in names:
            onnx_int8 = onnx_int8_path(onnx_bundle.path)
    variants = build_variants(bundle, onnx_bundle, names, onnx_int8)

    # Real photos, so that the numbers are those of real inputs (ReLU-free GELU makes inputs matter little).
    photos = val_photos(args.data, args.batch)
    batch = np.stack([to_array(decode_image(path.read_bytes()), bundle.preprocessing) for path in photos]).astype(np.float32)
    single = batch[:1]

    if args.wait_quiet:
        wait_for_quiet(max_wait_s=args.wait_quiet * 60)
    report = Report("latency", "1. Single-image latency of each backend and precision", quick=args.quick)
    report.begin()
    # The GEMM probe runs inside the same interleaved rounds as the model, so that a busy
    # spell on the shared CPUs lowers the peak and the model's speed alike.
    gemms = {f"gemm-{dtype}": gemm_call(dtype, args.gemm_size, threads) for dtype in ("fp32", "bf16")}
    single_calls = {**gemms, **{variant.name: (lambda v=variant: v.run(single)) for variant in variants}}
    batch_calls = {**gemms, **{variant.name: (lambda v=variant: v.run(batch)) for variant in variants}}
    single_timings = time_interleaved(single_calls, args.rounds)
    batch_timings = time_interleaved(batch_calls, args.batch_rounds)
    report.end()
    gemm_flop = 2 * args.gemm_size**3
    peaks = {dtype: gemm_flop / single_timings[f"gemm-{dtype}"].best / 1e9 for dtype in ("fp32", "bf16")}
    peaks_after = {dtype: gemm_flop / batch_timings[f"gemm-{dtype}"].best / 1e9 for dtype in ("fp32", "bf16")}

    rows = []
    results = []
    for variant in variants:
        one = single_timings[variant.name]
        many = batch_timings[variant.name]
        per_image = many.best / len(batch)
        gflops = CONVNEXT_TINY_GFLOP / one.best
        gflops_batch = CONVNEXT_TINY_GFLOP / per_image
        peak = max(peaks.get(variant.dtype, 0.0), peaks_after.get(variant.dtype, 0.0)) or None
        rows.append([
            variant.name,
            variant.note,
            f"{one.best * 1000:.1f}",
            f"{one.median * 1000:.1f}",
            f"{per_image * 1000:.1f}",
            f"{gflops:.0f}",
            f"{gflops_batch:.0f}",
            f"{gflops / peak:.2f}" if peak else "n/a",
            f"{gflops_batch / peak:.2f}" if peak else "n/a",
        ])
        results.append({
            "variant": variant.name, "note": variant.note, "dtype": variant.dtype, "setup_s": variant.setup_s,
            "batch1_ms": [seconds * 1000 for seconds in one.seconds],
            f"batch{len(batch)}_ms": [seconds * 1000 for seconds in many.seconds],
            "batch1_best_ms": one.best * 1000, "batch1_median_ms": one.median * 1000,
            "batched_per_image_best_ms": per_image * 1000, "gflops_batch1": gflops, "gflops_batched": gflops_batch,
            "peak_gflops": peak,
        })

    gemm_rows = [
        [dtype, f"{peaks[dtype]:.0f}", f"{peaks_after[dtype]:.0f}", f"{CONVNEXT_TINY_GFLOP / max(peaks[dtype], peaks_after[dtype]) * 1000:.1f}"]
        for dtype in ("fp32", "bf16")
    ]
    gemm_note = (
        f"GEMM probe: `torch.matmul` of two {args.gemm_size} x {args.gemm_size} matrices, timed once per round inside the "
        f"same interleaved rounds as the model; the best round gives the peak. The floor is {CONVNEXT_TINY_GFLOP} GFLOP at that peak."
    )
    report.add(
        f"Model: {bundle_note}. Threads: {threads} (torch intra-op, ONNX Runtime intra-op). "
        f"Times are the best and the median of {args.rounds} interleaved rounds for batch 1, and the best of "
        f"{args.batch_rounds} rounds for batch {len(batch)} divided by {len(batch)}. "
        f"GFLOP/s is {CONVNEXT_TINY_GFLOP} GFLOP per image over the best time; "
        "\"of peak\" divides it by the GEMM peak of the variant's dtype (int8 has no probe)."
    )
    report.add(gemm_note + "\n\n" + markdown_table(
        ["dtype", "GEMM GFLOP/s (batch 1 rounds)", f"GEMM GFLOP/s (batch {len(batch)} rounds)", "floor for one image (ms)"], gemm_rows))
    report.add(markdown_table(
        ["variant", "configuration", "batch 1 best (ms)", "batch 1 median (ms)", f"batch {len(batch)} per image (ms)",
         "GFLOP/s batch 1", f"GFLOP/s batch {len(batch)}", "of peak, batch 1", f"of peak, batch {len(batch)}"],
        rows))
    report.data = {"bundle": bundle_note, "threads": threads, "gemm_gflops_batch1_rounds": peaks, "gemm_gflops_batch_rounds": peaks_after,
                   "gemm_size": args.gemm_size, "variants": results}
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
