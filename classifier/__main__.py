"""Command line for model bundles.

    python -m classifier new-bundle --classes PATH --out DIR [--seed N]
    python -m classifier info DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from classifier.bundle import Bundle, BundleError, new_random_bundle
from classifier.labels import LabelSet, LabelSetError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier", description="Create and inspect model bundles.")
    commands = parser.add_subparsers(dest="command", required=True)

    new_bundle = commands.add_parser(
        "new-bundle",
        help="write a bundle with random-init weights, to try the bot before any training",
        description="Write a model bundle with seeded random-init ConvNeXt-Tiny weights for the given classes.",
    )
    new_bundle.add_argument(
        "--classes",
        required=True,
        type=Path,
        help="class names: a text file with one name per line, a JSON label file, "
        "or an ImageFolder directory whose subfolders are the classes (its train/ subfolder is used when present); "
        "'oxford102' selects the built-in 102 Oxford Flowers names",
    )
    new_bundle.add_argument("--out", required=True, type=Path, help="bundle directory to write; an existing bundle there is replaced")
    new_bundle.add_argument("--seed", type=int, default=0, help="random seed for the weights (default: 0)")

    info = commands.add_parser("info", help="print a bundle's metadata as JSON")
    info.add_argument("bundle", type=Path, help="bundle directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "new-bundle":
        try:
            if str(args.classes) == "oxford102":
                labels = LabelSet.oxford102()
            else:
                labels = LabelSet.from_path(args.classes)
            bundle = new_random_bundle(labels, args.out, seed=args.seed)
        except (LabelSetError, BundleError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote bundle {bundle.version} with {bundle.num_classes} classes to {args.out}")
        return 0

    if args.command == "info":
        try:
            bundle = Bundle.load(args.bundle)
        except BundleError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(bundle.to_dict(), ensure_ascii=False, indent=2))
        return 0

    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
