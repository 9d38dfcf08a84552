"""The training loop parts: schedule, clipping, early stopping, sampling, the frozen backbone."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from classifier.model import build_model
from tests.test_training_data import make_image_folder
from training.data import DataSpec, SeededViews, load_splits
from training.engine import (
    EarlyStopping,
    EpochSampler,
    EpochStats,
    build_optimizer,
    build_scheduler,
    gradient_norm,
    sample_weights,
    should_weight_samples,
    train_plain_epoch,
    train_step,
)
from training.features import FeatureCache, train_head_epoch
from training.presets import train_preset
from training.recipe import Recipe
from training.train import fit


def make_head(num_classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(1), nn.LayerNorm(768, eps=1e-6), nn.Linear(768, num_classes))


def random_cache(samples: int = 20, views: int = 2, num_classes: int = 3) -> FeatureCache:
    generator = torch.Generator().manual_seed(1)
    return FeatureCache(
        train=torch.randn(samples, views, 768, generator=generator),
        train_labels=torch.arange(samples) % num_classes,
        val=torch.randn(6, 768, generator=generator),
        val_labels=torch.arange(6) % num_classes,
        fingerprint="test",
    )


def test_cosine_schedule_per_batch():
    recipe = Recipe(epochs=3, batch_size=4, eta_min=1e-6, lr=5e-4)
    head = make_head()
    cache = random_cache(samples=10)
    sampler = EpochSampler(10, seed=0, cached_views=2)
    batches_per_epoch = math.ceil(len(sampler) / recipe.batch_size)
    optimizer = build_optimizer(head, recipe)
    scheduler = build_scheduler(optimizer, recipe, batches_per_epoch)
    learning_rates = []
    for epoch in range(recipe.epochs):
        sampler.set_epoch(epoch)
        stats = train_head_epoch(head, cache, sampler, optimizer=optimizer, scheduler=scheduler, recipe=recipe, device=torch.device("cpu"))
        learning_rates.append(stats.lr)
    assert scheduler.last_epoch == recipe.epochs * batches_per_epoch
    assert learning_rates[0] < recipe.lr
    assert learning_rates[0] > learning_rates[1] > learning_rates[2]
    assert learning_rates[-1] == pytest.approx(recipe.eta_min, abs=1e-12)


def test_weight_decay_skips_norm_and_bias():
    optimizer = build_optimizer(make_head(), Recipe())
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05
    assert [tuple(p.shape) for p in decayed["params"]] == [(3, 768)]
    assert undecayed["weight_decay"] == 0.0
    assert len(undecayed["params"]) == 3


def huge_loss_step(clip: float) -> tuple[float, float]:
    head = make_head()
    with torch.no_grad():
        head[2].weight.mul_(1000.0)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.0)
    inputs = torch.randn(8, 768) * 1e4
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    parameters = list(head.parameters())
    step = train_step(head, inputs, targets, optimizer=optimizer, scheduler=None, parameters=parameters, clip_grad_norm=clip)
    return step.grad_norm, gradient_norm(parameters)


def test_clipping_bounds_the_gradient_norm():
    before, after = huge_loss_step(clip=1.0)
    assert before > 10.0
    assert after <= 1.0 + 1e-5


def test_without_clipping_the_gradient_stays_large():
    before, after = huge_loss_step(clip=0.0)
    assert after == pytest.approx(before, rel=1e-5)
    assert after > 10.0


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=3)
    sequence = [0.50, 0.60, 0.60, 0.55, 0.59, 0.70]
    stopped_at = None
    for epoch, value in enumerate(sequence):
        stopper.update(value, epoch)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 4
    assert stopper.best == 0.60
    assert stopper.best_epoch == 1


def test_early_stopping_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    for epoch in range(10):
        stopper.update(0.5, epoch)
    assert not stopper.should_stop


def test_fit_stops_after_patience_and_restores_best_weights():
    module = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    accuracies = iter([0.3, 0.8, 0.7, 0.75, 0.79, 0.9, 0.95])
    epochs_run = []

    def run_epoch(epoch: int) -> EpochStats:
        # Weights that name the epoch, so the restored state shows which epoch it came from.
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        epochs_run.append(epoch)
        return EpochStats(loss=1.0, accuracy=0.5, lr=0.1, samples=4, max_grad_norm=0.0)

    result = fit(
        trained=module,
        run_epoch=run_epoch,
        validate=lambda: (next(accuracies), 1.0),
        recipe=Recipe(epochs=10, patience=3),
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=None,
    )
    assert epochs_run == [0, 1, 2, 3, 4]
    assert result["stopped_early"] is True
    assert result["best_epoch"] == 2
    assert result["best_val_acc"] == 0.8
    assert torch.all(module.weight == 1.0)
    assert [record["val_acc"] for record in result["history"]] == [0.3, 0.8, 0.7, 0.75, 0.79]


def test_weighted_sampler_draws_classes_evenly():
    labels = [0] * 90 + [1] * 10
    recipe = Recipe()
    assert should_weight_samples(recipe, labels, 2)
    sampler = EpochSampler(len(labels), seed=3, weights=sample_weights(labels, 2))
    drawn = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn.update(labels[index] for index, _ in sampler)
    share = drawn[1] / sum(drawn.values())
    assert 0.45 < share < 0.55


def test_uniform_sampler_keeps_the_imbalance():
    labels = [0] * 90 + [1] * 10
    assert not should_weight_samples(Recipe(sampler="uniform"), labels, 2)
    sampler = EpochSampler(len(labels), seed=3)
    drawn = Counter(labels[index] for index, _ in sampler)
    assert drawn == {0: 90, 1: 10}


def test_auto_sampler_follows_the_imbalance_ratio():
    assert not should_weight_samples(Recipe(imbalance_ratio=1.5), [0] * 14 + [1] * 10, 2)
    assert should_weight_samples(Recipe(imbalance_ratio=1.5), [0] * 16 + [1] * 10, 2)


def test_epoch_sampler_is_seeded_per_epoch():
    sampler = EpochSampler(30, seed=1, cached_views=4)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert first != second
    assert {view for _, view in first} <= set(range(4))


def test_epoch_sampler_shards_across_processes():
    shards = [EpochSampler(11, seed=2, rank=rank, world_size=3) for rank in range(3)]
    keys = [list(shard) for shard in shards]
    assert [len(part) for part in keys] == [4, 4, 4]
    indices = Counter(index for part in keys for index, _ in part)
    assert set(indices) == set(range(11))
    assert sum(indices.values()) == 12  # one key repeated to pad 11 to 12


def test_frozen_backbone_is_unchanged_after_an_epoch(tmp_path):
    make_image_folder(tmp_path, {"a": 2, "b": 2})
    splits = load_splits(DataSpec(source=str(tmp_path)))
    recipe = Recipe(crop_size=64, resize_size=72, batch_size=2, epochs=1, precision="fp32")
    torch.manual_seed(0)
    model = build_model(2)
    model.freeze_backbone()
    backbone_before = {key: value.clone() for key, value in model.features.state_dict().items()}
    head_before = {key: value.clone() for key, value in model.head.state_dict().items()}

    sampler = EpochSampler(len(splits.train), seed=0)
    loader = DataLoader(SeededViews(splits.train, train_preset(recipe), 0), batch_size=2, sampler=sampler)
    optimizer = build_optimizer(model.head, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(loader))
    modes_during_training = []
    original_forward = model.features.forward

    def recording_forward(x):
        modes_during_training.append((model.training, model.features.training, any(m.training for m in model.features.modules())))
        return original_forward(x)

    model.features.forward = recording_forward
    train_plain_epoch(
        model,
        loader,
        trained=model.head,
        optimizer=optimizer,
        scheduler=scheduler,
        recipe=recipe,
        device=torch.device("cpu"),
        precision="fp32",
        num_classes=2,
        show_progress_bar=False,
    )
    assert modes_during_training == [(True, False, False)] * 2
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert not torch.equal(model.head[2].weight, head_before["2.weight"])
    assert all(not parameter.requires_grad for parameter in model.features.parameters())
