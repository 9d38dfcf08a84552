"""FlowerNet: shapes, head layout, frozen backbone, and copying torchvision weights."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from classifier.model import (  # noqa: E402
    FEATURE_DIM,
    FlowerNet,
    build_model,
    imagenet_checkpoint_path,
    imagenet_weights,
    load_torchvision_state_dict,
)


@pytest.fixture(scope="module")
def torchvision_state_dict() -> dict:
    torch.manual_seed(1)
    return torchvision.models.convnext_tiny(weights=None).state_dict()


@pytest.fixture(scope="module")
def model() -> FlowerNet:
    torch.manual_seed(0)
    return build_model(5).eval()


def test_output_shapes(model: FlowerNet):
    images = torch.randn(2, 3, 64, 64)

    with torch.inference_mode():
        features = model.forward_features(images)
        logits = model(images)
        head_logits = model.forward_head(features)

    assert features.shape == (2, FEATURE_DIM)
    assert logits.shape == (2, 5)
    assert torch.allclose(logits, head_logits)


def test_head_layout(model: FlowerNet):
    head = model.head

    assert isinstance(head[0], torch.nn.Flatten)
    assert isinstance(head[1], torch.nn.LayerNorm)
    assert head[1].normalized_shape == (FEATURE_DIM,)
    assert head[1].eps == 1e-6
    assert isinstance(head[2], torch.nn.Linear)
    assert (head[2].in_features, head[2].out_features) == (FEATURE_DIM, 5)
    assert model.num_classes == 5


def test_reset_classifier_keeps_layernorm():
    net = build_model(5)
    layernorm_weight = net.head[1].weight.detach().clone()

    net.reset_classifier(7)

    assert net.num_classes == 7
    assert torch.equal(net.head[1].weight, layernorm_weight)


def test_freeze_backbone_survives_train():
    net = build_model(3)

    net.freeze_backbone()
    net.train()

    assert all(not parameter.requires_grad for parameter in net.features.parameters())
    assert all(parameter.requires_grad for parameter in net.head.parameters())
    assert not any(module.training for module in net.features.modules())
    assert net.head.training
    # Stochastic depth is off in eval mode, so frozen features are deterministic in training.
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.forward_features(images), net.forward_features(images))


def test_unfreeze_backbone():
    net = build_model(3)
    net.freeze_backbone()

    net.unfreeze_backbone()
    net.train()

    assert all(parameter.requires_grad for parameter in net.features.parameters())
    assert all(module.training for module in net.features.modules())


def test_torchvision_weights_give_same_features(torchvision_state_dict: dict):
    reference = torchvision.models.convnext_tiny(weights=None)
    reference.load_state_dict(torchvision_state_dict)
    reference.eval()
    net = build_model(4, backbone_weights=torchvision_state_dict).eval()
    images = torch.randn(2, 3, 64, 64)

    with torch.inference_mode():
        # torchvision: LayerNorm2d on the pooled map, then Flatten; ours: Flatten, then LayerNorm.
        expected = reference.classifier[:2](reference.avgpool(reference.features(images)))
        ours = net.head[:2](net.forward_features(images))

    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.equal(net.head[1].weight, torchvision_state_dict["classifier.0.weight"].flatten())


def test_load_reports_copied_keys(torchvision_state_dict: dict):
    net = build_model(4)
    prefixed = {f"module.{key}": value for key, value in torchvision_state_dict.items()}

    copied = load_torchvision_state_dict(net, prefixed)

    assert "classifier.1.weight" in copied
    assert "classifier.2.weight" not in copied
    assert all(key.startswith(("features.", "classifier.1.")) for key in copied)


def test_incomplete_state_dict_is_rejected(torchvision_state_dict: dict):
    partial = {key: value for key, value in torchvision_state_dict.items() if not key.startswith("features.7")}

    with pytest.raises(ValueError, match="lacks .* ConvNeXt-Tiny weights: features.7"):
        load_torchvision_state_dict(build_model(2), partial)


def test_wrong_shapes_are_rejected(torchvision_state_dict: dict):
    broken = dict(torchvision_state_dict)
    broken["features.0.0.weight"] = torch.zeros(10, 3, 4, 4)

    with pytest.raises(ValueError, match="shape mismatch for features.0.0.weight"):
        load_torchvision_state_dict(build_model(2), broken)


@pytest.mark.slow
def test_imagenet_weights_read_from_hub_cache(tmp_path: Path, monkeypatch, torchvision_state_dict: dict):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = imagenet_checkpoint_path()
    assert cached == tmp_path / "hub" / "checkpoints" / "convnext_tiny-983f1562.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision_state_dict, cached)

    loaded = imagenet_weights()

    assert loaded.keys() == torchvision_state_dict.keys()
    assert torch.equal(loaded["features.0.0.weight"], torchvision_state_dict["features.0.0.weight"])


def test_imagenet_weights_missing_local_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        imagenet_weights(tmp_path / "absent.pth")
