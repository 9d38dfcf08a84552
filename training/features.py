"""The frozen-backbone fast path: cache pooled backbone features, then train the head on them.

With a frozen backbone in eval mode, the head receives `backbone(view)` for each
training view, and that value never changes during training. So the
backbone runs once per view: K seeded augmented views per training image and
one center-crop view per validation image, 768 floats each. Each epoch then
draws one of the K cached views per image, and an epoch of head training
costs milliseconds instead of a full backbone pass.

View `v` of sample `i` is rendered with the seed `view_seed(seed, i, v)`, the
same seed the plain path uses when `fixed_views` is set, so both paths train
the same head from the same views (see tests/test_training_features.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.data import UnreadableImage, collate_readable, raise_unreadable
from training.distributed import DistributedContext, all_gather_objects, gather_sharded
from training.engine import (
    EpochAccumulator,
    EpochSampler,
    EpochStats,
    batched,
    check_cancelled,
    frozen_features,
    progress_bar,
    train_step,
)
from training.progress import ProgressReporter
from training.recipe import Recipe

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


class Rows(NamedTuple):
    """Outputs of `run_batches`, one row per key in key order.

    `values` is float32 on the CPU. Rows whose image could not be read are NaN,
    and `readable` (bool, one flag per key) marks the others.
    """

    values: torch.Tensor
    readable: torch.Tensor

    def readable_values(self) -> torch.Tensor:
        """Return the rows of readable images only."""
        return self.values[self.readable]


def _row_shape(outputs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[int, ...] | None:
    """Return the shape of one output row, or None when no batch had a readable image."""
    return next((tuple(values.shape[1:]) for _, values in outputs if values is not None), None)


def _fill_rows(outputs: list[tuple[torch.Tensor, torch.Tensor | None]], row_shape: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Place each batch's outputs at its readable positions and NaN elsewhere; return (values, readable)."""
    readable = torch.cat([flags for flags, _ in outputs]) if outputs else torch.empty(0, dtype=torch.bool)
    values = torch.full((len(readable), *(row_shape or (0,))), float("nan"), dtype=torch.float32)
    computed = [batch for _, batch in outputs if batch is not None]
    if computed:
        values[readable] = torch.cat(computed)
    return values, readable


@torch.inference_mode()
def run_batches(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    keys: Sequence,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    context: DistributedContext | None = None,
    reporter: ProgressReporter | None = None,
    show_progress_bar: bool = True,
    description: str = "features",
    should_stop: Callable[[], bool] | None = None,
    on_unreadable: Callable[[UnreadableImage], None] = raise_unreadable,
) -> Rows:
    """Return `forward(images)` for every dataset key, as float32 rows on the CPU in key order.

    A dataset built with `mark_unreadable=True` reports images that fail to
    load to `on_unreadable`, and their rows are NaN. The default handler
    raises `ImageDataError`. Across processes each rank computes every
    world_size-th key and the rows are gathered on every rank.
    """
    context = context or DistributedContext()
    local_keys = list(keys)[context.rank :: context.world_size]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=local_keys,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_readable,
    )
    outputs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    done = 0
    total = len(keys)
    batches = progress_bar(loader, total=len(loader), desc=description, enabled=show_progress_bar and context.is_main)
    for batch in batches:
        check_cancelled(should_stop)
        for failure in batch.failures:
            on_unreadable(failure)
        values = None
        if batch.images is not None:
            values = forward(batch.images.to(device, non_blocking=True)).float().cpu()
        outputs.append((batch.readable, values))
        done += len(batch.readable) * context.world_size
        if reporter is not None:
            reporter.step(description, min(done, total), total)
    row_shape = _row_shape(outputs)
    if not context.enabled:
        return Rows(*_fill_rows(outputs, row_shape))
    # A rank that read no image takes the row shape from the others, so that the pieces fit together.
    row_shape = next((shape for shape in all_gather_objects(context, row_shape) if shape is not None), None)
    values, readable = _fill_rows(outputs, row_shape)
    return Rows(gather_sharded(context, len(keys), values), gather_sharded(context, len(keys), readable))


def extract_features(model: nn.Module, dataset: Dataset, keys: Sequence, *, device: torch.device, precision: str, **options) -> Rows:
    """Return `Rows` of pooled backbone features (len(keys), 768) for the items named by `keys`, backbone in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return run_batches(
            lambda images: frozen_features(model, images, device=device, precision=precision),
            dataset,
            keys,
            device=device,
            **options,
        )
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, dataset: Dataset, keys: Sequence, *, device: torch.device, precision: str, **options) -> Rows:
    """Return `Rows` of logits (len(keys), C) in eval mode: backbone under autocast, head in float32 as on cached features."""
    was_training = model.training
    model.eval()
    try:
        return run_batches(
            lambda images: model.forward_head(frozen_features(model, images, device=device, precision=precision)),
            dataset,
            keys,
            device=device,
            **options,
        )
    finally:
        model.train(was_training)


@dataclasses.dataclass
class FeatureCache:
    """Cached backbone features.

    `train` is (N, K, 768): K augmented views per training image. `val` is
    (M, 768): the center-crop evaluation view. `fingerprint` identifies the
    backbone weights, the samples and the view recipe that produced them.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    fingerprint: str

    @property
    def views(self) -> int:
        return self.train.shape[1]

    def save(self, path: Path) -> None:
        """Write the cache atomically (a temporary file renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        torch.save({"format": CACHE_FORMAT, **dataclasses.asdict(self)}, temporary)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> FeatureCache | None:
        """Return the cache stored at `path` when its fingerprint matches, else None."""
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as error:
            logger.warning("ignoring unreadable feature cache %s: %s", path, error)
            return None
        if stored.get("format") != CACHE_FORMAT or stored.get("fingerprint") != fingerprint:
            logger.info("feature cache %s was made for other weights, data or views; recomputing", path)
            return None
        stored.pop("format")
        return cls(**stored)


def cache_fingerprint(model: nn.Module, train_samples: Sequence, val_samples: Sequence, recipe: Recipe, precision: str) -> str:
    """Hash everything the cached features depend on: backbone weights, samples, view recipe, precision."""
    digest = hashlib.sha256()
    for name, tensor in model.features.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    view_recipe = {
        key: getattr(recipe, key)
        for key in (
            "seed",
            "views",
            "crop_size",
            "resize_size",
            "crop_scale_min",
            "hflip_prob",
            "brightness",
            "contrast",
            "rotation_degrees",
            "interpolation",
        )
    }
    described = {
        "train": [(str(sample.path), sample.label) for sample in train_samples],
        "val": [(str(sample.path), sample.label) for sample in val_samples],
        "recipe": view_recipe,
        "precision": precision,
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    return digest.hexdigest()


def train_head_epoch(
    head: nn.Module,
    cache: FeatureCache,
    sampler: EpochSampler,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    recipe: Recipe,
    device: torch.device,
    context: DistributedContext | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Train the head for one epoch on cached features, one view per drawn sample.

    `head` may be wrapped in DistributedDataParallel. The sampler then yields
    this rank's share of the keys.
    """
    head.train()
    parameters = [parameter for parameter in head.parameters() if parameter.requires_grad]
    accumulator = EpochAccumulator()
    keys = list(sampler)
    for batch in batched(keys, recipe.batch_size):
        check_cancelled(should_stop)
        indices = torch.tensor([index for index, _ in batch], dtype=torch.long)
        views = torch.tensor([view for _, view in batch], dtype=torch.long)
        inputs = cache.train[indices, views].to(device)
        targets = cache.train_labels[indices].to(device)
        step = train_step(
            head,
            inputs,
            targets,
            optimizer=optimizer,
            scheduler=scheduler,
            parameters=parameters,
            clip_grad_norm=recipe.clip_grad_norm,
            label_smoothing=recipe.label_smoothing,
        )
        accumulator.add(step)
    return accumulator.finish(optimizer, context)


@torch.inference_mode()
def head_logits(head: nn.Module, features: torch.Tensor, *, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Apply the head to cached features in eval mode and return float32 logits on the CPU."""
    was_training = head.training
    head.eval()
    try:
        outputs = [head(features[start : start + batch_size].to(device)).float().cpu() for start in range(0, len(features), batch_size)]
    finally:
        head.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty((0, 0))
