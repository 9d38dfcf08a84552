"""Train a FlowerNet and write a model bundle: the library entry `train` and the `train` command.

Phases: load the data, build the starting weights, then either

- the feature-cache path (frozen backbone, the default): extract backbone
  features of K augmented views per training image and of the validation
  images once, then train the head on them; or
- the plain path (`--finetune`, `--no-feature-cache`, or CutMix): run the
  backbone on every batch;

then restore the weights of the best validation epoch, fit the calibration
temperature and the OOD threshold on validation logits, and write the bundle
atomically. Across processes (torchrun) every rank trains on its shard and
rank 0 alone writes files and reports progress.

The bot's retraining runs this same code, through `train(...)` or the command.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from classifier.bundle import Bundle, new_version_id
from classifier.preprocess import Preprocessing
from training import checkpoint as checkpoints
from training.calibration import fit_calibration, fit_ood
from training.data import (
    DataSpec,
    ImageSamples,
    InMemoryImages,
    Sample,
    SeededViews,
    load_splits,
    resolve_examples,
)
from training.distributed import DistributedContext, barrier, init_distributed
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
from training.features import FeatureCache, cache_fingerprint, extract_features, head_logits, predict_logits, train_head_epoch
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


def train(
    recipe: Recipe,
    data_spec: DataSpec | str,
    weights: str | os.PathLike = "none",
    out: str | os.PathLike = "build/model",
    progress: ProgressCallback | None = None,
    extra_examples: Iterable[Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    non_flower_examples: Iterable[str | os.PathLike] | None = None,
    resume: bool = False,
    device: str = "auto",
    show_progress_bar: bool = True,
) -> Bundle:
    """Train a model and write its bundle to `out`; return the bundle.

    - `recipe`: hyperparameters (`Recipe()` for the defaults).
    - `data_spec`: a `DataSpec`, an ImageFolder directory, or 'flowers102'.
    - `weights`: 'imagenet', 'none', a state dict file or a bundle directory.
    - `out`: the bundle directory. During training it also holds
      `checkpoint.pt` (and `features.pt` on the feature-cache path), which
      `resume=True` continues from; the finished bundle replaces them.
    - `progress`: called with each progress event dict (see training.progress).
    - `extra_examples`: labelled photos added to the training split:
      `(path, label)` pairs or `{"path", "label"}` dicts, where the label is a
      class id or an output index.
    - `should_stop`: polled between batches; when it returns true the run
      raises `TrainingCancelled` and writes no bundle.
    - `non_flower_examples`: image paths of photos people marked as not a
      flower; they set the OOD threshold.
    """
    spec = data_spec if isinstance(data_spec, DataSpec) else DataSpec(source=str(data_spec))
    out = Path(out)
    started = time.monotonic()
    device = resolve_device(device)
    context = init_distributed(device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    reporter = ProgressReporter(progress, enabled=context.is_main)
    precision = resolve_precision(recipe.precision, device)
    workers = resolve_workers(recipe.workers)
    timings: dict[str, float] = {}
    logger.info(
        "training on %s (%s, %d process%s, %d loader workers) into %s",
        device,
        precision,
        context.world_size,
        "" if context.world_size == 1 else "es",
        workers,
        out,
    )
    seed_everything(recipe.seed)

    # Data: the base splits plus the extra labelled photos, which only train.
    reporter.phase("load_data")
    with timed(timings, "load_data"):
        splits = load_splits(spec)
        labels = splits.labels
        extra = resolve_examples(extra_examples or [], labels)
        train_samples = splits.train + extra
        val_samples = splits.val
        non_flower_paths = [Path(path) for path in (non_flower_examples or [])]
        if extra:
            logger.info("added %d extra labelled photos to the training split", len(extra))

    # Model: the starting weights, with the backbone frozen unless fine-tuning.
    reporter.phase("weights")
    with timed(timings, "weights"):
        model, weights_info = build_starting_model(weights, labels, seed=recipe.seed)
        model.to(device)
        if not recipe.finetune:
            model.freeze_backbone()
    seed_everything(recipe.seed)

    checkpoint_path = out / checkpoints.CHECKPOINT_NAME
    features_path = out / checkpoints.FEATURES_NAME
    run_record = {"data": spec.to_dict(), "weights": str(weights)}
    resume_state = None
    if resume:
        if checkpoint_path.is_file():
            resume_state = checkpoints.load_checkpoint(checkpoint_path)
            checkpoints.check_resumable(resume_state, recipe=recipe.to_dict(), path=checkpoint_path, **run_record)
        else:
            logger.warning("--resume: no checkpoint at %s; starting from epoch 1", checkpoint_path)

    def save_checkpoint(state: dict[str, Any]) -> None:
        if context.is_main:
            checkpoints.save_checkpoint(checkpoint_path, {**state, "recipe": recipe.to_dict(), **run_record})

    weighted = should_weight_samples(recipe, [sample.label for sample in train_samples], len(labels))
    weights_per_sample = sample_weights([s.label for s in train_samples], len(labels)) if weighted else None
    loader_options = {"batch_size": recipe.eval_batch_size, "workers": workers, "context": context, "show_progress_bar": show_progress_bar, "should_stop": should_stop}
    eval_transform = eval_preset(recipe)
    val_labels = torch.tensor([sample.label for sample in val_samples], dtype=torch.long)

    if recipe.uses_feature_cache:
        # Features of K views per training image and of every validation image, once.
        reporter.phase("features")
        with timed(timings, "features"):
            fingerprint = cache_fingerprint(model, train_samples, val_samples, recipe, precision)
            cache = FeatureCache.load(features_path, fingerprint)
            if cache is None:
                views = SeededViews(train_samples, train_preset(recipe), recipe.seed)
                train_keys = [(index, view) for index in range(len(train_samples)) for view in range(recipe.views)]
                train_features = extract_features(
                    model, views, train_keys, device=device, precision=precision, reporter=reporter, description="features", **loader_options
                )
                val_features = extract_features(
                    model,
                    ImageSamples(val_samples, eval_transform),
                    list(range(len(val_samples))),
                    device=device,
                    precision=precision,
                    description="val features",
                    **loader_options,
                )
                cache = FeatureCache(
                    train=train_features.view(len(train_samples), recipe.views, -1),
                    train_labels=torch.tensor([sample.label for sample in train_samples], dtype=torch.long),
                    val=val_features,
                    val_labels=val_labels,
                    fingerprint=fingerprint,
                )
                if context.is_main:
                    cache.save(features_path)
            else:
                logger.info("reusing cached features from %s", features_path)

        reporter.phase("train")
        with timed(timings, "train"):
            trained = wrap_distributed(model.head, context, device)
            sampler = EpochSampler(
                len(train_samples),
                seed=recipe.seed,
                weights=weights_per_sample,
                cached_views=recipe.views,
                rank=context.rank,
                world_size=context.world_size,
            )
            optimizer = build_optimizer(model.head, recipe)
            scheduler = build_scheduler(optimizer, recipe, math.ceil(len(sampler) / recipe.batch_size))

            def run_epoch(epoch: int) -> EpochStats:
                return train_head_epoch(
                    trained, cache, sampler, optimizer=optimizer, scheduler=scheduler, recipe=recipe, device=device, context=context, should_stop=should_stop
                )

            def validate() -> tuple[float, float]:
                return validation_metrics(head_logits(model.head, cache.val, device=device), cache.val_labels)

            result = fit(
                trained=model.head,
                run_epoch=run_epoch,
                validate=validate,
                recipe=recipe,
                optimizer=optimizer,
                scheduler=scheduler,
                sampler=sampler,
                reporter=reporter,
                save_checkpoint=save_checkpoint,
                resume_state=resume_state,
                should_stop=should_stop,
            )
            val_logits = head_logits(model.head, cache.val, device=device)
    else:
        reporter.phase("train")
        with timed(timings, "train"):
            trained_module = model if recipe.finetune else model.head
            trained = wrap_distributed(trained_module, context, device)
            sampler = EpochSampler(
                len(train_samples),
                seed=recipe.seed,
                weights=weights_per_sample,
                cached_views=recipe.views if recipe.fixed_views else None,
                rank=context.rank,
                world_size=context.world_size,
            )
            loader = DataLoader(
                SeededViews(train_samples, train_preset(recipe), recipe.seed),
                batch_size=recipe.batch_size,
                sampler=sampler,
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )
            optimizer = build_optimizer(trained_module, recipe)
            scheduler = build_scheduler(optimizer, recipe, len(loader))
            val_dataset = ImageSamples(val_samples, eval_transform)
            val_keys = list(range(len(val_samples)))

            def run_epoch(epoch: int) -> EpochStats:
                return train_plain_epoch(
                    model,
                    loader,
                    trained=trained,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    recipe=recipe,
                    device=device,
                    precision=precision,
                    num_classes=len(labels),
                    context=context,
                    should_stop=should_stop,
                    show_progress_bar=show_progress_bar,
                    description=f"epoch {epoch + 1}",
                )

            def validate() -> tuple[float, float]:
                logits = predict_logits(model, val_dataset, val_keys, device=device, precision=precision, description="val", **loader_options)
                return validation_metrics(logits, val_labels)

            result = fit(
                trained=trained_module,
                run_epoch=run_epoch,
                validate=validate,
                recipe=recipe,
                optimizer=optimizer,
                scheduler=scheduler,
                sampler=sampler,
                reporter=reporter,
                save_checkpoint=save_checkpoint,
                resume_state=resume_state,
                should_stop=should_stop,
            )
            val_logits = predict_logits(model, val_dataset, val_keys, device=device, precision=precision, description="val", **loader_options)

    # Calibration and OOD rejection on the best weights' validation logits.
    reporter.phase("calibrate")
    with timed(timings, "calibrate"):
        calibration = fit_calibration(val_logits, val_labels, bins=recipe.calibration_bins)
        non_flower_logits = None
        if non_flower_paths:
            non_flower_logits = predict_logits(
                model,
                ImageSamples([Sample(path, -1) for path in non_flower_paths], eval_transform),
                list(range(len(non_flower_paths))),
                device=device,
                precision=precision,
                description="non-flower",
                **loader_options,
            )
        synthetic_logits = None
        if recipe.ood_synthetic > 0:
            synthetic_logits = predict_logits(
                model,
                InMemoryImages(synthetic_non_flowers(recipe.ood_synthetic, seed=recipe.seed), eval_transform),
                list(range(recipe.ood_synthetic)),
                device=device,
                precision=precision,
                description="synthetic",
                **loader_options,
            )
        ood = fit_ood(
            val_logits,
            temperature=calibration["temperature"],
            percentile=recipe.ood_percentile,
            max_false_reject=recipe.ood_max_false_reject,
            non_flower_logits=non_flower_logits,
            synthetic_logits=synthetic_logits,
        )

    val_top1, val_top5 = validation_metrics(val_logits, val_labels)
    metrics = {
        "val_top1": val_top1,
        "val_top5": val_top5,
        "val_per_class": per_class_accuracy(val_logits, val_labels, len(labels)),
        "best_epoch": result["best_epoch"],
        "epochs_run": result["epochs_run"],
        "stopped_early": result["stopped_early"],
        "history": result["history"],
        "train_samples": len(train_samples),
        "extra_samples": len(extra),
        "val_samples": len(val_samples),
        "timings_s": timings,
    }
    run = {
        "path": "feature_cache" if recipe.uses_feature_cache else "plain",
        "precision": precision,
        "device": device.type,
        "world_size": context.world_size,
        "sampler": "weighted" if weighted else "uniform",
        "torch": torch.__version__,
    }
    bundle = Bundle(
        version=new_version_id(),
        labels=labels,
        preprocessing=Preprocessing(resize=recipe.resize_size, crop=recipe.crop_size, interpolation=recipe.interpolation),
        recipe={**recipe.to_dict(), "data": spec.to_dict(), "weights": weights_info.to_dict(), "run": run},
        metrics=metrics,
        calibration=calibration,
        ood=ood,
    )
    bundle.set_state_dict(cpu_state_dict(model))

    reporter.phase("save")
    with timed(timings, "save"):
        if context.is_main:
            save_bundle_over_training_files(bundle, out)
    barrier(context)
    total = time.monotonic() - started
    logger.info("val top-1 %.4f, top-5 %.4f; bundle %s written to %s in %.1f s", val_top1, val_top5, bundle.version, out, total)
    reporter.emit(
        "done",
        out=str(out),
        version=bundle.version,
        val_acc=val_top1,
        val_top5=val_top5,
        epochs_run=result["epochs_run"],
        seconds=total,
    )
    return bundle


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Return top-1 accuracy per class (None for a class without validation images)."""
    predictions = logits.argmax(dim=1)
    result: list[float | None] = []
    for label in range(num_classes):
        members = labels == label
        count = int(members.sum())
        result.append(float((predictions[members] == label).float().mean()) if count else None)
    return result


def save_bundle_over_training_files(bundle: Bundle, out: Path) -> None:
    """Save `bundle` to `out`, which may hold only the training checkpoint and feature cache.

    The training files are moved to a sibling directory first, because the
    bundle replaces `out` as a whole; they are deleted once the bundle is in
    place and moved back if saving fails, so a failed save can still resume.
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
        bundle.save(out)
    except BaseException:
        out.mkdir(parents=True, exist_ok=True)
        for path in present:
            os.replace(aside / path.name, path)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
