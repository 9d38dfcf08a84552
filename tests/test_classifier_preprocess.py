"""NumPy preprocessing against torchvision's eval transform."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from classifier.preprocess import Preprocessing, resize_and_crop, resized_size, to_array

transforms = pytest.importorskip("torchvision.transforms")


def torchvision_eval(spec: Preprocessing):
    return transforms.Compose(
        [
            transforms.Resize(spec.resize),
            transforms.CenterCrop(spec.crop),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


def noise_picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "size",
    [(320, 240), (240, 320), (256, 256), (257, 1000), (1001, 333), (224, 224), (100, 80), (300, 200)],
    ids=lambda size: f"{size[0]}x{size[1]}",
)
def test_matches_torchvision_on_made_images(size: tuple[int, int]):
    spec = Preprocessing()
    image = noise_picture(*size, seed=size[0] * 7 + size[1])

    ours = to_array(image, spec)
    reference = torchvision_eval(spec)(image).numpy()

    assert ours.shape == (3, 224, 224)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-5


def test_matches_torchvision_on_photos(flowers5_val_photos):
    spec = Preprocessing()
    reference_transform = torchvision_eval(spec)
    for path in flowers5_val_photos[::40]:
        image = Image.open(path).convert("RGB")

        difference = np.abs(to_array(image, spec) - reference_transform(image).numpy()).max()

        assert difference < 1e-5, f"{path.name}: {difference}"


def test_other_sizes_match_torchvision():
    spec = Preprocessing(resize=160, crop=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    image = noise_picture(400, 300, seed=3)

    ours = to_array(image, spec)
    reference = torchvision_eval(spec)(image).numpy()

    assert ours.shape == (3, 128, 128)
    assert np.abs(ours - reference).max() < 1e-5


def test_resized_size_truncates_like_torchvision():
    assert resized_size(1001, 333, 256) == (769, 256)
    assert resized_size(333, 1001, 256) == (256, 769)
    assert resized_size(500, 500, 256) == (256, 256)


def test_non_rgb_input_is_converted():
    gray = Image.new("L", (300, 300), 128)

    array = to_array(gray)

    expected = (128 / 255 - np.array(Preprocessing().mean)) / np.array(Preprocessing().std)
    assert np.allclose(array[:, 100, 100], expected, atol=1e-5)


def test_dict_round_trip():
    spec = Preprocessing(resize=288, crop=256)

    assert Preprocessing.from_dict(spec.to_dict()) == spec
    assert Preprocessing.from_dict({}) == Preprocessing()


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"resize": 256, "flip": True})
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="lanczos9")
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size", [(3000, 200), (200, 3000), (5001, 257), (257, 5001), (50, 999)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_window_resize_matches_full_resize(size: tuple[int, int], interpolation: str):
    spec = Preprocessing(interpolation=interpolation)
    image = noise_picture(*size, seed=size[0] + size[1])

    full = np.asarray(resize_and_crop(image, spec), dtype=np.int16)
    window = np.asarray(resize_and_crop(image, spec, max_side=300), dtype=np.int16)

    assert window.shape == full.shape == (224, 224, 3)
    assert np.abs(window - full).max() <= 1
    assert np.mean(window != full) < 0.001


@pytest.mark.parametrize("size", [(160000, 1), (1, 160000)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_extreme_aspect_ratio_stays_small(size: tuple[int, int]):
    # A full resize of 160000x1 to a short side of 256 would allocate about 39 GiB
    # (40960000 x 256 pixels, 4 bytes each in Pillow).
    spec = Preprocessing()
    image = Image.new("RGB", size, (40, 160, 60))

    array = to_array(image, spec)

    expected = (np.array([40, 160, 60]) / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    assert array.shape == (3, 224, 224)
    assert np.abs(array - expected[:, None, None].astype(np.float32)).max() < 1e-5
