"""ConvNeXt-Tiny with a replaceable classification head (torch only).

`FlowerNet` is torchvision's ConvNeXt-Tiny split into a backbone
(`features` + global average pooling, 768 features per image) and a head,
`Sequential(Flatten(1), LayerNorm(768, eps=1e-6), Linear(768, num_classes))`.
The head LayerNorm is torchvision's `LayerNorm2d` of the original classifier
applied after pooling, which is the same computation on a 1 × 1 map, so
ImageNet weights carry over unchanged and only the Linear layer is new.

Trade-offs: the split lets training cache backbone features and fit the head
alone, and lets a new label set swap only the Linear layer. The cost is that
the head's state dict keys (`classifier.1.*`, `classifier.2.*`) differ from
torchvision's, so a torchvision checkpoint goes through
`load_torchvision_state_dict`.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ConvNeXt_Tiny_Weights, convnext_tiny

logger = logging.getLogger(__name__)

ARCHITECTURE = "convnext_tiny"
FEATURE_DIM = 768
IMAGENET_CHECKPOINT_NAME = "convnext_tiny-983f1562.pth"


class FlowerNet(nn.Module):
    """ConvNeXt-Tiny backbone plus a LayerNorm + Linear head over `num_classes` classes."""

    def __init__(self, num_classes: int, *, stochastic_depth_prob: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        base = convnext_tiny(weights=None, stochastic_depth_prob=stochastic_depth_prob)
        self.features = base.features
        self.avgpool = base.avgpool
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.LayerNorm(FEATURE_DIM, eps=1e-6),
            nn.Linear(FEATURE_DIM, num_classes),
        )
        _init_linear(self.classifier[2])
        self._backbone_frozen = False

    @property
    def head(self) -> nn.Sequential:
        """The classification head: Flatten, LayerNorm(768), Linear(768, num_classes)."""
        return self.classifier

    @property
    def num_classes(self) -> int:
        """Number of output logits."""
        return self.classifier[2].out_features

    @property
    def backbone_frozen(self) -> bool:
        """Whether `freeze_backbone` was called."""
        return self._backbone_frozen

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, 3, H, W) to pooled backbone features (N, 768)."""
        x = self.features(x)
        x = self.avgpool(x)
        return torch.flatten(x, 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Map pooled features (N, 768) to logits (N, num_classes)."""
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear layer for a new label set; the head LayerNorm keeps its weights."""
        old = self.classifier[2]
        new = nn.Linear(FEATURE_DIM, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        _init_linear(new)
        self.classifier[2] = new

    def freeze_backbone(self) -> None:
        """Stop gradients into the backbone and keep it in eval mode, also after `train()`.

        Eval mode matters because ConvNeXt's stochastic depth drops whole blocks
        in training mode, which would make frozen features random.
        """
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)
        self._backbone_frozen = True
        self.features.eval()

    def unfreeze_backbone(self) -> None:
        """Undo `freeze_backbone`; the backbone follows the module's train/eval mode again."""
        for parameter in self.features.parameters():
            parameter.requires_grad_(True)
        self._backbone_frozen = False
        self.features.train(self.training)

    def train(self, mode: bool = True) -> FlowerNet:
        super().train(mode)
        if self._backbone_frozen:
            self.features.eval()
        return self


def _init_linear(linear: nn.Linear) -> None:
    # The same initialization torchvision's ConvNeXt gives its Linear layers.
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.zeros_(linear.bias)


def build_model(
    num_classes: int,
    *,
    backbone_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    stochastic_depth_prob: float = 0.1,
) -> FlowerNet:
    """Build a `FlowerNet`, optionally starting from torchvision ImageNet weights.

    `backbone_weights` is None (random init), `"imagenet"` (torchvision's
    `ConvNeXt_Tiny_Weights.IMAGENET1K_V1`, see `imagenet_weights`), a path to a
    torchvision ConvNeXt-Tiny checkpoint, or such a state dict. Only the
    backbone and the head LayerNorm are copied; the Linear layer stays random.
    """
    model = FlowerNet(num_classes, stochastic_depth_prob=stochastic_depth_prob)
    if backbone_weights is None:
        return model
    if isinstance(backbone_weights, Mapping):
        state_dict = backbone_weights
    elif backbone_weights == "imagenet":
        state_dict = imagenet_weights()
    else:
        state_dict = imagenet_weights(backbone_weights)
    load_torchvision_state_dict(model, state_dict)
    return model


def load_torchvision_state_dict(model: FlowerNet, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy a torchvision ConvNeXt-Tiny state dict into `model`'s backbone and head LayerNorm.

    Expects torchvision's keys: `features.*`, `classifier.0.weight/bias` (the
    LayerNorm2d), and `classifier.2.*` (the 1000-class Linear, which is
    dropped). A `module.` prefix from DataParallel is removed. Returns the keys
    of `model` that were filled; raises `ValueError` naming missing keys or
    mismatched shapes.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]  # a training checkpoint that wraps the weights
    source = {key.removeprefix("module."): value for key, value in state_dict.items()}

    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key in target:
        if key.startswith("features."):
            source_key = key
        elif key in ("classifier.1.weight", "classifier.1.bias"):
            source_key = "classifier.0." + key.rsplit(".", 1)[1]
        else:
            continue
        if source_key not in source:
            continue
        value = source[source_key]
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"shape mismatch for {source_key}: checkpoint has {tuple(value.shape)}, "
                f"ConvNeXt-Tiny expects {tuple(target[key].shape)}; is this a convnext_tiny checkpoint?"
            )
        mapped[key] = value

    expected = [key for key in target if key.startswith("features.") or key.startswith("classifier.1.")]
    missing = [key for key in expected if key not in mapped]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"the checkpoint lacks {len(missing)} ConvNeXt-Tiny weights: {shown}")

    model.load_state_dict(mapped, strict=False)
    logger.info("copied %d backbone tensors from a torchvision checkpoint", len(mapped))
    return sorted(mapped)


# Exceptions from torch.load on a damaged or truncated checkpoint, and from a failed download.
_CHECKPOINT_READ_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


def imagenet_checkpoint_path() -> Path:
    """Return where torch hub caches the ImageNet ConvNeXt-Tiny checkpoint (`$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_CHECKPOINT_NAME


def imagenet_weights(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Return torchvision's ImageNet-1k ConvNeXt-Tiny state dict.

    With `path`, reads that local checkpoint. Otherwise torchvision loads it
    from the torch hub cache, downloading it first when the cache lacks it.
    On a machine without network access, copy `convnext_tiny-983f1562.pth`
    (from `ConvNeXt_Tiny_Weights.IMAGENET1K_V1.url`) into
    `$TORCH_HOME/hub/checkpoints/` or pass its path.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet checkpoint not found: {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except _CHECKPOINT_READ_ERRORS as error:
            raise RuntimeError(f"could not read the ImageNet checkpoint {path} ({error}); the file is damaged or not a PyTorch checkpoint") from error

    weights = ConvNeXt_Tiny_Weights.IMAGENET1K_V1
    cached = imagenet_checkpoint_path()
    if not cached.is_file():
        logger.info("downloading ImageNet ConvNeXt-Tiny weights from %s to %s", weights.url, cached)
    try:
        return weights.get_state_dict(progress=True)
    except _CHECKPOINT_READ_ERRORS as error:
        if cached.is_file():
            raise RuntimeError(
                f"could not read the cached ImageNet ConvNeXt-Tiny weights at {cached} ({error}); the file is "
                f"damaged, for example by an interrupted download. Delete it and run again to download "
                f"{weights.url}, or place a good copy there"
            ) from error
        raise RuntimeError(
            f"could not load the ImageNet ConvNeXt-Tiny weights ({error}). Without network access, "
            f"download {weights.url} elsewhere and place it at {cached} (the torch hub cache under "
            f"$TORCH_HOME), or pass the file's local path as the backbone weights"
        ) from error
