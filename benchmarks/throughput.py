"""Table 2: throughput of ClassifierService with 1, 8 and 32 concurrent requests, with and without micro-batching.

    .venv/bin/python -m benchmarks.throughput [--backends torch,onnx] [--requests 64]

Each cell is a closed loop: C coroutines each send a flowers5 val photo (JPEG
bytes) to `ClassifierService.classify`, and send the next one as soon as its
answer arrives, until `--requests` answers have come back. That includes
decoding and preprocessing in the service's thread pool, as the bot sees it.
"Off" is a batcher with max_batch 1; "on" uses the bot's defaults
(BATCH_MAX_SIZE 16, BATCH_MAX_WAIT_MS 5).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time

from benchmarks.common import (
    Report,
    add_common_arguments,
    bundle_with_onnx,
    configure_logging,
    markdown_table,
    percentile,
    resolve_bundle,
    val_photos,
    wait_for_quiet,
)

logger = logging.getLogger(__name__)

CONCURRENCY = (1, 8, 32)
BATCHED = {"max_batch": 16, "max_wait_s": 0.005}
UNBATCHED = {"max_batch": 1, "max_wait_s": 0.0}


async def closed_loop(service, photos: list[bytes], concurrency: int, total: int) -> dict:
    """Run `total` classify calls with `concurrency` callers; return wall time and per-request latencies."""
    counter = itertools.count()
    latencies: list[float] = []
    batches_before = service.batcher.batch_count
    requests_before = service.batcher.request_count

    async def caller() -> None:
        while (index := next(counter)) < total:
            started = time.perf_counter()
            await service.classify(photos[index % len(photos)])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    batches = service.batcher.batch_count - batches_before
    requests = service.batcher.request_count - requests_before
    return {
        "wall_s": wall,
        "images_per_s": total / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "mean_batch": requests / batches if batches else 0.0,
    }


async def measure(args, bundle_dirs: dict[str, object], photos: list[bytes]) -> list[dict]:
    from classifier.service import ClassifierService

    results = []
    for backend_kind in bundle_dirs:
        for label, batching in (("off", UNBATCHED), ("on", BATCHED)):
            service = await asyncio.to_thread(
                ClassifierService.from_path, bundle_dirs[backend_kind], backend_kind=backend_kind, device="cpu", **batching
            )
            try:
                for concurrency in CONCURRENCY:
                    # Warm the batch sizes this cell will use before timing it.
                    await closed_loop(service, photos, concurrency, concurrency)
                    cell = await closed_loop(service, photos, concurrency, args.requests)
                    cell.update(backend=f"{backend_kind}/{service.backend.precision}", batching=label, concurrency=concurrency,
                                requests=args.requests, **batching)
                    logger.info("%s", cell)
                    results.append(cell)
            finally:
                await service.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--backends", default="torch", help="comma-separated backends: torch (PRECISION=auto), onnx (default: torch)")
    parser.add_argument("--requests", type=int, default=64, help="answers per cell (default: 64)")
    args = parser.parse_args(argv)
    configure_logging()
    if args.quick:
        args.requests = 4

    bundle_dir, bundle_note = resolve_bundle(args.model)
    bundle_dirs = {}
    for kind in (name.strip() for name in args.backends.split(",") if name.strip()):
        bundle_dirs[kind] = bundle_with_onnx(bundle_dir, args.data) if kind == "onnx" else bundle_dir
    photos = [path.read_bytes() for path in val_photos(args.data, 64)]

    if args.wait_quiet:
        wait_for_quiet(max_wait_s=args.wait_quiet * 60)
    report = Report("throughput", "2. Throughput with 1, 8 and 32 concurrent requests", quick=args.quick)
    report.begin()
    results = asyncio.run(measure(args, bundle_dirs, photos))
    report.end()

    rows = []
    for result in results:
        baseline = next(
            other for other in results
            if other["backend"] == result["backend"] and other["concurrency"] == result["concurrency"] and other["batching"] == "off"
        )
        rows.append([
            result["backend"],
            result["concurrency"],
            result["batching"],
            f"{result['images_per_s']:.1f}",
            f"{result['images_per_s'] / baseline['images_per_s']:.2f}",
            f"{result['mean_batch']:.1f}",
            f"{result['p50_ms']:.0f}",
            f"{result['p95_ms']:.0f}",
        ])
    report.add(
        f"Model: {bundle_note}. {args.requests} answers per row from {len(photos)} flowers5 val photos (JPEG bytes, "
        "decoded and preprocessed by the service). Micro-batching off: max_batch 1; on: max_batch 16, max_wait 5 ms; "
        "one inference worker. Speed-up is over the row with micro-batching off at the same concurrency."
    )
    report.add(markdown_table(
        ["backend", "concurrent requests", "micro-batching", "images/s", "speed-up", "mean batch", "p50 latency (ms)", "p95 latency (ms)"],
        rows))
    report.data = {"bundle": bundle_note, "cells": results}
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
