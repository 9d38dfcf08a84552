"""Property tests for the decoder beyond `test_decode_fuzz.py`: the paths and containers it does not mutate.

`test_decode_fuzz.py` feeds arbitrary bytes and mutated small JPEGs and PNGs. The
flowers5 photos are about 320 × 240, so JPEG draft decoding (short side of 1024 or
more) never runs there. Here mutations hit a large JPEG, decoded as the service does
(draft size twice the resize), and the WebP, animated GIF, TIFF, BMP and HEIC
containers. Every input must give a 3 × 224 × 224 array or raise `ImageDecodeError`.
"""

from __future__ import annotations

import io

import numpy as np
import pillow_heif
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from classifier.decode import DECODE_REASONS, ImageDecodeError, decode_image
from classifier.preprocess import Preprocessing, to_array
from tests.test_decode_fuzz import mutations
from tests.test_inputs_images import png_declaring

SPEC = Preprocessing()
MAX_PIXELS = 4_000_000
FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def textured_picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Return a picture with gradients and noise, so encoders produce many coded blocks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x ^ y) & 255], axis=-1)
    noise = rng.integers(-20, 21, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def decode_like_service(data: bytes) -> np.ndarray | None:
    """Decode and preprocess as `ClassifierService` does; None when `ImageDecodeError` was raised."""
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS, draft_size=2 * SPEC.resize)
    except ImageDecodeError as error:
        assert error.reason in DECODE_REASONS
        return None
    array = to_array(image, SPEC)
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    assert np.isfinite(array).all()
    return array


LARGE_JPEG = encode(textured_picture(1280, 1088), "JPEG", quality=80)
WEBP = encode(textured_picture(200, 150, seed=1), "WEBP", quality=80)
TIFF = encode(textured_picture(120, 90, seed=2), "TIFF", compression="tiff_lzw")
BMP = encode(textured_picture(64, 48, seed=3), "BMP")
_FRAMES = [textured_picture(80, 60, seed=seed).convert("P", palette=Image.Palette.ADAPTIVE) for seed in (4, 5)]
ANIMATED_GIF = encode(_FRAMES[0], "GIF", save_all=True, append_images=_FRAMES[1:], duration=80, loop=0)


def heic_bytes() -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(textured_picture(96, 64, seed=6)).save(buffer, quality=70)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [LARGE_JPEG, WEBP, TIFF, BMP, ANIMATED_GIF, heic_bytes()], ids=["jpeg-large", "webp", "tiff", "bmp", "gif", "heic"])
def test_unmutated_originals_decode(data: bytes) -> None:
    assert decode_like_service(data) is not None


def test_large_jpeg_is_drafted() -> None:
    decoded = decode_image(LARGE_JPEG, draft_size=2 * SPEC.resize)

    assert decoded.size == (640, 544), "draft decoding at 1/2 scale keeps the short side at least 512"


@FUZZ_SETTINGS
@given(data=mutations(LARGE_JPEG))
def test_mutated_large_jpeg(data: bytes) -> None:
    decode_like_service(data)


@FUZZ_SETTINGS
@given(data=mutations(WEBP))
def test_mutated_webp(data: bytes) -> None:
    decode_like_service(data)


# Pillow warns about each corrupt TIFF tag it skips; the warnings are expected here.
@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ_SETTINGS
@given(data=mutations(TIFF))
def test_mutated_tiff(data: bytes) -> None:
    decode_like_service(data)


@FUZZ_SETTINGS
@given(data=mutations(BMP))
def test_mutated_bmp(data: bytes) -> None:
    decode_like_service(data)


@FUZZ_SETTINGS
@given(data=mutations(ANIMATED_GIF))
def test_mutated_animated_gif(data: bytes) -> None:
    decode_like_service(data)


@pytest.fixture(scope="module")
def heic() -> bytes:
    return heic_bytes()


@FUZZ_SETTINGS
@given(seed_data=st.data())
def test_mutated_heic(heic: bytes, seed_data: st.DataObject) -> None:
    decode_like_service(seed_data.draw(mutations(heic)))


# Pillow warns when a header declares more than its own bomb limit; the decoder then rejects the file.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ_SETTINGS
@given(width=st.integers(min_value=1, max_value=65_535), height=st.integers(min_value=1, max_value=65_535))
def test_declared_size_checked_before_decoding(width: int, height: int) -> None:
    data = png_declaring(width, height)

    if width * height > MAX_PIXELS:
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(data, max_pixels=MAX_PIXELS)
        assert caught.value.reason == "too_large"
    else:
        # The header is honest about its size but carries almost no pixel data.
        decode_like_service(data)
