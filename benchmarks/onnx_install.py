"""The ONNX serving install: a clean virtual environment with `pip install .[onnx]`, without PyTorch.

    .venv/bin/python -m benchmarks.onnx_install [--keep]

Creates a fresh venv (no system site-packages) in a temporary folder, installs
this checkout with the `onnx` extra through pip's configured indexes, and
records the install time, the venv's size on disk and the packages it got.
It then proves that the install serves: with the venv's Python it imports
the bot, loads the ONNX export of the model bundle through
`ClassifierService.from_path(..., backend_kind="onnx")` and classifies a
flowers5 val photo, and checks that `torch` was never imported. The venv is
deleted afterwards unless `--keep` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, Report, add_common_arguments, bundle_with_onnx, configure_logging, markdown_table, resolve_bundle, val_photos

logger = logging.getLogger(__name__)

SERVE_CHECK = """
import asyncio, json, sys, time
started = time.perf_counter()
import bot.app, bot.runtime, bot.__main__
from classifier.service import ClassifierService

async def main(model, photo):
    service = ClassifierService.from_path(model, backend_kind="onnx", device="cpu")
    try:
        prediction = await service.classify(open(photo, "rb").read(), k=3)
    finally:
        await service.close()
    return prediction

prediction = asyncio.run(main(sys.argv[1], sys.argv[2]))
print(json.dumps({
    "top": [[candidate.class_id, round(candidate.probability, 4)] for candidate in prediction.top],
    "torch_imported": "torch" in sys.modules,
    "seconds": round(time.perf_counter() - started, 2),
}))
"""


def directory_size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink())


def run(command: list[str], **options) -> subprocess.CompletedProcess:
    logger.info("running %s", " ".join(command))
    return subprocess.run(command, check=True, capture_output=True, text=True, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--keep", action="store_true", help="keep the virtual environment and print its path")
    args = parser.parse_args(argv)
    configure_logging()

    bundle_dir, bundle_note = resolve_bundle(args.model)
    onnx_dir = bundle_with_onnx(bundle_dir, args.data)
    photo = val_photos(args.data, 1)[0]

    report = Report("onnx_install", "ONNX serving install without PyTorch", quick=args.quick)
    report.begin()
    workdir = Path(tempfile.mkdtemp(prefix="flowerbot-onnx-venv-"))
    venv = workdir / "venv"
    python = venv / "bin" / "python"
    try:
        run([sys.executable, "-m", "venv", str(venv)])
        # A copy of the checkout, so that the build writes no build/ or egg-info into the working tree.
        source = workdir / "src"
        shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".venv", "build", "data", "*.egg-info", "__pycache__", ".git", "runs", "models"))
        started = time.perf_counter()
        run([str(python), "-m", "pip", "install", "--quiet", f"{source}[onnx]"])
        install_s = time.perf_counter() - started
        packages = json.loads(run([str(python), "-m", "pip", "list", "--format", "json"]).stdout)
        names = {package["name"].lower(): package["version"] for package in packages}
        size = directory_size(venv)
        largest = sorted(
            ((directory_size(path), path.name) for path in (venv / "lib").glob("python*/site-packages/*") if path.is_dir()),
            reverse=True,
        )[:6]
        # Run from an empty folder so that the checkout on sys.path cannot stand in for the installed package.
        check = run([str(python), "-c", SERVE_CHECK, str(onnx_dir), str(photo)], cwd=workdir)
        served = json.loads(check.stdout.strip().splitlines()[-1])
    finally:
        if args.keep:
            print(f"kept the virtual environment at {venv}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.end()

    has_torch = any(name in names for name in ("torch", "torchvision"))
    # For scale: what the torch extra would add, measured in the environment running this script.
    torch_bytes = sum(
        directory_size(path) for path in Path(sys.prefix).glob("lib/python*/site-packages/*")
        if path.is_dir() and path.name.split("-")[0] in ("torch", "torchvision", "nvidia", "triton")
    )
    report.add(
        f"A fresh venv (`python -m venv`, no system site-packages), then `pip install .[onnx]` from pip's configured "
        f"indexes (here a local wheel mirror, so no download time is included). Model: {bundle_note}, its ONNX export."
    )
    report.add(markdown_table(
        ["measure", "value"],
        [
            ["install time (s)", f"{install_s:.0f}"],
            ["venv size on disk (MiB)", f"{size / 2**20:.0f}"],
            ["packages installed", len(names)],
            ["torch or torchvision installed", "yes" if has_torch else "no"],
            ["for scale: torch, torchvision, nvidia and triton in the development venv (MiB)", f"{torch_bytes / 2**20:.0f}"],
            ["onnxruntime", names.get("onnxruntime", "missing")],
            ["largest packages (MiB)", ", ".join(f"{name} {bytes_ / 2**20:.0f}" for bytes_, name in largest)],
            ["bot imports and ClassifierService (onnx) answers", " / ".join(f"{class_id} {probability:.2f}" for class_id, probability in served["top"])],
            ["torch imported while serving", "yes" if served["torch_imported"] else "no"],
        ],
    ))
    report.data = {"install_s": install_s, "venv_bytes": size, "torch_bytes_in_dev_venv": torch_bytes, "packages": names, "largest": largest, "served": served, "bundle": bundle_note}
    report.save()
    return 0 if not has_torch and not served["torch_imported"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
