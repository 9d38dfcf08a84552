"""The recipe: defaults, config files, command-line overrides, and the presets built from it."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision.transforms import transforms as T

from training.__main__ import build_parser, main
from training.presets import eval_preset, train_preset
from training.recipe import Recipe, read_config, resolve_recipe


def test_defaults_match_the_documented_recipe():
    recipe = Recipe()
    assert recipe.lr == 5e-4
    assert recipe.weight_decay == 0.05
    assert recipe.eta_min == 1e-6
    assert recipe.batch_size == 64
    assert recipe.epochs == 100
    assert recipe.clip_grad_norm == 1.0
    assert recipe.patience == 3
    assert recipe.sampler == "auto"
    assert recipe.cutmix_prob == 0.0
    assert recipe.finetune is False
    assert recipe.feature_cache is True
    assert recipe.uses_feature_cache is True
    assert (recipe.crop_size, recipe.resize_size) == (224, 256)
    assert (recipe.hflip_prob, recipe.brightness, recipe.contrast, recipe.rotation_degrees) == (0.5, 0.2, 0.2, 30.0)


def test_feature_cache_needs_frozen_backbone_and_no_cutmix():
    assert not Recipe(finetune=True).uses_feature_cache
    assert not Recipe(cutmix_prob=0.5).uses_feature_cache
    assert not Recipe(feature_cache=False).uses_feature_cache


def test_yaml_config_then_flags_override(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("lr: 0.001\nepochs: 7\nbatch-size: 16\n", encoding="utf-8")
    recipe = resolve_recipe(config, {"epochs": 3, "seed": None})
    assert recipe.lr == 0.001
    assert recipe.batch_size == 16
    assert recipe.epochs == 3
    assert recipe.seed == 0


def test_bundle_json_recipe_is_a_valid_config(tmp_path):
    config = tmp_path / "bundle.json"
    recorded = {**Recipe(views=2).to_dict(), "data": {"source": "x"}, "weights": {"kind": "none"}, "run": {}}
    config.write_text(json.dumps({"format": 1, "recipe": recorded}), encoding="utf-8")
    assert resolve_recipe(config).views == 2
    assert Recipe.from_bundle(recorded).views == 2


def test_unknown_config_key_is_rejected(tmp_path):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"learning_rate": 0.1}), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown recipe key 'learning_rate'"):
        resolve_recipe(config)


def test_config_with_wrong_type_is_rejected(tmp_path):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"epochs": "ten"}), encoding="utf-8")
    with pytest.raises(ValueError, match="recipe.epochs must be an integer"):
        read_config(config) and resolve_recipe(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": 0.0}, "recipe.lr must be positive"),
        ({"eta_min": 1.0}, "must be below recipe.lr"),
        ({"cutmix_prob": 1.5}, "recipe.cutmix_prob must be within"),
        ({"sampler": "balanced"}, "recipe.sampler must be one of"),
        ({"resize_size": 200}, "must be >= recipe.crop_size"),
    ],
)
def test_invalid_values_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**changes)


def test_command_line_flags_reach_the_recipe():
    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--finetune", "--no-feature-cache", "--lr", "0.01", "--views", "2"]
    )
    assert args.finetune is True
    assert args.feature_cache is False
    assert args.lr == 0.01
    assert args.views == 2
    assert args.patience is None  # unset flags leave the config file's value


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "gradcam"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--model" in text or "--data" in text
    assert "default" in text


def test_train_help_states_units_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate of AdamW (default: 0.0005)" in text
    assert "in pixels" in text
    assert "--progress-json" in text


def test_train_preset_follows_recipe():
    preset = train_preset(Recipe(crop_size=64, rotation_degrees=0.0, hflip_prob=0.0))
    kinds = [type(step) for step in preset.transforms.transforms]
    assert kinds == [T.RandomResizedCrop, T.ColorJitter, T.ToTensor, T.Normalize]
    output = preset(Image.new("RGB", (100, 80), (120, 30, 200)))
    assert output.shape == (3, 64, 64)


def test_eval_preset_matches_serving_preprocessing():
    from classifier.preprocess import Preprocessing, to_array

    image = Image.effect_mandelbrot((300, 220), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    expected = torch.from_numpy(to_array(image, Preprocessing()))
    actual = eval_preset(Recipe())(image)
    assert actual.shape == (3, 224, 224)
    assert torch.allclose(actual, expected, atol=1e-5)
