"""Decoding untrusted image bytes: orientation, modes, formats, limits and damaged files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from classifier.decode import ImageDecodeError, decode_image
from classifier.preprocess import to_array


def make_picture(width: int = 160, height: int = 120) -> Image.Image:
    """Return an asymmetric RGB test picture, so flips and rotations are visible."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [
            (x * 255 // max(width - 1, 1)),
            (y * 255 // max(height - 1, 1)),
            ((x + 2 * y) % 97) * 2,
        ],
        axis=-1,
    ).astype(np.uint8)
    pixels[: height // 4, : width // 3] = (250, 20, 20)  # a red block in the top-left corner
    return Image.fromarray(pixels)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def pixels_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# Orientation -> the transform that turns the upright picture into the stored one
# (the inverse of what a viewer applies).
STORED_FROM_UPRIGHT = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# Orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_all_eight(orientation: int):
    upright = make_picture()
    transform = STORED_FROM_UPRIGHT[orientation]
    stored = upright.transpose(transform) if transform is not None else upright
    data = encode(stored, "PNG", exif=exif_with_orientation(orientation))

    decoded = decode_image(data)

    assert decoded.size == upright.size
    assert np.array_equal(pixels_of(decoded), pixels_of(upright))


def test_jpeg_orientation_6_equals_manual_rotation():
    sideways = make_picture(200, 120).transpose(Image.Transpose.ROTATE_90)
    plain = encode(sideways, "JPEG", quality=90)
    tagged = encode(sideways, "JPEG", quality=90, exif=exif_with_orientation(6))

    decoded = decode_image(tagged)
    by_hand = decode_image(plain).transpose(Image.Transpose.ROTATE_270)

    assert decoded.size == (200, 120)
    assert np.array_equal(pixels_of(decoded), pixels_of(by_hand))


def test_broken_exif_is_ignored():
    picture = make_picture()
    data = encode(picture, "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")

    decoded = decode_image(data)

    assert decoded.size == picture.size


# Modes


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (40, 30), (0, 0, 255, 255))
    rgba.paste((255, 0, 0, 0), (0, 0, 20, 30))  # left half fully transparent red
    data = encode(rgba, "PNG")

    decoded = decode_image(data)

    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.getpixel((30, 5)) == (0, 0, 255)


def test_half_transparent_pixel_is_blended():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 128))

    decoded = decode_image(encode(rgba, "PNG"))

    red, green, blue = decoded.getpixel((0, 0))
    assert 120 <= red <= 135
    assert red == green == blue


def test_la_is_composited_on_white():
    la = Image.new("LA", (10, 10), (0, 0))
    la.paste((0, 255), (5, 0, 10, 10))

    decoded = decode_image(encode(la, "PNG"))

    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((8, 1)) == (0, 0, 0)


def test_palette_transparency_is_composited_on_white():
    palette_image = make_picture(40, 30).quantize(colors=16)
    transparent_index = palette_image.getpixel((0, 0))
    data = encode(palette_image, "PNG", transparency=transparent_index)

    decoded = decode_image(data)

    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    opaque = [xy for xy in ((39, 29), (20, 25), (39, 15)) if palette_image.getpixel(xy) != transparent_index]
    assert opaque, "the test picture needs an opaque pixel"
    for xy in opaque:
        assert decoded.getpixel(xy) == palette_image.convert("RGB").getpixel(xy)


def test_gif_palette_transparency():
    palette_image = make_picture(40, 30).quantize(colors=16)
    transparent_index = palette_image.getpixel((0, 0))

    decoded = decode_image(encode(palette_image, "GIF", transparency=transparent_index))

    assert decoded.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_plain_modes_become_rgb(mode: str):
    source = make_picture().convert(mode)

    decoded = decode_image(encode(source, "PNG"))

    assert decoded.mode == "RGB"
    assert np.array_equal(pixels_of(decoded), pixels_of(source.convert("RGB")))


def test_grayscale_jpeg():
    source = make_picture().convert("L")

    decoded = decode_image(encode(source, "JPEG", quality=95))

    assert decoded.mode == "RGB"
    channels = np.asarray(decoded)
    assert np.array_equal(channels[..., 0], channels[..., 1])


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    gray8 = np.asarray(make_picture().convert("L"), dtype=np.uint16)
    gray16 = Image.fromarray(gray8 * 257)  # full 16-bit range; values > 255 would clip in convert("L")
    assert gray16.mode == "I;16"

    decoded = decode_image(encode(gray16, "PNG"))

    assert np.array_equal(np.asarray(decoded)[..., 0], gray8.astype(np.uint8))
    assert np.asarray(decoded).max() == gray8.max()


def test_sixteen_bit_tiff():
    gray8 = np.asarray(make_picture().convert("L"), dtype=np.uint16)
    gray16 = Image.fromarray(gray8 * 257)

    decoded = decode_image(encode(gray16, "TIFF"))

    assert np.abs(np.asarray(decoded)[..., 0].astype(int) - gray8).max() <= 1


def test_float_image_in_unit_range_is_scaled():
    gray8 = np.asarray(make_picture().convert("L"), dtype=np.float32)
    image_f = Image.fromarray(gray8 / np.float32(255.0))
    assert image_f.mode == "F"

    decoded = decode_image(encode(image_f, "TIFF"))

    assert np.abs(np.asarray(decoded)[..., 0].astype(int) - gray8.astype(int)).max() <= 1


def test_thirty_two_bit_image_is_stretched():
    values = (np.arange(64 * 48, dtype=np.int32).reshape(48, 64) - 1000) * 5000  # negative and huge values
    image_i = Image.fromarray(values)
    assert image_i.mode == "I"

    decoded = np.asarray(decode_image(encode(image_i, "TIFF")))[..., 0]

    assert decoded.min() == 0
    assert decoded.max() == 255
    assert np.all(np.diff(decoded[0].astype(int)) >= 0)


def test_cmyk_without_profile():
    cmyk = Image.new("CMYK", (20, 20), (255, 0, 0, 0))

    decoded = decode_image(encode(cmyk, "JPEG", quality=95))

    red, green, blue = decoded.getpixel((10, 10))
    assert red < 40
    assert green > 215
    assert blue > 215


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def make_cmyk_profile_cyan_ink_removes_green() -> bytes:
    """Build an ICC v2 CMYK input profile in which cyan ink removes green, not red.

    A 2-point lut16 maps each CMYK corner to the D50 XYZ of a linear RGB
    color, so pure cyan converts to magenta through this profile but to cyan
    through Pillow's profile-less formula.
    """
    srgb_to_xyz_d50 = np.array(
        [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]]
    )
    clut = bytearray()
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = np.array([(1 - m) * (1 - k), (1 - c) * (1 - k), (1 - y) * (1 - k)], dtype=float)
                    xyz = srgb_to_xyz_d50 @ rgb
                    clut += struct.pack(">3H", *(min(0xFFFF, round(v * 32768)) for v in xyz))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    linear_table = struct.pack(">2H", 0, 0xFFFF)
    lut = b"mft2" + b"\0" * 4 + bytes([4, 3, 2, 0]) + identity + struct.pack(">2H", 2, 2)
    lut += linear_table * 4 + bytes(clut) + linear_table * 3

    text = b"test CMYK\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 4 + b"\0" * 4 + b"\0" * 3 + b"\0" * 67
    tags = [(b"desc", desc), (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)), (b"A2B0", lut)]

    offset = 128 + 4 + 12 * len(tags)
    table = struct.pack(">I", len(tags))
    body = b""
    for signature, data in tags:
        padded = data + b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">2I", offset + len(body), len(data))
        body += padded
    size = offset + len(body)
    header = struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"scnr" + b"CMYK" + b"XYZ "
    header += b"\0" * 12 + b"acsp" + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 4
    header += _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28
    assert len(header) == 128
    return header + table + body


def test_cmyk_uses_embedded_icc_profile():
    profile = make_cmyk_profile_cyan_ink_removes_green()
    ImageCms.ImageCmsProfile(io.BytesIO(profile))  # the test profile itself must parse
    cmyk = Image.new("CMYK", (20, 20), (255, 0, 0, 0))

    decoded = decode_image(encode(cmyk, "JPEG", quality=95, icc_profile=profile))

    red, green, blue = decoded.getpixel((10, 10))
    assert red > 215, "cyan through this profile is magenta"
    assert green < 40
    assert blue > 215


def test_cmyk_with_unusable_profile_falls_back():
    cmyk = Image.new("CMYK", (20, 20), (0, 0, 0, 0))

    decoded = decode_image(encode(cmyk, "JPEG", quality=95, icc_profile=b"not a profile" * 10))

    assert min(decoded.getpixel((10, 10))) > 230


# Formats


def test_webp():
    picture = make_picture()

    decoded = decode_image(encode(picture, "WEBP", lossless=True))

    assert np.array_equal(pixels_of(decoded), pixels_of(picture))


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (30, 20), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

    decoded = decode_image(data)

    assert decoded.getpixel((15, 10)) == (255, 0, 0)


def test_animated_webp_first_frame():
    frames = [Image.new("RGB", (30, 20), color) for color in ((0, 0, 255), (255, 0, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)

    decoded = decode_image(data)

    assert decoded.getpixel((15, 10)) == (0, 0, 255)


def test_heic():
    pillow_heif = pytest.importorskip("pillow_heif")
    picture = make_picture()
    heif_file = pillow_heif.from_pillow(picture)
    buffer = io.BytesIO()
    try:
        heif_file.save(buffer, quality=95)
    except (RuntimeError, KeyError, ValueError) as error:
        pytest.skip(f"this pillow-heif build cannot encode HEIC: {error}")

    decoded = decode_image(buffer.getvalue())

    assert decoded.size == picture.size
    assert np.abs(pixels_of(decoded) - pixels_of(picture)).mean() < 6


def test_mpo_style_jpeg_is_accepted():
    data = encode(make_picture(), "JPEG", quality=90)

    decoded = decode_image(data)

    assert decoded.mode == "RGB"
    assert decoded.size == (160, 120)


# Rejected input


def test_empty_bytes():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(b"")

    assert caught.value.reason == "empty"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file pretending to be a photo",
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        b"\x00" * 4096,
        b"GIF89a",
        b"\x89PNG\r\n\x1a\n",
    ],
    ids=["text", "pdf", "zeros", "gif-magic-only", "png-magic-only"],
)
def test_non_images(data: bytes):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)

    assert caught.value.reason in ("not_image", "truncated")


def test_pdf_is_not_image():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 500)

    assert caught.value.reason == "not_image"


def test_recognized_but_unsupported_format():
    data = encode(make_picture(32, 32), "ICO")

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)

    assert caught.value.reason == "unsupported"


@pytest.mark.parametrize("keep_fraction", [0.3, 0.6, 0.9])
def test_truncated_jpeg(keep_fraction: float):
    data = encode(make_picture(400, 300), "JPEG", quality=90)

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data[: int(len(data) * keep_fraction)])

    assert caught.value.reason == "truncated"


def test_truncated_png():
    data = encode(make_picture(400, 300), "PNG")

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data[: len(data) // 2])

    assert caught.value.reason == "truncated"


def png_declaring(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header declares width × height but carries almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_declared_size_over_limit_is_rejected_before_decoding():
    # 50 MP is over the default limit of 40 MP and under Pillow's own warning limit.
    data = png_declaring(10000, 5000)
    assert len(data) < 200

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)

    assert caught.value.reason == "too_large"
    assert "10000x5000" in str(caught.value)


def test_png_declaring_20000_squared_is_too_large():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(png_declaring(20000, 20000))

    assert caught.value.reason == "too_large"


def test_pixel_limit_is_a_parameter():
    data = encode(make_picture(100, 100), "PNG")

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, max_pixels=9_999)
    decoded = decode_image(data, max_pixels=10_000)

    assert caught.value.reason == "too_large"
    assert decoded.size == (100, 100)


def elongated_png(width: int, height: int) -> bytes:
    """Return a real, fully decodable PNG of a plain color; a few hundred bytes even at 160000x1."""
    return encode(Image.new("RGB", (width, height), (40, 160, 60)), "PNG", optimize=True)


@pytest.mark.parametrize("size", [(20000, 4), (4, 20000), (160000, 1)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_elongated_image_is_too_large(size: tuple[int, int]):
    data = elongated_png(*size)
    # Small and under the pixel limit, so only the aspect ratio check rejects it.
    assert len(data) < 2000
    assert size[0] * size[1] < 1_000_000

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data)

    assert caught.value.reason == "too_large"
    assert "aspect ratio" in str(caught.value)
    assert f"{size[0]}x{size[1]}" in str(caught.value)


def test_aspect_ratio_limit_is_a_parameter():
    data = elongated_png(300, 10)

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, max_aspect_ratio=29.9)
    decoded = decode_image(data, max_aspect_ratio=30)

    assert caught.value.reason == "too_large"
    assert decoded.size == (300, 10)
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        decode_image(data, max_aspect_ratio=0.5)


def test_large_normal_photo_still_decodes():
    data = encode(make_picture(4000, 3000), "JPEG", quality=80)

    decoded = decode_image(data, draft_size=None)

    assert decoded.size == (4000, 3000)
    assert to_array(decoded).shape == (3, 224, 224)


def test_decompression_bomb_over_pillow_limit():
    # Over twice Pillow's MAX_IMAGE_PIXELS, Image.open itself raises DecompressionBombError.
    data = png_declaring(30000, 10000)

    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, max_pixels=10**12)

    assert caught.value.reason == "too_large"


def test_decode_error_carries_reason_and_message():
    error = ImageDecodeError("truncated", "cut off")

    assert error.reason == "truncated"
    assert error.message == "cut off"
    assert str(error) == "cut off"
    with pytest.raises(ValueError, match="unknown decode reason"):
        ImageDecodeError("bogus", "x")


# JPEG draft decoding


def make_large_jpeg(source: Image.Image, scale: int, seed: int = 0) -> bytes:
    """Upscale `source` and add grain, so the large JPEG has fine detail for draft decoding to lose."""
    large = source.resize((source.width * scale, source.height * scale), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    pixels = np.asarray(large, dtype=np.float32) + rng.normal(0, 12, (large.height, large.width, 3))
    return encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG", quality=92)


def test_draft_decoding_keeps_short_side():
    data = make_large_jpeg(make_picture(320, 240), 8)
    larger = make_large_jpeg(make_picture(320, 240), 16)

    drafted = decode_image(data, draft_size=512)
    full = decode_image(data, draft_size=None)

    assert full.size == (2560, 1920)
    # The DCT scale is a power of two no larger than 1920 // 512 = 3, so 1/2.
    assert drafted.size == (1280, 960)
    # 3840 // 512 = 7 allows 1/4.
    assert decode_image(larger, draft_size=512).size == (1280, 960)


def test_small_jpeg_is_not_drafted():
    data = encode(make_picture(900, 700), "JPEG", quality=90)

    assert decode_image(data).size == (900, 700)


def test_draft_tensor_close_to_full_decode(flowers5_val_photos):
    for path in flowers5_val_photos[::150][:3]:
        data = make_large_jpeg(Image.open(path).convert("RGB"), 10)

        drafted = to_array(decode_image(data))
        full = to_array(decode_image(data, draft_size=None))

        difference = np.abs(drafted - full)
        assert difference.mean() < 0.012, f"{path.name}: mean difference {difference.mean():.4f}"
        assert difference.max() < 0.25, f"{path.name}: max difference {difference.max():.4f}"
