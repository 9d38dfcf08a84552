"""Property tests: any bytes either decode into a 3 × 224 × 224 array or raise ImageDecodeError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from classifier.decode import ImageDecodeError, decode_image
from classifier.preprocess import to_array

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def decode_to_array(data: bytes) -> np.ndarray | None:
    """Return the preprocessed array, or None when the decoder raised ImageDecodeError.

    Any other exception fails the test.
    """
    try:
        image = decode_image(data, max_pixels=4_000_000)
    except ImageDecodeError as error:
        assert error.reason in ("empty", "not_image", "truncated", "too_large", "unsupported")
        return None
    array = to_array(image)
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    assert np.isfinite(array).all()
    return array


def test_made_up_jpeg_decodes():
    assert decode_to_array(made_jpeg()) is not None


def made_jpeg() -> bytes:
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack([x * 2, y * 2, (x * y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85, exif=Image.Exif())
    return buffer.getvalue()


def made_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def mutations(draw, original: bytes) -> bytes:
    """Flip, overwrite, insert or delete bytes of `original`, or cut it short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate", "flip"]))
        if not data:
            break
        position = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if kind == "overwrite":
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "flip":
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(min_value=1, max_value=64))]
        else:
            del data[position:]
    return bytes(data)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes):
    decode_to_array(data)


@FUZZ_SETTINGS
@given(data=st.one_of(st.binary(max_size=64).map(lambda tail: b"\xff\xd8\xff\xe0" + tail),
                      st.binary(max_size=64).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
                      st.binary(max_size=64).map(lambda tail: b"GIF89a" + tail),
                      st.binary(max_size=64).map(lambda tail: b"RIFF\x00\x00\x00\x00WEBPVP8 " + tail)))
def test_bytes_after_real_signatures(data: bytes):
    decode_to_array(data)


@FUZZ_SETTINGS
@given(data=mutations(made_jpeg()))
def test_mutated_made_jpeg(data: bytes):
    decode_to_array(data)


@FUZZ_SETTINGS
@given(data=mutations(made_png()))
def test_mutated_made_png(data: bytes):
    decode_to_array(data)


@pytest.fixture(scope="module")
def real_jpeg(flowers5_val_photos: list[Path]) -> bytes:
    return flowers5_val_photos[len(flowers5_val_photos) // 2].read_bytes()


@FUZZ_SETTINGS
@given(seed_data=st.data())
def test_mutated_real_jpeg(real_jpeg: bytes, seed_data):
    data = seed_data.draw(mutations(real_jpeg))

    decode_to_array(data)
