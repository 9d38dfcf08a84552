"""The feature-cache path against the plain path, and the cache file itself."""

from __future__ import annotations

import pytest
import torch

from classifier.bundle import Bundle
from classifier.model import build_model
from tests.test_training_data import make_image_folder
from training.data import DataSpec, Sample, SeededViews, load_splits
from training.features import FeatureCache, cache_fingerprint, extract_features
from training.presets import train_preset
from training.recipe import Recipe
from training.train import train

# Small inputs keep the backbone cheap on a CPU; ConvNeXt-Tiny accepts any side divisible by 32.
TINY = {"crop_size": 64, "resize_size": 72, "workers": 0, "ood_synthetic": 0, "precision": "fp32"}


@pytest.mark.slow
def test_cached_and_plain_paths_train_the_same_head(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 2}, val_count=1)
    recipe = Recipe(epochs=3, batch_size=2, views=2, patience=0, seed=11, **TINY)

    cached = train(recipe, str(data), "none", tmp_path / "cached", show_progress_bar=False)
    plain = train(
        recipe.replace(feature_cache=False, fixed_views=True), str(data), "none", tmp_path / "plain", show_progress_bar=False
    )

    assert cached.recipe["run"]["path"] == "feature_cache"
    assert plain.recipe["run"]["path"] == "plain"
    cached_state = Bundle.load(tmp_path / "cached").state_dict()
    plain_state = Bundle.load(tmp_path / "plain").state_dict()
    for key in ("classifier.1.weight", "classifier.1.bias", "classifier.2.weight", "classifier.2.bias"):
        assert torch.allclose(cached_state[key], plain_state[key], atol=1e-5), key
    # Training moved the head away from its initialization, so the equality above is not trivial.
    torch.manual_seed(recipe.seed)
    initial = build_model(2).state_dict()
    assert not torch.allclose(initial["classifier.2.weight"], cached_state["classifier.2.weight"], atol=1e-4)
    for cached_epoch, plain_epoch in zip(cached.metrics["history"], plain.metrics["history"]):
        assert abs(cached_epoch["train_loss"] - plain_epoch["train_loss"]) < 1e-4
        assert cached_epoch["val_acc"] == plain_epoch["val_acc"]


@pytest.mark.slow
def test_fresh_views_differ_from_cached_views(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 2}, val_count=1)
    recipe = Recipe(epochs=2, batch_size=2, views=2, patience=0, seed=11, **TINY)
    cached = train(recipe, str(data), "none", tmp_path / "cached", show_progress_bar=False)
    fresh = train(recipe.replace(feature_cache=False), str(data), "none", tmp_path / "fresh", show_progress_bar=False)
    cached_state = Bundle.load(tmp_path / "cached").state_dict()
    fresh_state = Bundle.load(tmp_path / "fresh").state_dict()
    assert not torch.allclose(cached_state["classifier.2.weight"], fresh_state["classifier.2.weight"], atol=1e-6)


def test_feature_cache_round_trip_checks_fingerprint(tmp_path):
    cache = FeatureCache(
        train=torch.randn(3, 2, 768),
        train_labels=torch.tensor([0, 1, 0]),
        val=torch.randn(2, 768),
        val_labels=torch.tensor([0, 1]),
        fingerprint="abc",
    )
    cache.save(tmp_path / "features.pt")
    loaded = FeatureCache.load(tmp_path / "features.pt", "abc")
    assert loaded is not None
    assert torch.equal(loaded.train, cache.train)
    assert loaded.views == 2
    assert FeatureCache.load(tmp_path / "features.pt", "other") is None


def test_fingerprint_changes_with_views_and_weights(tmp_path):
    samples = [Sample(tmp_path / "x.jpg", 0)]
    torch.manual_seed(0)
    model = build_model(2)
    base = cache_fingerprint(model, samples, samples, Recipe(), "fp32")
    assert cache_fingerprint(model, samples, samples, Recipe(views=2), "fp32") != base
    assert cache_fingerprint(model, samples, samples, Recipe(), "bf16") != base
    with torch.no_grad():
        model.features[0][0].weight.add_(1.0)
    assert cache_fingerprint(model, samples, samples, Recipe(), "fp32") != base


def test_extracted_features_match_a_direct_forward(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 1}, val_count=1)
    splits = load_splits(DataSpec(source=str(data)))
    recipe = Recipe(**TINY)
    torch.manual_seed(0)
    model = build_model(2)
    model.freeze_backbone()
    views = SeededViews(splits.train, train_preset(recipe), seed=4)
    keys = [(0, 0), (1, 1), (1, 0)]
    rows = extract_features(model, views, keys, device=torch.device("cpu"), precision="fp32", batch_size=2, workers=0, show_progress_bar=False)
    assert rows.values.shape == (3, 768)
    assert rows.readable.tolist() == [True, True, True]
    with torch.no_grad():
        direct = model.forward_features(torch.stack([views[key][0] for key in keys]))
    assert torch.allclose(rows.values, direct, atol=1e-5)
