"""Train a FlowerNet and write a model bundle: the library entry `train` and the `train` command.

Phases: load the data, build the starting weights, then either

- the feature-cache path (frozen backbone, the default): extract backbone
  features once, for K augmented views per training image and for each
  validation image. Then train the head on them.
- the plain path (`--finetune`, `--no-feature-cache`, or CutMix): run the
  backbone on every batch.

Afterwards training restores the weights of the best validation epoch,
fits the calibration temperature and the OOD threshold on validation
logits, and writes the bundle atomically. Across processes (torchrun)
every rank trains on its shard, and rank 0 alone writes files and reports
progress.

The bot's retraining runs this same code, through `train(...)` or the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from classifier.bundle import MANIFEST_NAME, Bundle, new_version_id
from classifier.preprocess import Preprocessing
from classifier.references import add_reference_photos
from training import checkpoint as checkpoints
from training.calibration import fit_calibration, fit_ood
from training.data import (
    DataSpec,
    ImageDataError,
    ImageSamples,
    InMemoryImages,
    ReadableBatches,
    Sample,
    SeededViews,
    SkippedImages,
    Splits,
    UnreadableImage,
    check_classes_left,
    collate_readable,
    drop_unreadable,
    find_unreadable_images,
    load_splits,
    raise_unreadable,
    resolve_examples,
    unreadable_images,
)
from training.distributed import DistributedContext, all_gather_objects, barrier, init_distributed
from training.engine import (
    EarlyStopping,
    EpochSampler,
    EpochStats,
    build_optimizer,
    build_scheduler,
    check_cancelled,
    resolve_device,
    resolve_precision,
    resolve_workers,
    sample_weights,
    should_weight_samples,
    topk_correct,
    train_plain_epoch,
)
from training.errors import InputError
from training.features import FeatureCache, Rows, cache_fingerprint, extract_features, head_logits, predict_logits, train_head_epoch
from training.presets import eval_preset, train_preset
from training.progress import ProgressCallback, ProgressReporter
from training.recipe import Recipe
from training.synthetic import synthetic_non_flowers
from training.weights import build_starting_model

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block, in seconds, to `timings[name]`."""
    started = time.monotonic()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.monotonic() - started, 3)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def wrap_distributed(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    if not context.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Return (top-1, top-5) accuracy as fractions."""
    counts = topk_correct(logits, labels, (1, 5))
    total = max(len(labels), 1)
    return counts[1] / total, counts[5] / total


# ---------------------------------------------------------------------------
# The epoch loop shared by both paths


def fit(
    *,
    trained: nn.Module,
    run_epoch: Callable[[int], EpochStats],
    validate: Callable[[], tuple[float, float]],
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    scheduler,
    sampler: EpochSampler | None,
    reporter: ProgressReporter | None = None,
    save_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume_state: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train for up to `recipe.epochs` epochs with early stopping, then load the best weights into `trained`.

    `run_epoch(epoch)` trains one epoch (epoch counts from 0) and `validate()`
    returns (top-1, top-5) validation accuracy. `save_checkpoint` receives the
    loop state after every epoch. Returns the history and the best epoch.
    """
    reporter = reporter or ProgressReporter()
    stopper = EarlyStopping(recipe.patience, recipe.min_delta)
    history: list[dict[str, Any]] = []
    best_state = cpu_state_dict(trained)
    start_epoch = 0
    stopped_early = False

    if resume_state is not None:
        trained.load_state_dict(resume_state["trained"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        stopper.load_state_dict(resume_state["early_stopping"])
        best_state = resume_state["best_state"]
        history = list(resume_state["history"])
        start_epoch = int(resume_state["epoch"]) + 1
        stopped_early = bool(resume_state.get("stopped_early", False))
        checkpoints.restore_rng_state(resume_state["rng"])
        logger.info("resuming after epoch %d of %d (best val acc %.4f)", start_epoch, recipe.epochs, stopper.best)

    for epoch in range(start_epoch, recipe.epochs):
        if stopped_early:
            break
        check_cancelled(should_stop)
        started = time.monotonic()
        if sampler is not None:
            sampler.set_epoch(epoch)
        stats = run_epoch(epoch)
        val_top1, val_top5 = validate()
        improved = stopper.update(val_top1, epoch)
        if improved:
            best_state = cpu_state_dict(trained)
        seconds = time.monotonic() - started
        record = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "val_acc": val_top1,
            "val_top5": val_top5,
            "lr": stats.lr,
            "seconds": round(seconds, 3),
        }
        history.append(record)
        logger.info(
            "epoch %d/%d: loss %.4f, train acc %.4f, val acc %.4f (top-5 %.4f), lr %.3g, %.1f s%s",
            epoch + 1,
            recipe.epochs,
            stats.loss,
            stats.accuracy,
            val_top1,
            val_top5,
            stats.lr,
            seconds,
            " *" if improved else "",
        )
        reporter.emit(
            "epoch",
            epoch=epoch + 1,
            epochs=recipe.epochs,
            train_loss=stats.loss,
            train_acc=stats.accuracy,
            val_acc=val_top1,
            val_top5=val_top5,
            lr=stats.lr,
            best_val_acc=stopper.best,
            best_epoch=stopper.best_epoch + 1,
            improved=improved,
            seconds=seconds,
        )
        stopped_early = stopper.should_stop
        if save_checkpoint is not None:
            save_checkpoint(
                {
                    "epoch": epoch,
                    "trained": cpu_state_dict(trained),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "best_state": best_state,
                    "history": history,
                    "stopped_early": stopped_early,
                    "rng": checkpoints.capture_rng_state(),
                }
            )
        if stopped_early:
            logger.info(
                "early stopping after epoch %d: no better val acc for %d epochs (best %.4f at epoch %d)",
                epoch + 1,
                recipe.patience,
                stopper.best,
                stopper.best_epoch + 1,
            )
            reporter.emit("early_stop", epoch=epoch + 1, best_epoch=stopper.best_epoch + 1, best_val_acc=stopper.best)

    trained.load_state_dict(best_state)
    return {
        "history": history,
        "best_epoch": stopper.best_epoch + 1,
        "best_val_acc": stopper.best,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
    }


# ---------------------------------------------------------------------------
# The library entry


@dataclasses.dataclass
class Run:
    """The state that both training paths share within one `train` call."""

    recipe: Recipe
    model: nn.Module
    labels: Any
    train_samples: list[Sample]
    val_samples: list[Sample]
    val_labels: torch.Tensor
    sample_weights: torch.Tensor | None
    device: torch.device
    precision: str
    workers: int
    context: DistributedContext
    reporter: ProgressReporter
    timings: dict[str, float]
    features_path: Path
    save_checkpoint: Callable[[dict[str, Any]], None]
    resume_state: dict[str, Any] | None
    should_stop: Callable[[], bool] | None
    show_progress_bar: bool
    skipped: SkippedImages
    strict_data: bool
    data_source: str

    @property
    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments of `extract_features` and `predict_logits`."""
        return {
            "batch_size": self.recipe.eval_batch_size,
            "workers": self.workers,
            "context": self.context,
            "show_progress_bar": self.show_progress_bar,
            "should_stop": self.should_stop,
            "device": self.device,
            "precision": self.precision,
            "on_unreadable": self.on_unreadable,
        }

    def on_unreadable(self, image: UnreadableImage) -> None:
        """Handle an image that fails to load during the run: stop with `strict_data`, else skip it."""
        if self.strict_data:
            raise_unreadable(image)
        self.skipped.add(image, "during_run")

    def keep_samples(self, *, train: torch.Tensor | None = None, val: torch.Tensor | None = None) -> None:
        """Drop the training and validation samples whose flag is false, after images failed during the run.

        Raises ImageDataError when a class is left without training images or
        the validation split is left empty.
        """
        if train is not None and not bool(train.all()):
            self.train_samples = [sample for sample, keep in zip(self.train_samples, train.tolist()) if keep]
            check_classes_left(self.train_samples, self.labels, skipped=len(self.skipped), where=self.data_source)
            if self.sample_weights is not None:
                self.sample_weights = sample_weights([sample.label for sample in self.train_samples], len(self.labels))
        if val is not None and not bool(val.all()):
            if not bool(val.any()):
                raise ImageDataError(f"no validation image of {self.data_source} could be read during the run")
            self.val_samples = [sample for sample, keep in zip(self.val_samples, val.tolist()) if keep]
            self.val_labels = self.val_labels[val]

    def sampler(self, cached_views: int | None) -> EpochSampler:
        return EpochSampler(
            len(self.train_samples),
            seed=self.recipe.seed,
            weights=self.sample_weights,
            cached_views=cached_views,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )

    def fit(self, trained: nn.Module, run_epoch, validate, optimizer, scheduler, sampler) -> dict[str, Any]:
        return fit(
            trained=trained,
            run_epoch=run_epoch,
            validate=validate,
            recipe=self.recipe,
            optimizer=optimizer,
            scheduler=scheduler,
            sampler=sampler,
            reporter=self.reporter,
            save_checkpoint=self.save_checkpoint,
            resume_state=self.resume_state,
            should_stop=self.should_stop,
        )


def load_or_extract_features(run: Run) -> FeatureCache:
    """Return the feature cache: read from `features.pt` when its fingerprint matches, else computed and saved.

    A sample whose image fails to load during extraction is dropped from the
    run, and the saved cache is fingerprinted without it.
    """
    recipe, model = run.recipe, run.model
    fingerprint = cache_fingerprint(model, run.train_samples, run.val_samples, recipe, run.precision)
    cache = FeatureCache.load(run.features_path, fingerprint)
    if cache is not None:
        logger.info("reusing cached features from %s", run.features_path)
        return cache

    views = SeededViews(run.train_samples, train_preset(recipe), recipe.seed, mark_unreadable=True)
    train_keys = [(index, view) for index in range(len(run.train_samples)) for view in range(recipe.views)]
    train_rows = extract_features(model, views, train_keys, reporter=run.reporter, description="features", **run.loader_options)
    val_images = ImageSamples(run.val_samples, eval_preset(recipe), mark_unreadable=True)
    val_rows = extract_features(model, val_images, list(range(len(run.val_samples))), description="val features", **run.loader_options)

    # A training sample stays only when all K of its views were read.
    count = len(run.train_samples)
    train_readable = train_rows.readable.view(count, recipe.views).all(dim=1)
    if not (bool(train_readable.all()) and bool(val_rows.readable.all())):
        run.keep_samples(train=train_readable, val=val_rows.readable)
        fingerprint = cache_fingerprint(model, run.train_samples, run.val_samples, recipe, run.precision)
    cache = FeatureCache(
        train=train_rows.values.view(count, recipe.views, -1)[train_readable],  # (N, K, 768)
        train_labels=torch.tensor([sample.label for sample in run.train_samples], dtype=torch.long),
        val=val_rows.readable_values(),  # (M, 768)
        val_labels=run.val_labels,
        fingerprint=fingerprint,
    )
    if run.context.is_main:
        cache.save(run.features_path)
    return cache


def train_on_cached_features(run: Run) -> tuple[dict[str, Any], torch.Tensor]:
    """Extract (or reuse) the feature cache, then fit the head on it; return the fit result and val logits."""
    run.reporter.phase("features")
    with timed(run.timings, "features"):
        cache = load_or_extract_features(run)

    run.reporter.phase("train")
    with timed(run.timings, "train"):
        head = run.model.head
        trained = wrap_distributed(head, run.context, run.device)
        sampler = run.sampler(cached_views=run.recipe.views)
        optimizer = build_optimizer(head, run.recipe)
        scheduler = build_scheduler(optimizer, run.recipe, math.ceil(len(sampler) / run.recipe.batch_size))

        def run_epoch(epoch: int) -> EpochStats:
            return train_head_epoch(
                trained,
                cache,
                sampler,
                optimizer=optimizer,
                scheduler=scheduler,
                recipe=run.recipe,
                device=run.device,
                context=run.context,
                should_stop=run.should_stop,
            )

        def validate() -> tuple[float, float]:
            return validation_metrics(head_logits(head, cache.val, device=run.device), cache.val_labels)

        result = run.fit(head, run_epoch, validate, optimizer, scheduler, sampler)
        return result, head_logits(head, cache.val, device=run.device)


def train_on_images(run: Run) -> tuple[dict[str, Any], torch.Tensor]:
    """Fit with the backbone run on every batch (fine-tuning, CutMix, or no cache); return the fit result and val logits."""
    recipe, model = run.recipe, run.model
    run.reporter.phase("train")
    with timed(run.timings, "train"):
        trained_module = model if recipe.finetune else model.head
        trained = wrap_distributed(trained_module, run.context, run.device)
        sampler = run.sampler(cached_views=recipe.views if recipe.fixed_views else None)
        loader = DataLoader(
            SeededViews(run.train_samples, train_preset(recipe), recipe.seed, mark_unreadable=True),
            batch_size=recipe.batch_size,
            sampler=sampler,
            num_workers=run.workers,
            pin_memory=run.device.type == "cuda",
            collate_fn=collate_readable,
        )
        batches = ReadableBatches(loader, run.on_unreadable)
        optimizer = build_optimizer(trained_module, recipe)
        scheduler = build_scheduler(optimizer, recipe, len(loader))
        val_images = ImageSamples(run.val_samples, eval_preset(recipe), mark_unreadable=True)
        val_keys = list(range(len(run.val_samples)))

        def run_epoch(epoch: int) -> EpochStats:
            return train_plain_epoch(
                model,
                batches,
                trained=trained,
                optimizer=optimizer,
                scheduler=scheduler,
                recipe=recipe,
                device=run.device,
                precision=run.precision,
                num_classes=len(run.labels),
                context=run.context,
                should_stop=run.should_stop,
                show_progress_bar=run.show_progress_bar,
                description=f"epoch {epoch + 1}",
            )

        def val_rows() -> Rows:
            return predict_logits(model, val_images, val_keys, description="val", **run.loader_options)

        def validate() -> tuple[float, float]:
            # An image that fails in one epoch is left out of that epoch's accuracy only.
            rows = val_rows()
            return validation_metrics(rows.readable_values(), run.val_labels[rows.readable])

        result = run.fit(trained_module, run_epoch, validate, optimizer, scheduler, sampler)
        final = val_rows()
        run.keep_samples(val=final.readable)
        return result, final.readable_values()


def calibrate(run: Run, val_logits: torch.Tensor, non_flower_paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the temperature and the OOD score and threshold; return (calibration, ood) for the bundle."""
    recipe = run.recipe
    calibration = fit_calibration(val_logits, run.val_labels, bins=recipe.calibration_bins)
    eval_transform = eval_preset(recipe)

    non_flower_logits = None
    if non_flower_paths:
        photos = ImageSamples([Sample(path, -1) for path in non_flower_paths], eval_transform, mark_unreadable=True)
        rows = predict_logits(run.model, photos, list(range(len(photos))), description="non-flower", **run.loader_options)
        non_flower_logits = rows.readable_values() if bool(rows.readable.any()) else None

    synthetic_logits = None
    if recipe.ood_synthetic > 0:
        images = InMemoryImages(synthetic_non_flowers(recipe.ood_synthetic, seed=recipe.seed), eval_transform)
        synthetic_logits = predict_logits(run.model, images, list(range(len(images))), description="synthetic", **run.loader_options).values

    ood = fit_ood(
        val_logits,
        temperature=calibration["temperature"],
        percentile=recipe.ood_percentile,
        max_false_reject=recipe.ood_max_false_reject,
        non_flower_logits=non_flower_logits,
        synthetic_logits=synthetic_logits,
    )
    return calibration, ood


def train(
    recipe: Recipe,
    data_spec: DataSpec | str,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    progress: ProgressCallback | None = None,
    extra_examples: Iterable[Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    non_flower_examples: Iterable[str | os.PathLike] | None = None,
    resume: bool = False,
    device: str = "auto",
    show_progress_bar: bool = True,
    strict_data: bool = False,
) -> Bundle:
    """Train a model and write its bundle to `out`; return the bundle.

    - `recipe`: hyperparameters (`Recipe()` for the defaults).
    - `data_spec`: a `DataSpec`, an ImageFolder directory, or 'flowers102'.
    - `weights`: 'imagenet', 'none', a state dict file or a bundle directory.
    - `out`: the bundle directory. During training it also contains
      `checkpoint.pt` (and `features.pt` on the feature-cache path), which
      `resume=True` continues from. The finished bundle replaces them.
    - `progress`: called with each progress event dict (see training.progress).
    - `extra_examples`: labelled photos added to the training split:
      `(path, label)` pairs or `{"path", "label"}` dicts, where the label is a
      class id or an output index.
    - `should_stop`: polled between batches; when it returns true the run
      raises `TrainingCancelled` and writes no bundle.
    - `non_flower_examples`: image paths of photos people marked as not a
      flower; they set the OOD threshold.
    - `strict_data`: stop with ImageDataError at the first image file that
      cannot be read or decoded. By default every file is checked before
      training and unreadable ones are skipped, as are images that fail to
      load later in the run. The bundle's metrics count them.

    The bundle records the data directory as an absolute path.
    """
    spec = data_spec if isinstance(data_spec, DataSpec) else DataSpec(source=str(data_spec))
    spec = spec.with_absolute_paths()
    out = Path(out)
    check_out_dir(out, resume=resume)
    started = time.monotonic()
    torch_device = resolve_device(device)
    context = init_distributed(torch_device)
    if context.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", context.local_rank)
    reporter = ProgressReporter(progress, enabled=context.is_main)
    precision = resolve_precision(recipe.precision, torch_device)
    workers = resolve_workers(recipe.workers)
    timings: dict[str, float] = {}
    logger.info(
        "training on %s (%s, %d process%s, %d loader workers) into %s",
        torch_device,
        precision,
        context.world_size,
        "" if context.world_size == 1 else "es",
        workers,
        out,
    )
    seed_everything(recipe.seed)

    # Data: the base splits plus the extra labelled photos, which only train.
    # Every image file is decoded once here, and unreadable ones are left out.
    reporter.phase("load_data")
    skipped = SkippedImages()
    with timed(timings, "load_data"):
        splits = load_splits(spec)
        extra = resolve_examples(extra_examples or [], splits.labels)
        non_flower_paths = [Path(path) for path in (non_flower_examples or [])]
        splits, extra, non_flower_paths = screen_training_data(
            splits,
            extra,
            non_flower_paths,
            strict=strict_data,
            threads=max(1, workers),
            context=context,
            skipped=skipped,
            where=spec.source,
        )
        skipped_before_run = len(skipped)
        train_samples = splits.train + extra
        if extra:
            logger.info("added %d extra labelled photos to the training split", len(extra))

    # Model: the starting weights, with the backbone frozen unless fine-tuning.
    reporter.phase("weights")
    with timed(timings, "weights"):
        model, weights_info = build_starting_model(weights, splits.labels, seed=recipe.seed)
        model.to(torch_device)
        if not recipe.finetune:
            model.freeze_backbone()
    seed_everything(recipe.seed)

    # Resumable state in `out`, written by rank 0 after every epoch.
    checkpoint_path = out / checkpoints.CHECKPOINT_NAME
    run_record = {"data": spec.to_dict(), "weights": str(weights)}
    resume_state = None
    if resume and checkpoint_path.is_file():
        resume_state = checkpoints.load_checkpoint(checkpoint_path)
        checkpoints.check_resumable(resume_state, recipe=recipe.to_dict(), path=checkpoint_path, **run_record)
    elif resume:
        logger.warning("--resume: no checkpoint at %s; starting from epoch 1", checkpoint_path)

    def save_checkpoint(state: dict[str, Any]) -> None:
        if context.is_main:
            checkpoints.save_checkpoint(checkpoint_path, {**state, "recipe": recipe.to_dict(), **run_record})

    train_labels = [sample.label for sample in train_samples]
    weighted = should_weight_samples(recipe, train_labels, len(splits.labels))
    run = Run(
        recipe=recipe,
        model=model,
        labels=splits.labels,
        train_samples=train_samples,
        val_samples=splits.val,
        val_labels=torch.tensor([sample.label for sample in splits.val], dtype=torch.long),
        sample_weights=sample_weights(train_labels, len(splits.labels)) if weighted else None,
        device=torch_device,
        precision=precision,
        workers=workers,
        context=context,
        reporter=reporter,
        timings=timings,
        features_path=out / checkpoints.FEATURES_NAME,
        save_checkpoint=save_checkpoint,
        resume_state=resume_state,
        should_stop=should_stop,
        show_progress_bar=show_progress_bar,
        skipped=skipped,
        strict_data=strict_data,
        data_source=spec.source,
    )
    if recipe.uses_feature_cache:
        result, val_logits = train_on_cached_features(run)
    else:
        result, val_logits = train_on_images(run)

    # Calibration and OOD rejection on the best weights' validation logits.
    reporter.phase("calibrate")
    with timed(timings, "calibrate"):
        calibration, ood = calibrate(run, val_logits, non_flower_paths)
    if len(skipped) > skipped_before_run:
        skipped.log_summary()

    val_top1, val_top5 = validation_metrics(val_logits, run.val_labels)
    metrics = {
        "val_top1": val_top1,
        "val_top5": val_top5,
        "val_per_class": per_class_accuracy(val_logits, run.val_labels, len(splits.labels)),
        "best_epoch": result["best_epoch"],
        "epochs_run": result["epochs_run"],
        "stopped_early": result["stopped_early"],
        "history": result["history"],
        "train_samples": len(run.train_samples),
        "extra_samples": len(extra),
        "val_samples": len(run.val_samples),
        "skipped_images": len(skipped),
        "skipped_images_by_source": skipped.to_dict(),
        "timings_s": timings,
    }
    execution = {
        "path": "feature_cache" if recipe.uses_feature_cache else "plain",
        "precision": precision,
        "device": torch_device.type,
        "world_size": context.world_size,
        "sampler": "weighted" if weighted else "uniform",
        "torch": torch.__version__,
    }
    bundle = Bundle(
        version=new_version_id(),
        labels=splits.labels,
        preprocessing=Preprocessing(resize=recipe.resize_size, crop=recipe.crop_size, interpolation=recipe.interpolation),
        recipe={**recipe.to_dict(), "data": spec.to_dict(), "weights": weights_info.to_dict(), "run": execution},
        metrics=metrics,
        calibration=calibration,
        ood=ood,
    )
    bundle.set_state_dict(cpu_state_dict(model))

    reporter.phase("save")
    if context.is_main:
        # Reference photos come from the base training split only: photos people sent are never shown to others.
        with tempfile.TemporaryDirectory(prefix="flowerbot-references-") as scratch:
            reference_files = add_reference_photos(bundle, [(sample.path, sample.label) for sample in splits.train], scratch, seed=recipe.seed)
            save_bundle_over_training_files(bundle, out, extra_files=reference_files)
    barrier(context)
    total = time.monotonic() - started
    logger.info("val top-1 %.4f, top-5 %.4f; bundle %s written to %s in %.1f s", val_top1, val_top5, bundle.version, out, total)
    reporter.emit("done", out=str(out), version=bundle.version, val_acc=val_top1, val_top5=val_top5, epochs_run=result["epochs_run"], seconds=total)
    return bundle


def find_unreadable_shared(paths: list[Path], *, threads: int, context: DistributedContext) -> list[UnreadableImage]:
    """Check each image file once, every rank a share of them; return all failures, in the order of `paths`, on every rank."""
    unique = list(dict.fromkeys(paths))
    local = find_unreadable_images(unique[context.rank :: context.world_size], threads=threads)
    found = {image.path: image for part in all_gather_objects(context, local) for image in part}
    return [found[path] for path in unique if path in found]


def screen_training_data(
    splits: Splits,
    extra: list[Sample],
    non_flower_paths: list[Path],
    *,
    strict: bool,
    threads: int,
    context: DistributedContext,
    skipped: SkippedImages,
    where: str,
) -> tuple[Splits, list[Sample], list[Path]]:
    """Decode every training, validation, extra and non-flower image once, and leave out the unreadable ones.

    Raises ImageDataError at the first unreadable file with `strict`, and
    when the files left give a class no training image or leave the
    validation split empty.
    """
    groups = {
        "train": splits.train,
        "val": splits.val,
        "extra": extra,
        "non_flower": [Sample(path, -1) for path in non_flower_paths],
    }
    paths = [sample.path for samples in groups.values() for sample in samples]
    started = time.monotonic()
    unreadable = find_unreadable_shared(paths, threads=threads, context=context)
    logger.info("checked %d image files in %.1f s: %d unreadable", len(set(paths)), time.monotonic() - started, len(unreadable))
    if not unreadable:
        return splits, extra, non_flower_paths

    remaining = drop_unreadable(groups, unreadable, strict=strict, skipped=skipped)
    skipped.log_summary()
    check_classes_left(remaining["train"] + remaining["extra"], splits.labels, skipped=len(skipped), where=where)
    if not remaining["val"]:
        raise ImageDataError(f"after skipping {len(skipped)} {unreadable_images(len(skipped))}, the validation split of {where} is empty")
    splits = dataclasses.replace(splits, train=remaining["train"], val=remaining["val"])
    return splits, remaining["extra"], [sample.path for sample in remaining["non_flower"]]


def check_out_dir(out: Path, *, resume: bool) -> None:
    """Raise InputError unless training may write its files and then the bundle to `out`.

    `out` may be missing, empty, or an existing bundle, which the new bundle
    replaces. It may also contain the feature cache of an earlier run, which
    is reused only when its fingerprint matches, and, with `resume`, the
    checkpoint of an unfinished run. Anything else would make the final save
    fail after the whole run, so the check runs before any data is read.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory; pass a new or empty directory or an existing bundle")
    if (out / MANIFEST_NAME).is_file():
        return
    names = {entry.name for entry in out.iterdir()}
    if checkpoints.CHECKPOINT_NAME in names and not resume:
        raise InputError(
            f"--out {out} contains {checkpoints.CHECKPOINT_NAME} of an unfinished run; "
            f"pass --resume to continue it, or delete it to start over"
        )
    others = sorted(names - {checkpoints.CHECKPOINT_NAME, checkpoints.FEATURES_NAME})
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise InputError(
            f"--out {out} is a non-empty directory that is not a bundle (it contains {shown}); "
            f"pass a new or empty directory or an existing bundle"
        )


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Return top-1 accuracy per class (None for a class without validation images)."""
    predictions = logits.argmax(dim=1)
    result: list[float | None] = []
    for label in range(num_classes):
        members = labels == label
        count = int(members.sum())
        result.append(float((predictions[members] == label).float().mean()) if count else None)
    return result


def save_bundle_over_training_files(bundle: Bundle, out: Path, *, extra_files: dict[str, Path] | None = None) -> None:
    """Save `bundle` to `out`, which may hold only the training checkpoint and feature cache.

    The training files are moved to a sibling directory first, because the
    bundle replaces `out` as a whole. They are deleted once the bundle is in
    place, and moved back if saving fails, so a failed save can still resume.
    """
    training_files = [out / checkpoints.CHECKPOINT_NAME, out / checkpoints.FEATURES_NAME]
    present = [path for path in training_files if path.is_file()]
    aside = out.parent / f".{out.name}.training-{uuid.uuid4().hex[:8]}"
    if present:
        aside.mkdir(parents=True)
        for path in present:
            os.replace(path, aside / path.name)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    try:
        bundle.save(out, extra_files=extra_files)
    except BaseException:
        out.mkdir(parents=True, exist_ok=True)
        for path in present:
            os.replace(aside / path.name, path)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run `python -m training train` with `argv` (the flags after `train`); return the exit status."""
    from training.__main__ import main as command_main

    return command_main(["train", *(sys.argv[1:] if argv is None else argv)])
