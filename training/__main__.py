"""Command line: `python -m training train|evaluate|export|gradcam`.

Examples::

    python -m training train --data data/flowers5 --weights none --out build/flowers5-none
    python -m training train --data flowers102 --download --weights imagenet --out build/oxford102
    torchrun --nproc_per_node 2 -m training train --data DIR --weights none --out build/ddp
    python -m training evaluate --model build/flowers5-none --data data/flowers5
    python -m training export --model build/flowers5-none
    python -m training gradcam --model build/flowers5-none photo.jpg --out cam.png

Logs go to stderr. With `train --progress-json`, stdout carries only JSON
progress lines (see training.progress).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.recipe import recipe_fields

logger = logging.getLogger("training")


def _add_data_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--data",
        required=required,
        metavar="DIR|flowers102",
        help="an ImageFolder directory (train/ and val/ class subfolders, or class subfolders that are split "
        "by --val-fraction), or 'flowers102' for Oxford 102 through torchvision"
        + ("" if required else "; default: the data recorded in the bundle"),
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        default=None,
        help="flowers102: the directory that contains flowers-102/, or receives it with --download (default: ./data)",
    )
    parser.add_argument("--download", action="store_true", help="flowers102: download the data set into --data-root if it is missing")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of each class held out for validation when DIR has no val/ subfolder (default: 0.2)",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of that per-class split (default: 0)")
    parser.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        metavar="N",
        help="keep only the first N images of each class in each split, for quick runs (default: all)",
    )


def _add_strict_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict-data",
        action="store_true",
        help="stop at the first image file that cannot be read or decoded (default: check every file first, "
        "skip the unreadable ones with a warning and count them in the output)",
    )


def _data_spec(args: argparse.Namespace):
    from training.data import DataSpec

    if args.data is None:
        return None
    return DataSpec(
        source=args.data,
        root=args.data_root,
        download=args.download,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        limit_per_class=args.limit_per_class,
    )


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the tqdm progress bars (they show only when stderr is a terminal)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level on stderr (default: INFO)")


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "recipe", "each flag overrides the config file, which overrides the default shown; all values are saved in the bundle"
    )
    for field in recipe_fields():
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if isinstance(field.default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(
                flag,
                dest=field.name,
                type=type(field.default),
                default=None,
                choices=field.metadata.get("choices"),
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate, export and explain flowerbot models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write a bundle", description="Train a model and write a bundle.")
    _add_data_options(train, required=True)
    train.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="starting weights: 'imagenet' (torchvision IMAGENET1K_V1 from the torch hub cache, downloaded when missing), "
        "'none' (random init), a torchvision 1000-class state dict file, or a bundle directory (default: imagenet)",
    )
    train.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write; while training it also contains the resumable checkpoint")
    train.add_argument("--config", metavar="FILE", help="JSON or YAML file of recipe values (a bundle.json works too)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt, written after every epoch")
    train.add_argument(
        "--extra-examples",
        metavar="FILE",
        help='JSON list or JSON-lines file of {"path": ..., "label": class id or index} photos added to the training split',
    )
    train.add_argument(
        "--non-flower",
        metavar="PATH",
        action="append",
        default=[],
        help="image file or directory of photos that are not flowers; they set the OOD threshold (repeatable)",
    )
    train.add_argument("--progress-json", action="store_true", help="print progress events as JSON lines on stdout (logs stay on stderr)")
    _add_strict_data_option(train)
    _add_common_options(train)
    _add_recipe_options(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure top-1/top-5 and per-class accuracy, write a confusion matrix PNG and a JSON report",
        description="Evaluate a bundle on a data split or a list of labelled photos.",
    )
    evaluate.add_argument("--model", required=True, metavar="DIR", help="bundle directory")
    _add_data_options(evaluate, required=False)
    evaluate.add_argument("--split", default="val", choices=("train", "val", "test"), help="split to evaluate (default: val)")
    evaluate.add_argument("--examples", metavar="FILE", help="evaluate these labelled photos (same format as train --extra-examples) instead of --data")
    evaluate.add_argument("--out", metavar="DIR", help="directory for report.json and confusion.png (default: MODEL-eval-SPLIT beside the bundle)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    evaluate.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="autocast precision (default: auto)")
    _add_strict_data_option(evaluate)
    _add_common_options(evaluate)

    export = commands.add_parser(
        "export",
        help="write ONNX, TorchScript and int8 exports beside model.pt and record them in bundle.json",
        description="Export a bundle and check each export against the fp32 model on sample images. "
        "Exits with status 3 when an export is marked unfit for serving.",
    )
    export.add_argument("--model", required=True, metavar="DIR", help="bundle directory")
    export.add_argument(
        "--formats",
        default="onnx,torchscript,int8",
        help="comma-separated exports to write: onnx, torchscript, int8 (default: onnx,torchscript,int8)",
    )
    export.add_argument("--images", metavar="DIR", help="sample images for the check (default: the val split of --data, else of the bundle's data, else synthetic images)")
    _add_data_options(export, required=False)
    export.add_argument("--samples", type=int, default=32, help="maximum number of sample images for the check (default: 32)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset version: 18 or later uses the dynamo exporter, 17 the legacy TorchScript-based one (default: 18)")
    export.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="top-1 agreement with the fp32 model (a fraction) below which an export is marked unfit for serving (default: 0.99)",
    )
    _add_common_options(export)

    gradcam = commands.add_parser(
        "gradcam",
        help="write a Grad-CAM overlay PNG for the predicted class",
        description="Explain one prediction with Grad-CAM on the last ConvNeXt stage.",
    )
    gradcam.add_argument("--model", required=True, metavar="DIR", help="bundle directory")
    gradcam.add_argument("image", metavar="IMAGE", help="photo to explain")
    gradcam.add_argument("--out", metavar="PNG", help="output PNG (default: IMAGE's name with .gradcam.png, in the current directory)")
    gradcam.add_argument("--class-index", type=int, default=None, help="explain this class index instead of the predicted class")
    gradcam.add_argument("--alpha", type=float, default=0.45, help="heat map opacity, 0 to 1 (default: 0.45)")
    _add_common_options(gradcam)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The ONNX exporter's graph passes log one INFO line per rewritten initializer.
    for noisy in ("onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def _run_train(args: argparse.Namespace) -> int:
    from training.data import list_images, read_examples_file
    from training.distributed import DistributedContext, cleanup
    from training.progress import json_lines_callback
    from training.recipe import resolve_recipe
    from training.train import train

    overrides = {field.name: getattr(args, field.name) for field in recipe_fields()}
    recipe = resolve_recipe(args.config, overrides)
    extra = read_examples_file(args.extra_examples) if args.extra_examples else None
    non_flowers = [image for path in args.non_flower for image in list_images(path)]
    progress = json_lines_callback() if args.progress_json else None
    try:
        train(
            recipe,
            _data_spec(args),
            args.weights,
            args.out,
            progress=progress,
            extra_examples=extra,
            non_flower_examples=non_flowers,
            resume=args.resume,
            device=args.device,
            show_progress_bar=not args.no_progress_bar,
            strict_data=args.strict_data,
        )
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            cleanup(DistributedContext(world_size=dist.get_world_size()))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from training.data import read_examples_file
    from training.evaluate import evaluate_bundle

    report = evaluate_bundle(
        args.model,
        _data_spec(args),
        split=args.split,
        examples=read_examples_file(args.examples) if args.examples else None,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        show_progress_bar=not args.no_progress_bar,
        limit_per_class=args.limit_per_class,
        strict_data=args.strict_data,
    )
    summary = ("top1", "top5", "samples", "skipped_images", "report", "confusion_png")
    print(json.dumps({key: report[key] for key in summary}, indent=2))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from training.engine import resolve_device
    from training.export import export_bundle

    # NOTE: export_bundle traces and checks every export on the CPU. --device is
    # only validated here, so that an unusable value fails as in the other commands.
    resolve_device(args.device)
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    exports = export_bundle(
        args.model,
        formats=formats,
        images=args.images,
        data=_data_spec(args),
        samples=args.samples,
        opset=args.opset,
        min_agreement=args.min_agreement,
    )
    print(json.dumps(exports, indent=2))
    return 0 if all(entry.get("fit_for_serving") for entry in exports.values()) else 3


def _run_gradcam(args: argparse.Namespace) -> int:
    from training.gradcam import write_gradcam

    out = Path(args.out) if args.out else Path(Path(args.image).stem + ".gradcam.png")
    result = write_gradcam(args.model, args.image, out, class_index=args.class_index, alpha=args.alpha, device=args.device)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; return 0 on success, 1 when it fails, 2 on invalid input, 3 for an unfit export."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    from classifier.bundle import BundleError
    from training.data import ImageDataError
    from training.engine import TrainingCancelled
    from training.errors import InputError

    runners = {"train": _run_train, "evaluate": _run_evaluate, "export": _run_export, "gradcam": _run_gradcam}
    try:
        return runners[args.command](args)
    except Exception as error:
        # Bad input gets a one-line message; anything else also gets its traceback.
        invalid_input = isinstance(error, (InputError, ImageDataError))
        expected = invalid_input or isinstance(error, (ValueError, FileNotFoundError, BundleError, TrainingCancelled))
        logger.error("%s failed: %s", args.command, error, exc_info=not expected or args.log_level == "DEBUG")
        if getattr(args, "progress_json", False):
            from training.progress import json_lines_callback

            json_lines_callback()({"event": "error", "message": f"{type(error).__name__}: {error}"})
        return 2 if invalid_input else 1


if __name__ == "__main__":
    sys.exit(main())
