"""The training recipe: every hyperparameter with its default and the reason for it.

A `Recipe` is resolved in three layers, each overriding the one before:
the dataclass defaults below, a JSON or YAML config file (`--config`), and
command-line flags. The resolved values travel inside each checkpoint and are
written into the bundle's `recipe`, so a bundle states how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Keys that `train` stores in bundle.json's "recipe" beside the recipe fields:
# where the data and the starting weights came from, and how the run executed.
RUN_RECORD_KEYS = ("data", "weights", "run")

SAMPLER_CHOICES = ("auto", "weighted", "uniform")
PRECISION_CHOICES = ("auto", "bf16", "fp32")
INTERPOLATION_CHOICES = ("bilinear", "bicubic")


def _option(default: Any, help: str, **extra: Any) -> Any:
    """Declare a recipe field with the help text its command-line flag shows."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """Hyperparameters of one training run.

    The defaults train a linear probe (head LayerNorm + Linear) on a frozen
    ConvNeXt-Tiny, which is the configuration a CPU-only user can afford.
    """

    # Optimization. ConvNeXt was trained with AdamW (decoupled weight decay),
    # so the head is too. The rate is for a freshly initialized head.
    lr: float = _option(5e-4, "peak learning rate of AdamW")
    weight_decay: float = _option(0.05, "AdamW decoupled weight decay")
    epochs: int = _option(100, "maximum number of epochs; early stopping usually ends sooner")
    batch_size: int = _option(64, "images (or cached feature rows) per optimizer step, per process")
    eta_min: float = _option(1e-6, "learning rate the per-batch cosine schedule ends at")
    clip_grad_norm: float = _option(
        1.0, "maximum L2 norm of the gradient of the trained parameters; 0 turns clipping off"
    )
    label_smoothing: float = _option(0.0, "label smoothing of the cross-entropy loss, 0 to 1")

    # Early stopping on validation top-1 accuracy, keeping the best weights.
    patience: int = _option(3, "epochs without a better validation accuracy before training stops; 0 turns it off")
    min_delta: float = _option(0.0, "smallest rise in validation accuracy (a fraction) that counts as better")

    # Class balance. A sampler weight of 1 / class count per sample draws
    # every class equally often in expectation.
    sampler: str = _option(
        "auto",
        "training sampler: 'weighted' draws classes equally often (WeightedRandomSampler, one weight per sample), "
        "'uniform' shuffles, 'auto' picks 'weighted' when the largest class count exceeds imbalance_ratio times the smallest",
        choices=SAMPLER_CHOICES,
    )
    imbalance_ratio: float = _option(1.5, "largest / smallest class count above which sampler=auto weights samples")

    # CutMix mixes pixels, so it needs the plain path. Accuracy is always
    # measured against hard labels (the class that covers most of the image).
    cutmix_prob: float = _option(0.0, "probability that a batch is mixed with CutMix, 0 to 1")
    cutmix_alpha: float = _option(1.0, "Beta(alpha, alpha) parameter of the CutMix area ratio")

    # Augmentation of the training views. Evaluation uses resize_size then a
    # center crop of crop_size, which is what serving does.
    crop_size: int = _option(224, "side of the square network input, in pixels")
    resize_size: int = _option(256, "evaluation: the short side is resized to this many pixels before the center crop")
    crop_scale_min: float = _option(0.08, "RandomResizedCrop: smallest crop area as a fraction of the image area")
    hflip_prob: float = _option(0.5, "probability of a horizontal flip")
    brightness: float = _option(0.2, "ColorJitter brightness factor range, +/- this fraction")
    contrast: float = _option(0.2, "ColorJitter contrast factor range, +/- this fraction")
    rotation_degrees: float = _option(30.0, "RandomRotation range, +/- this many degrees")
    interpolation: str = _option("bilinear", "resampling filter for resizes", choices=INTERPOLATION_CHOICES)

    # The frozen-backbone fast path: features of K augmented views per
    # training image are computed once; each epoch draws one view per image.
    finetune: bool = _option(False, "train every layer instead of only the head (turns the feature cache off)")
    feature_cache: bool = _option(True, "frozen backbone: train the head on cached features instead of running the backbone every epoch")
    views: int = _option(4, "augmented views per training image computed for the feature cache")
    fixed_views: bool = _option(
        False,
        "plain path: draw from the same K seeded views as the feature cache instead of a fresh augmentation each epoch",
    )

    # Reproducibility and hardware.
    seed: int = _option(0, "seed of every random draw: weights, views, sampling, CutMix")
    precision: str = _option(
        "auto",
        "'bf16' autocast, 'fp32', or 'auto': bf16 on CUDA and on CPUs with bf16 instructions, fp32 elsewhere",
        choices=PRECISION_CHOICES,
    )
    workers: int = _option(-1, "DataLoader worker processes; -1 picks min(8, usable CPUs - 1)")
    eval_batch_size: int = _option(64, "images per forward pass during feature extraction and evaluation")

    # Calibration and out-of-distribution rejection, fitted on validation logits.
    calibration_bins: int = _option(15, "equal-width confidence bins of the expected calibration error")
    ood_percentile: float = _option(
        5.0, "OOD threshold without non-flower examples: this percentile of the validation scores (percent rejected)"
    )
    ood_max_false_reject: float = _option(
        0.10, "with non-flower examples: the threshold may reject at most this fraction of validation photos"
    )
    ood_synthetic: int = _option(
        48, "synthetic non-flower images (noise, stripes, shapes) used to choose the OOD score by AUROC; 0 skips them"
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is out of range."""

        positive = ("lr", "epochs", "batch_size", "crop_size", "resize_size", "views", "eval_batch_size", "calibration_bins")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"recipe.{name} must be positive, got {getattr(self, name)!r}")

        non_negative = ("ood_synthetic", "weight_decay", "eta_min", "clip_grad_norm", "patience", "min_delta", "brightness", "contrast", "rotation_degrees", "cutmix_alpha")
        for name in non_negative:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"recipe.{name} must be a finite number >= 0, got {value!r}")

        fractions = ("label_smoothing", "cutmix_prob", "hflip_prob", "ood_max_false_reject")
        for name in fractions:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"recipe.{name} must be within [0, 1], got {getattr(self, name)!r}")

        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"recipe.crop_scale_min must be within (0, 1], got {self.crop_scale_min!r}")
        if not 0.0 <= self.ood_percentile < 100.0:
            raise ValueError(f"recipe.ood_percentile must be within [0, 100), got {self.ood_percentile!r}")
        if self.eta_min >= self.lr:
            raise ValueError(f"recipe.eta_min ({self.eta_min}) must be below recipe.lr ({self.lr})")
        if self.imbalance_ratio < 1.0:
            raise ValueError(f"recipe.imbalance_ratio must be >= 1, got {self.imbalance_ratio!r}")
        if self.resize_size < self.crop_size:
            raise ValueError(f"recipe.resize_size ({self.resize_size}) must be >= recipe.crop_size ({self.crop_size})")
        if self.workers < -1:
            raise ValueError(f"recipe.workers must be -1 (auto) or >= 0, got {self.workers!r}")

        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices and getattr(self, field.name) not in choices:
                raise ValueError(f"recipe.{field.name} must be one of {', '.join(choices)}; got {getattr(self, field.name)!r}")

    @property
    def uses_feature_cache(self) -> bool:
        """Whether this recipe trains the head on cached features.

        The cache needs a frozen backbone, and CutMix mixes pixels, which a
        cached pooled feature cannot express.
        """
        return self.feature_cache and not self.finetune and self.cutmix_prob == 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: Recipe | None = None) -> Recipe:
        """Build a recipe from `values` layered over `base` (the defaults when None).

        Keys may use dashes or underscores. An unknown key raises ValueError
        with the accepted names, so a typo in a config file is not ignored.
        """
        base = base if base is not None else cls()
        known = {field.name: field for field in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown recipe key {raw_key!r}; accepted keys: {', '.join(sorted(known))}")
            changes[key] = _coerce(known[key], value)
        return dataclasses.replace(base, **changes)

    @classmethod
    def from_bundle(cls, recorded: Mapping[str, Any]) -> Recipe:
        """Rebuild the recipe a bundle was trained with from its `recipe` dict.

        Keys of the run record (data, weights, run) are skipped. Keys that
        this version of the code does not define are skipped with a warning,
        so a retrain can start from an older bundle's recipe.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        values = {}
        for key, value in recorded.items():
            if key in RUN_RECORD_KEYS:
                continue
            if key not in known:
                logger.warning("skipping recipe key %r from the bundle: this version does not define it", key)
                continue
            values[key] = value
        return cls.from_mapping(values)


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Convert a config value to the field's type, raising ValueError on a mismatch."""
    kind = type(field.default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"recipe.{field.name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"recipe.{field.name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"recipe.{field.name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"recipe.{field.name} must be a string, got {value!r}")
    return value


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a recipe config file: JSON (`.json`) or YAML (`.yaml`, `.yml`).

    The file contains a mapping of recipe keys. A top-level `recipe` key, as
    written in bundle.json, is also accepted.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text)
    elif path.suffix.lower() == ".json":
        values = json.loads(text)
    else:
        raise ValueError(f"config file {path} must end in .json, .yaml or .yml")
    if isinstance(values, dict) and isinstance(values.get("recipe"), dict):
        values = {key: value for key, value in values["recipe"].items() if key not in RUN_RECORD_KEYS}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must contain a mapping of recipe keys, got {type(values).__name__}")
    logger.info("read %d recipe values from %s", len(values), path)
    return values


def resolve_recipe(config: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Layer the defaults, an optional config file and flag overrides into one recipe."""
    recipe = Recipe()
    if config is not None:
        recipe = Recipe.from_mapping(read_config(config), base=recipe)
    if overrides:
        recipe = Recipe.from_mapping({key: value for key, value in overrides.items() if value is not None}, base=recipe)
    return recipe


def recipe_fields() -> list[dataclasses.Field]:
    """Return the recipe's fields, in declaration order, for building command-line flags."""
    return list(dataclasses.fields(Recipe))
