"""Train and eval transforms for PIL images, built from the recipe's values."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import transforms as T

from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training.recipe import Recipe


class ClassificationPresetTrain:
    """Random augmentation of one training view.

    Every random draw comes from torch's global generator, so seeding it
    right before a call (see `training.data.render_view`) fixes the view.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        crop_scale_min: float = 0.08,
        hflip_prob: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        rotation_degrees: float = 30.0,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        steps: list = [T.RandomResizedCrop(crop_size, scale=(crop_scale_min, 1.0), interpolation=interpolation)]
        if hflip_prob > 0:
            steps.append(T.RandomHorizontalFlip(hflip_prob))
        if brightness > 0 or contrast > 0:
            steps.append(T.ColorJitter(brightness=brightness, contrast=contrast))
        if rotation_degrees > 0:
            steps.append(T.RandomRotation(rotation_degrees, interpolation=interpolation))
        steps += [T.ToTensor(), T.Normalize(mean, std)]
        self.transforms = T.Compose(steps)

    def __call__(self, image) -> torch.Tensor:
        return self.transforms(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r})"


class ClassificationPresetEval:
    """Deterministic evaluation view: resize the short side, center crop, normalize."""

    def __init__(
        self,
        *,
        crop_size: int,
        resize_size: int,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.transforms = T.Compose(
            [
                T.Resize(resize_size, interpolation=interpolation),
                T.CenterCrop(crop_size),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )

    def __call__(self, image) -> torch.Tensor:
        return self.transforms(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r})"


def train_preset(recipe: Recipe) -> ClassificationPresetTrain:
    return ClassificationPresetTrain(
        crop_size=recipe.crop_size,
        crop_scale_min=recipe.crop_scale_min,
        hflip_prob=recipe.hflip_prob,
        brightness=recipe.brightness,
        contrast=recipe.contrast,
        rotation_degrees=recipe.rotation_degrees,
        interpolation=InterpolationMode(recipe.interpolation),
    )


def eval_preset(recipe: Recipe) -> ClassificationPresetEval:
    return ClassificationPresetEval(
        crop_size=recipe.crop_size,
        resize_size=recipe.resize_size,
        interpolation=InterpolationMode(recipe.interpolation),
    )
