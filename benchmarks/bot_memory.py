"""Table 4: peak memory of the bot process for each backend.

    .venv/bin/python -m benchmarks.bot_memory [--photos 32]

For each configuration, `python -m bot` starts on the Telegram emulator, a
burst of photos (one person each) is answered, and the kernel's counters of
the bot process are read from /proc/<pid>/status: VmRSS after start-up and
VmHWM (the peak resident set) after the burst. The last row runs the onnx
backend with torch and torchvision made unimportable, as an install of
`.[onnx]` without the torch extra runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from benchmarks.bot_process import BotProcess, photo_burst
from benchmarks.common import (
    Report,
    add_common_arguments,
    bundle_with_onnx,
    configure_logging,
    markdown_table,
    resolve_bundle,
    val_photos,
    wait_for_quiet,
)
from tests.emulator import TelegramEmulator

logger = logging.getLogger(__name__)

# (BACKEND, PRECISION, torch blocked)
CONFIGS = (
    ("torch", "fp32", False),
    ("torch", "auto", False),
    ("onnx", "auto", False),
    ("onnx", "auto", True),
)


async def measure(bundle_dir, onnx_dir, photos: list[bytes]) -> list[dict]:
    results = []
    for backend, precision, block_torch in CONFIGS:
        async with TelegramEmulator() as emulator:
            bot = BotProcess(emulator, onnx_dir if backend == "onnx" else bundle_dir, backend=backend, precision=precision,
                             block_torch=block_torch)
            try:
                await bot.start()
                idle_kib = bot.status_kib("VmRSS")
                burst = await photo_burst(emulator, photos, first_user_id=30_000)
                peak_kib = bot.status_kib("VmHWM")
                torch_loaded = bot.loaded_torch()
            finally:
                await bot.stop()
        result = {
            "backend": f"{backend}/{precision}",
            "torch_blocked": block_torch,
            "torch_loaded": torch_loaded,
            "rss_after_start_mib": idle_kib / 1024,
            "peak_rss_mib": peak_kib / 1024,
            "photos": len(photos),
            "burst_s": burst.burst_seconds,
        }
        logger.info("%s", result)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--photos", type=int, default=32, help="photos in the burst, one person each (default: 32)")
    args = parser.parse_args(argv)
    configure_logging()
    if args.quick:
        args.photos = 2

    bundle_dir, bundle_note = resolve_bundle(args.model)
    onnx_dir = bundle_with_onnx(bundle_dir, args.data)
    photos = [path.read_bytes() for path in val_photos(args.data, args.photos)]

    if args.wait_quiet:
        wait_for_quiet(max_wait_s=args.wait_quiet * 60)
    report = Report("bot_memory", "4. Peak memory of the bot process for each backend", quick=args.quick)
    report.begin()
    results = asyncio.run(measure(bundle_dir, onnx_dir, photos))
    report.end()

    report.add(
        f"Model: {bundle_note}. `python -m bot` on the emulator with the default serving settings; "
        f"a burst of {args.photos} flowers5 val photos, one person each. RSS after start-up is VmRSS once the bot polls "
        "(model loaded and warmed up); the peak is VmHWM after the burst. \"torch blocked\" runs the bot with an import "
        "hook that makes torch and torchvision unimportable."
    )
    report.add(markdown_table(
        ["backend", "torch blocked", "libtorch loaded", "RSS after start-up (MiB)", "peak RSS (MiB)", "burst (s)"],
        [[result["backend"], "yes" if result["torch_blocked"] else "no", "yes" if result["torch_loaded"] else "no",
          f"{result['rss_after_start_mib']:.0f}", f"{result['peak_rss_mib']:.0f}", f"{result['burst_s']:.1f}"] for result in results],
    ))
    report.data = {"bundle": bundle_note, "results": results}
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
