"""Starting weights for training: `imagenet`, `none`, or a local file or bundle.

- `imagenet`: torchvision's ConvNeXt_Tiny_Weights.IMAGENET1K_V1, from the
  torch hub cache (`$TORCH_HOME/hub/checkpoints/convnext_tiny-983f1562.pth`)
  or downloaded into it.
- `none`: random initialization from the recipe seed.
- a file: a torchvision 1000-class ConvNeXt-Tiny state dict (backbone and
  head LayerNorm are copied, the Linear layer starts random), or a FlowerNet
  state dict (`model.pt` of a bundle).
- a bundle directory: its backbone and head LayerNorm. Its Linear layer is
  kept when its label set has the same class ids in the same order.
  Otherwise the training label set gets a new Linear layer.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from classifier.bundle import MANIFEST_NAME, Bundle
from classifier.labels import LabelSet
from classifier.model import FlowerNet, build_model, imagenet_weights, load_torchvision_state_dict
from training.errors import InputError

logger = logging.getLogger(__name__)

LINEAR_KEYS = ("classifier.2.weight", "classifier.2.bias")
ACCEPTED_WEIGHTS = "pass a torchvision ConvNeXt-Tiny state dict, a flowerbot bundle directory, 'imagenet' or 'none'"


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """The origin of the starting weights, stored in the bundle's recipe."""

    kind: str  # imagenet, none, torchvision_file, flowernet_file, bundle
    source: str | None = None
    head: str = "new"  # "new" (random Linear layer) or "kept" (from a bundle with the same labels)
    bundle_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_flowernet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    weight = state_dict.get("classifier.1.weight")
    return weight is not None and weight.ndim == 1


def _load_flowernet_backbone(model: FlowerNet, state_dict: Mapping[str, torch.Tensor], *, keep_linear: bool) -> None:
    """Copy a FlowerNet state dict into `model`, without the final Linear layer unless `keep_linear`."""
    selected = {key: value for key, value in state_dict.items() if keep_linear or key not in LINEAR_KEYS}
    missing, unexpected = model.load_state_dict(selected, strict=False)
    missing = [key for key in missing if keep_linear or key not in LINEAR_KEYS]
    if missing or unexpected:
        raise ValueError(
            f"the weights do not fit ConvNeXt-Tiny FlowerNet: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def read_state_dict_file(path: Path) -> Any:
    """Load a weights file with `torch.load(weights_only=True)`; raise InputError when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # A damaged or foreign file fails in many ways inside torch.load (UnpicklingError, RuntimeError,
        # KeyError, EOFError). torch's message suggests weights_only=False, which would run code from the file.
        raise InputError(f"could not read weights file {path}: {_load_failure_reason(error)}; {ACCEPTED_WEIGHTS}") from error


def _load_failure_reason(error: Exception) -> str:
    """Return one line on why torch.load failed, without its advice to turn off weights_only."""
    if isinstance(error, pickle.UnpicklingError):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("Unsupported")), None)
        return f"not a tensor-only PyTorch file ({detail})" if detail else "not a tensor-only PyTorch file"
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    message = message.split("  (Could this error message be improved?")[0]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def build_starting_model(weights: str | Path, labels: LabelSet, *, seed: int) -> tuple[FlowerNet, WeightsInfo]:
    """Build a FlowerNet for `labels` from a weights spec: 'imagenet', 'none', a file or a bundle directory.

    Random parts (the whole model for 'none', the Linear layer otherwise) are
    drawn after `torch.manual_seed(seed)`, so they are the same on every run.
    """
    spec = str(weights)
    torch.manual_seed(seed)
    num_classes = len(labels)

    if spec == "none":
        return build_model(num_classes), WeightsInfo(kind="none")

    if spec == "imagenet":
        try:
            state_dict = imagenet_weights()
        except RuntimeError as error:
            # classifier.model wraps download and cache failures into a message that says how to fix them.
            raise InputError(str(error)) from error
        model = build_model(num_classes)
        load_torchvision_state_dict(model, state_dict)
        return model, WeightsInfo(kind="imagenet", source="torchvision ConvNeXt_Tiny_Weights.IMAGENET1K_V1")

    path = Path(spec)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"--weights {path} is a directory without {MANIFEST_NAME}; pass a bundle directory or a state dict file")
        bundle = Bundle.load(path)
        keep_linear = bundle.labels.matches(labels)
        model = build_model(num_classes)
        _load_flowernet_backbone(model, bundle.state_dict(), keep_linear=keep_linear)
        head = "kept" if keep_linear else "new"
        logger.info(
            "starting from bundle %s (%s): %s head",
            bundle.version,
            path,
            "its" if keep_linear else f"a new {num_classes}-class",
        )
        return model, WeightsInfo(kind="bundle", source=str(path.resolve()), head=head, bundle_version=bundle.version)

    if not path.is_file():
        raise FileNotFoundError(
            f"--weights {spec!r} is neither 'imagenet', 'none', a state dict file nor a bundle directory"
        )
    state_dict = read_state_dict_file(path)
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} does not contain a state dict (found {type(state_dict).__name__})")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    model = build_model(num_classes)
    if _is_flowernet_state_dict(state_dict):
        # A bare FlowerNet state dict records no classes, so its Linear layer is not reused.
        _load_flowernet_backbone(model, state_dict, keep_linear=False)
        return model, WeightsInfo(kind="flowernet_file", source=str(path.resolve()))
    load_torchvision_state_dict(model, state_dict)
    return model, WeightsInfo(kind="torchvision_file", source=str(path.resolve()))
