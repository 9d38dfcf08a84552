"""Table 3: the bot end to end on the Telegram emulator, under a burst of photos.

    .venv/bin/python -m benchmarks.bot_burst [--photos 32] [--backends torch,onnx]

`python -m bot` runs as a child process with its default serving settings
(BATCH_MAX_SIZE 16, BATCH_MAX_WAIT_MS 5, INFERENCE_WORKERS 1) against the
emulator. N people each send one flowers5 val photo at the same moment, and
one more person sends /start right behind them. Times run from the moment
the emulator queues an update to the moment the bot's answer reaches it.
A warm-up burst of 4 photos runs first and is not counted.
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
    percentile,
    resolve_bundle,
    val_photos,
    wait_for_quiet,
)
from tests.emulator import TelegramEmulator

logger = logging.getLogger(__name__)

WARMUP_PHOTOS = 4


async def measure(configs: list[tuple[str, str, object]], photos: list[bytes]) -> list[dict]:
    results = []
    for backend, precision, model_path in configs:
        async with TelegramEmulator() as emulator:
            bot = BotProcess(emulator, model_path, backend=backend, precision=precision)
            try:
                await bot.start()
                await photo_burst(emulator, photos[:WARMUP_PHOTOS], first_user_id=10_000)
                burst = await photo_burst(emulator, photos, first_user_id=20_000)
            finally:
                await bot.stop()
        result = {
            "backend": f"{backend}/{precision}",
            "photos": len(photos),
            "p50_s": percentile(burst.photo_seconds, 50),
            "p95_s": percentile(burst.photo_seconds, 95),
            "max_s": max(burst.photo_seconds),
            "burst_s": burst.burst_seconds,
            "start_s": burst.start_seconds,
            "photos_before_start": burst.photos_answered_before_start,
            "start_before_burst_end": burst.start_seconds < burst.burst_seconds,
            "startup_s": bot.started_s,
            "photo_seconds": burst.photo_seconds,
        }
        logger.info("%s", {key: value for key, value in result.items() if key != "photo_seconds"})
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--photos", type=int, default=32, help="photos in the burst, one person each (default: 32)")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated BACKEND values to run, each with PRECISION=auto (default: torch,onnx)")
    args = parser.parse_args(argv)
    configure_logging()
    if args.quick:
        args.photos = 4

    bundle_dir, bundle_note = resolve_bundle(args.model)
    configs = []
    for backend in (name.strip() for name in args.backends.split(",") if name.strip()):
        configs.append((backend, "auto", bundle_with_onnx(bundle_dir, args.data) if backend == "onnx" else bundle_dir))
    photos = [path.read_bytes() for path in val_photos(args.data, args.photos)]

    if args.wait_quiet:
        wait_for_quiet(max_wait_s=args.wait_quiet * 60)
    report = Report("bot_burst", f"3. The bot end to end: a burst of {args.photos} photos and a /start", quick=args.quick)
    report.begin()
    results = asyncio.run(measure(configs, photos))
    report.end()

    report.add(
        f"Model: {bundle_note}. `python -m bot` in its own process on the emulator, default serving settings "
        "(BATCH_MAX_SIZE 16, BATCH_MAX_WAIT_MS 5, INFERENCE_WORKERS 1, PRECISION auto). "
        f"{args.photos} people each send one flowers5 val photo at once, then one more sends /start, queued behind "
        "every photo. Times run from the update being queued at the emulator to the bot's answer arriving there. "
        "The burst ends when the last photo is answered. python-telegram-bot's AIORateLimiter keeps the bot under "
        "Telegram's 30 requests per second, and each photo costs a sendChatAction and a sendMessage."
    )
    report.add(markdown_table(
        ["backend", "photos", "p50 (s)", "p95 (s)", "last photo = burst end (s)", "/start answered after (s)",
         "photos answered before /start", "/start before burst end"],
        [[result["backend"], result["photos"], f"{result['p50_s']:.2f}", f"{result['p95_s']:.2f}", f"{result['burst_s']:.2f}",
          f"{result['start_s']:.2f}", result["photos_before_start"], "yes" if result["start_before_burst_end"] else "NO"]
         for result in results],
    ))
    report.data = {"bundle": bundle_note, "results": results}
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
