"""The training and evaluation loops shared by the plain and the feature-cache paths.

Both paths draw the same `(sample index, view number)` keys from
`EpochSampler`, split them into the same batches, and update the parameters
with the same `train_step`, so with fixed views they produce the same head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler, WeightedRandomSampler

from classifier.backends.torch_backend import cpu_has_bf16
from training.distributed import DistributedContext
from training.errors import InputError
from training.recipe import Recipe

logger = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised inside a loop when the caller's `should_stop()` returns true."""


def check_cancelled(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise TrainingCancelled("training was cancelled")


# ---------------------------------------------------------------------------
# Device and precision


def resolve_device(requested: str = "auto", *, option: str = "--device") -> torch.device:
    """Return CUDA when present for 'auto', else the requested device.

    Raises InputError, before any tensor is moved, for a CUDA device that this
    machine lacks and for anything but auto, cpu, cuda and cuda:N. The training
    code is tested on CPU and CUDA only, so mps, xla, meta and the like are rejected. `option` names the setting in those messages:
    a command-line flag such as "--device", or an environment variable.
    """
    # "--device cuda" for a flag, "RETRAIN_DEVICE=cuda" for an environment variable.
    separator = " " if option.startswith("-") else "="
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"invalid {option} {requested!r}; expected auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise InputError(
            f"{option}{separator}{requested} was requested but CUDA is not available ({cuda_unavailable_reason()}); "
            f"use {option}{separator}cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise InputError(
            f"{option}{separator}{requested} was requested but this machine has {count} CUDA device(s), "
            f"numbered from 0; use {option}{separator}cuda:0 to cuda:{count - 1}, cpu or auto"
        )
    return device


def cuda_unavailable_reason() -> str:
    """Return why CUDA cannot be used, in one sentence, for a machine where `torch.cuda.is_available()` is false."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"PyTorch {torch.__version__} was built without CUDA support"
    try:
        torch.cuda.init()
    except (RuntimeError, AssertionError) as error:
        # torch's messages run on with a driver download link; its first sentence is the reason.
        return str(error).split(". ")[0].strip().rstrip(".") or type(error).__name__
    return "torch.cuda.is_available() returned false"


def resolve_precision(requested: str, device: torch.device) -> str:
    """Turn 'auto' into 'bf16' on CUDA and on bf16-capable CPUs, 'fp32' elsewhere."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 when `precision` is 'bf16'; a no-op context for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_workers(requested: int) -> int:
    """Return the DataLoader worker count: `requested`, or min(8, usable CPUs - 1) for -1."""
    if requested >= 0:
        return requested
    return max(0, min(8, usable_cpus() - 1))


def progress_bar(iterable: Iterable, *, total: int | None, desc: str, enabled: bool):
    """Wrap `iterable` in a tqdm bar on stderr when `enabled` and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------
# Sampling


def sample_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Return one weight per sample, 1 / (count of its class), so each class is drawn equally often."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = 1.0 / counts[np.asarray(labels, dtype=np.int64)]
    return torch.as_tensor(weights, dtype=torch.double)


def should_weight_samples(recipe: Recipe, labels: Sequence[int], num_classes: int) -> bool:
    """Decide whether training draws samples with class-balancing weights."""
    if recipe.sampler == "weighted":
        return True
    if recipe.sampler == "uniform":
        return False
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts[counts > 0]
    ratio = float(present.max() / present.min())
    weighted = ratio > recipe.imbalance_ratio
    logger.info(
        "class counts range %d..%d (ratio %.2f): %s sampler",
        present.min(),
        present.max(),
        ratio,
        "weighted" if weighted else "uniform",
    )
    return weighted


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, stream]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Yields `(sample index, view number)` keys for one epoch, the same on every run with the same seed.

    - Order: a seeded permutation, or with `weights`, `len(weights)` draws with
      replacement through `WeightedRandomSampler`.
    - Views: with `cached_views=K`, view numbers 0..K-1 drawn per position,
      which are the views the feature cache contains. With None, a fresh view
      number per position and epoch, so each epoch draws new augmentations.
    - Processes: the epoch's keys are padded to a multiple of the world size
      and rank r takes positions r, r + world, ... (as DistributedSampler does).

    Call `set_epoch` before each epoch.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        weights: torch.Tensor | None = None,
        cached_views: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("cannot sample from an empty training set")
        self.num_samples = num_samples
        self.seed = seed
        self.weights = weights
        self.cached_views = cached_views
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_keys(self) -> list[tuple[int, int]]:
        """Return every process's keys for the current epoch, before sharding."""
        order_generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 0))
        if self.weights is not None:
            drawn = WeightedRandomSampler(self.weights, self.num_samples, replacement=True, generator=order_generator)
            indices = torch.as_tensor(list(drawn), dtype=torch.long)
        else:
            indices = torch.randperm(self.num_samples, generator=order_generator)
        if self.cached_views is not None:
            view_generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1))
            views = torch.randint(self.cached_views, (len(indices),), generator=view_generator)
        else:
            # Fresh views get numbers no cached view uses: above 2**20, one per epoch and position.
            views = (1 << 20) + self.epoch * len(indices) + torch.arange(len(indices))
        keys = list(zip(indices.tolist(), views.tolist()))
        padding = (-len(keys)) % self.world_size
        return keys + keys[:padding]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = self.epoch_keys()
        return iter(keys[self.rank :: self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)


def batched(keys: Sequence, batch_size: int) -> list[Sequence]:
    return [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]


# ---------------------------------------------------------------------------
# Optimization


def parameter_groups(parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed weight matrices and undecayed norm and bias vectors."""
    decay, no_decay = [], []
    for _, parameter in parameters:
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(module: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    groups = parameter_groups(module.named_parameters(), recipe.weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=recipe.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, batches_per_epoch: int):
    """Cosine decay from lr to eta_min, stepped after every batch: T_max = epochs x batches per epoch."""
    total_steps = max(1, recipe.epochs * batches_per_epoch)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=recipe.eta_min)


def gradient_norm(parameters: Iterable[nn.Parameter]) -> float:
    """Return the L2 norm of all gradients together (0 when none is set)."""
    norms = [parameter.grad.detach().norm(2) for parameter in parameters if parameter.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms), 2))


def cutmix_batch(
    images: torch.Tensor, targets: torch.Tensor, num_classes: int, *, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box of a shuffled copy of the batch into each image.

    Returns the mixed images and soft targets (N x C) weighted by pixel area,
    drawn from torch's global generator. Built on torchvision's v2 CutMix.
    """
    from torchvision.transforms import v2

    return v2.CutMix(num_classes=num_classes, alpha=alpha)(images, targets)


@dataclasses.dataclass
class StepResult:
    loss: float
    correct: int
    count: int
    grad_norm: float


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    parameters: Sequence[nn.Parameter],
    clip_grad_norm: float,
    label_smoothing: float = 0.0,
) -> StepResult:
    """Run one optimizer step and one scheduler step.

    `targets` contains class indices (N,) or soft CutMix targets (N x C). Accuracy
    counts predictions equal to the hard label, the class with the largest
    target weight. The returned `grad_norm` is measured before clipping.
    """
    optimizer.zero_grad(set_to_none=True)
    logits = forward(inputs).float()
    loss = nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    loss.backward()
    if clip_grad_norm > 0:
        grad_norm = float(nn.utils.clip_grad_norm_(parameters, clip_grad_norm))
    else:
        grad_norm = gradient_norm(parameters)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    hard_targets = targets.argmax(dim=1) if targets.ndim == 2 else targets
    correct = int((logits.detach().argmax(dim=1) == hard_targets).sum())
    return StepResult(loss=float(loss.detach()), correct=correct, count=len(targets), grad_norm=grad_norm)


@dataclasses.dataclass
class EpochStats:
    loss: float
    accuracy: float
    lr: float
    samples: int
    max_grad_norm: float


class EpochAccumulator:
    """Sums step results across a batch loop (and across processes in `finish`)."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.correct = 0
        self.count = 0
        self.max_grad_norm = 0.0

    def add(self, step: StepResult) -> None:
        self.loss_sum += step.loss * step.count
        self.correct += step.correct
        self.count += step.count
        self.max_grad_norm = max(self.max_grad_norm, step.grad_norm)

    def finish(self, optimizer: torch.optim.Optimizer, context: DistributedContext | None = None) -> EpochStats:
        totals = torch.tensor([self.loss_sum, float(self.correct), float(self.count)], dtype=torch.float64)
        if context is not None and context.enabled:
            import torch.distributed as dist

            dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()
        return EpochStats(
            loss=loss_sum / max(count, 1.0),
            accuracy=correct / max(count, 1.0),
            lr=optimizer.param_groups[0]["lr"],
            samples=int(count),
            max_grad_norm=self.max_grad_norm,
        )


# ---------------------------------------------------------------------------
# Model modes and the plain path


def frozen_features(model: nn.Module, images: torch.Tensor, *, device: torch.device, precision: str) -> torch.Tensor:
    """Return pooled backbone features (N, 768) in float32, computed without gradients under autocast."""
    with torch.no_grad(), autocast(device, precision):
        return model.forward_features(images).float()


def set_train_mode(model: nn.Module, *, finetune: bool) -> None:
    """Put `model` in training mode, keeping a frozen backbone in eval mode.

    Eval mode turns off stochastic depth and dropout, so a frozen backbone
    computes the same features as the feature cache and as serving.
    """
    model.train()
    if not finetune:
        model.features.eval()


# ---------------------------------------------------------------------------
# Metrics


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Count, for each k, the samples whose label is among the k largest logits."""
    result = {}
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices
    hits = top == labels.unsqueeze(1)
    for k in ks:
        result[k] = int(hits[:, : min(k, largest)].any(dim=1).sum())
    return result


class EarlyStopping:
    """Tracks validation accuracy and reports when `patience` epochs passed without improvement.

    An epoch improves when its value exceeds the best so far by more than
    `min_delta`. Patience 0 never stops.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float = -math.inf
        self.best_epoch: int = -1
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record `value` for `epoch`; return whether it is the new best."""
        if value > self.best + self.min_delta or self.best_epoch < 0:
            self.best = value
            self.best_epoch = epoch
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]


def train_plain_epoch(
    model: nn.Module,
    loader: Iterable,
    *,
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    recipe: Recipe,
    device: torch.device,
    precision: str,
    num_classes: int,
    context: DistributedContext | None = None,
    should_stop: Callable[[], bool] | None = None,
    show_progress_bar: bool = True,
    description: str = "train",
) -> EpochStats:
    """Train for one epoch on images, running the backbone on every batch.

    With a frozen backbone, `trained` is the head (possibly wrapped in
    DistributedDataParallel) and is applied in float32 to the pooled
    features, exactly as on cached features. With `recipe.finetune`,
    `trained` is the whole model and runs under autocast.
    """
    set_train_mode(model, finetune=recipe.finetune)
    parameters = [parameter for parameter in trained.parameters() if parameter.requires_grad]
    accumulator = EpochAccumulator()

    def forward(images: torch.Tensor) -> torch.Tensor:
        if recipe.finetune:
            with autocast(device, precision):
                return trained(images)
        return trained(frozen_features(model, images, device=device, precision=precision))

    is_main = context is None or context.is_main
    for images, targets in progress_bar(loader, total=len(loader), desc=description, enabled=show_progress_bar and is_main):
        check_cancelled(should_stop)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if recipe.cutmix_prob > 0 and float(torch.rand(())) < recipe.cutmix_prob:
            images, targets = cutmix_batch(images, targets, num_classes, alpha=recipe.cutmix_alpha)
        step = train_step(
            forward,
            images,
            targets,
            optimizer=optimizer,
            scheduler=scheduler,
            parameters=parameters,
            clip_grad_norm=recipe.clip_grad_norm,
            label_smoothing=recipe.label_smoothing,
        )
        accumulator.add(step)
    return accumulator.finish(optimizer, context)
