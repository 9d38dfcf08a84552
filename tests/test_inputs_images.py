"""Every image kind through the emulator, as a photo and as a file: classified right, or rejected without a trace.

Each classified kind is made by the test from one clean RGB picture and carries its
`expected` picture, the upright RGB image a correct decoder recovers. That is the clean
picture itself, except for kinds that cannot hold its colors (grayscale, bilevel, a
palette), where it is the reduced picture in RGB, and for transparent kinds, where it
is the picture composited on white.
The bot's stored top-5 must name the same top-1 as the classifier gives `expected`, with
every probability within `LOSSLESS_TOLERANCE` or `LOSSY_TOLERANCE` of it. Measured with
the session's random-init bundle: decoding errors move some probability by 0.05 (an
ignored mirror orientation) to 0.45 (the wrong animation frame); correct lossy decodes
move none by more than 0.022 (CMYK through its ICC profile).

The photo path: on Telegram a photo reaches a bot as a JPEG that Telegram re-encoded
(EXIF orientation applied, every kind flattened to RGB). The emulator serves the bytes
the test sent as the largest photo size instead, so "as a photo" here tests the photo
handler (largest size, same decoder) on every kind, not Telegram's re-encoding.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageCms
from sqlalchemy import func, select

from bot.answers import MAX_DOWNLOAD_BYTES
from bot.i18n import text
from bot.settings import Settings
from storage.db import create_engine, new_session_factory
from storage.models import Prediction
from tests.emulator import JSON, make_user
from tests.fixtures.bot import BotHarness
from tests.test_decode import make_cmyk_profile_cyan_ink_removes_green

ALICE = make_user(8001, "Alice", language_code="en")
TRANSPORTS = ("photo", "file")
LOSSLESS_TOLERANCE = 0.002
LOSSY_TOLERANCE = 0.03
# Enough for every kind in one test; the default limit would reject most of them.
RATE_LIMIT = 1000

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that turns the upright picture into the stored pixels.
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


@dataclass(frozen=True)
class ImageKind:
    """An image file made from the clean picture, and the RGB picture it must decode to."""

    name: str
    data: bytes
    expected: Image.Image
    lossless: bool
    file_name: str
    # Pillow's mode when the file is opened; None for kinds checked by format only.
    opened_mode: str | None = None


def clean_picture(width: int = 288, height: int = 216) -> Image.Image:
    """Return an asymmetric RGB picture: gradients, a stripe texture and three colored blocks."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x + 2 * y) % 97) * 2], axis=-1).astype(np.uint8)
    pixels[: height // 4, : width // 3] = (250, 20, 20)
    pixels[height // 2 : height // 2 + 50, width // 2 : width // 2 + 70] = (20, 200, 40)
    pixels[height - 40 : height - 10, 10:60] = (30, 30, 220)
    return Image.fromarray(pixels)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def on_white(image: Image.Image) -> Image.Image:
    """Composite a picture with transparency on white, computed apart from the decoder."""
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def alpha_mask(size: tuple[int, int]) -> Image.Image:
    """Return an alpha channel with a transparent band, a half-transparent band and opaque rest."""
    alpha = Image.new("L", size, 255)
    alpha.paste(0, (0, 0, 40, size[1]))
    alpha.paste(128, (40, 0, 80, size[1]))
    return alpha


def cmyk_for_test_profile(picture: Image.Image) -> Image.Image:
    """Return CMYK pixels that the test ICC profile turns back into `picture`.

    That profile maps cyan to linear green, magenta to linear red and yellow to linear
    blue (see `make_cmyk_profile_cyan_ink_removes_green`), so Pillow's conversion without
    the profile would swap red and green and lose the sRGB gamma.
    """
    values = np.asarray(picture, dtype=np.float64) / 255.0
    linear = np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)
    cmyk = np.stack([1 - linear[..., 1], 1 - linear[..., 0], 1 - linear[..., 2], np.zeros(linear.shape[:2])], axis=-1)
    return Image.fromarray(np.rint(cmyk * 255).astype(np.uint8), "CMYK")


def heic(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(picture).save(buffer, quality=95)
    return buffer.getvalue()


def classified_kinds() -> list[ImageKind]:
    """Return one file per image kind that must be classified, each with its expected picture."""
    picture = clean_picture()
    gray = picture.convert("L")
    gray_rgb = gray.convert("RGB")
    gray_values = np.asarray(gray, dtype=np.int32)
    palette = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    alpha = alpha_mask(picture.size)

    gray_alpha = gray.copy()
    gray_alpha.putalpha(alpha)
    palette_alpha = palette.convert("PA")
    palette_alpha.putalpha(alpha)
    rgba = picture.copy()
    rgba.putalpha(alpha)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = palette.getpixel((5, 5))
    bilevel = picture.convert("1")
    lab = ImageCms.profileToProfile(picture, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), outputMode="LAB")
    big_endian_16 = Image.frombytes("I;16B", picture.size, (gray_values * 257).astype(">u2").tobytes())
    frames = [picture, picture.transpose(Image.Transpose.ROTATE_180), Image.new("RGB", picture.size, "white")]
    palette_frames = [frame.convert("P", palette=Image.Palette.ADAPTIVE) for frame in frames]

    kinds = [
        ImageKind("jpeg", encode(picture, "JPEG", quality=95), picture, False, "flower.jpg", "RGB"),
        ImageKind("png", encode(picture, "PNG"), picture, True, "flower.png", "RGB"),
        ImageKind("bmp", encode(picture, "BMP"), picture, True, "flower.bmp", "RGB"),
        ImageKind("png 1-bit", encode(bilevel, "PNG"), bilevel.convert("RGB"), True, "flower.png", "1"),
        ImageKind("png grayscale", encode(gray, "PNG"), gray_rgb, True, "flower.png", "L"),
        ImageKind("jpeg grayscale", encode(gray, "JPEG", quality=95), gray_rgb, False, "flower.jpg", "L"),
        ImageKind("png grayscale+alpha", encode(gray_alpha, "PNG"), on_white(gray_alpha), True, "flower.png", "LA"),
        ImageKind("png palette", encode(palette, "PNG"), palette.convert("RGB"), True, "flower.png", "P"),
        ImageKind("png palette+tRNS", encode(palette_transparent, "PNG"), on_white(palette_transparent), True, "flower.png", "P"),
        ImageKind("tiff palette+alpha", encode(palette_alpha, "TIFF"), on_white(palette_alpha), True, "flower.tif", "PA"),
        ImageKind("png rgba", encode(rgba, "PNG"), on_white(rgba), True, "flower.png", "RGBA"),
        ImageKind("gif", encode(palette, "GIF"), palette.convert("RGB"), True, "flower.gif", "P"),
        ImageKind("tiff cmyk", encode(picture.convert("CMYK"), "TIFF"), picture, True, "flower.tif", "CMYK"),
        ImageKind("jpeg cmyk", encode(picture.convert("CMYK"), "JPEG", quality=95), picture, False, "flower.jpg", "CMYK"),
        ImageKind(
            "jpeg cmyk+icc",
            encode(cmyk_for_test_profile(picture), "JPEG", quality=95, icc_profile=make_cmyk_profile_cyan_ink_removes_green()),
            picture,
            False,
            "flower.jpg",
            "CMYK",
        ),
        ImageKind("tiff ycbcr", encode(picture.convert("YCbCr"), "TIFF"), picture, False, "flower.tif", "YCbCr"),
        ImageKind("tiff lab", encode(lab, "TIFF"), picture, False, "flower.tif", "LAB"),
        ImageKind("tiff 32-bit int", encode(Image.fromarray(gray_values * 257), "TIFF"), gray_rgb, True, "flower.tif", "I"),
        ImageKind(
            "png 16-bit grayscale",
            encode(Image.fromarray((gray_values * 257).astype(np.uint16)), "PNG"),
            gray_rgb,
            True,
            "flower.png",
            "I;16",
        ),
        ImageKind("tiff 16-bit big-endian", encode(big_endian_16, "TIFF"), gray_rgb, True, "flower.tif", "I;16B"),
        ImageKind(
            "tiff float",
            encode(Image.fromarray((gray_values / 255.0).astype(np.float32)), "TIFF"),
            gray_rgb,
            True,
            "flower.tif",
            "F",
        ),
        ImageKind("webp lossy", encode(picture, "WEBP", quality=90), picture, False, "flower.webp"),
        ImageKind("webp lossless", encode(picture, "WEBP", lossless=True), picture, True, "flower.webp"),
        ImageKind("heic", heic(picture), picture, False, "IMG_0001.HEIC"),
        ImageKind(
            "gif animated",
            encode(palette_frames[0], "GIF", save_all=True, append_images=palette_frames[1:], duration=100, loop=0),
            palette_frames[0].convert("RGB"),
            True,
            "flower.gif",
        ),
        ImageKind(
            "webp animated",
            encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True),
            picture,
            True,
            "flower.webp",
        ),
    ]
    for orientation, transpose in STORED_FROM_UPRIGHT.items():
        stored = picture if transpose is None else picture.transpose(transpose)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
        kinds.append(ImageKind(f"jpeg exif orientation {orientation}", data, picture, False, "IMG_0002.JPG", "RGB"))
    return kinds


def png_declaring(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header declares `width` × `height` pixels of 8-bit RGB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def ico_file() -> bytes:
    return encode(Image.new("RGBA", (32, 32), (200, 30, 60, 255)), "ICO")


def rejected_kinds() -> list[tuple[str, bytes, str, str]]:
    """Return (name, data, file name, message key) for files that must be rejected."""
    jpeg = encode(clean_picture(), "JPEG", quality=95)
    return [
        ("truncated jpeg", jpeg[: len(jpeg) // 2], "cut.jpg", "photo.truncated"),
        ("jpeg without its end", jpeg[:-200], "cut.jpg", "photo.truncated"),
        ("zero bytes", b"", "empty.jpg", "photo.empty"),
        ("text named .jpg", b"these are not the pixels you are looking for\n" * 20, "flower.jpg", "photo.not_image"),
        ("html named .png", b"<!doctype html><html><body><img src='rose.png'></body></html>", "rose.png", "photo.not_image"),
        ("pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", "flower.pdf", "photo.not_image"),
        ("png declaring 20000x20000", png_declaring(20_000, 20_000), "bomb.png", "photo.too_large"),
        ("ico", ico_file(), "favicon.ico", "photo.unsupported"),
    ]


def send(harness: BotHarness, transport: str, data: bytes, file_name: str, caption: str | None = None) -> JSON:
    emulator = harness.emulator
    if transport == "photo":
        return emulator.send_photo(ALICE, None, data, caption=caption)
    return emulator.send_document(ALICE, None, data, file_name, None, caption=caption)


async def prediction_count(settings: Settings) -> int:
    """Return the number of rows in the predictions table, read with an engine of its own."""
    engine = create_engine(settings.resolved_database_url)
    try:
        async with new_session_factory(engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(Prediction)) or 0)
    finally:
        await engine.dispose()


def saved_files(settings: Settings) -> list[Path]:
    photos_dir = settings.photos_dir
    return sorted(path for path in photos_dir.rglob("*") if path.is_file()) if photos_dir.exists() else []


def test_kinds_open_in_their_modes() -> None:
    """Check the table itself: each kind opens in the Pillow mode it stands for."""
    for kind in classified_kinds():
        with Image.open(io.BytesIO(kind.data)) as opened:
            if kind.opened_mode is not None:
                assert opened.mode == kind.opened_mode, kind.name
            assert opened.size in (kind.expected.size, kind.expected.size[::-1]), kind.name


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_image_kinds_classified(bot_harness: BotHarness, transport: str) -> None:
    await bot_harness.start(rate_limit_per_minute=RATE_LIMIT)
    service = bot_harness.context.service
    kinds = classified_kinds()

    references = {}
    for kind in kinds:
        reference = await service.classify(encode(kind.expected, "PNG"), 5)
        references[kind.name] = {candidate.class_id: candidate.probability for candidate in reference.top}
    # "/top5" stores the probabilities of all five classes, so the comparison covers each of them.
    messages = {kind.name: send(bot_harness, transport, kind.data, kind.file_name, caption="/top5") for kind in kinds}
    await bot_harness.wait_idle(timeout=120)

    problems: dict[str, str] = {}
    for kind in kinds:
        message = messages[kind.name]
        row = await bot_harness.repository.get_prediction_by_message(ALICE["id"], message["message_id"])
        if row is None:
            replies = [reply["text"] for reply in bot_harness.emulator.replies_to(message)]
            problems[kind.name] = f"not classified; replies: {replies}"
            continue
        stored = {entry["class_id"]: entry["probability"] for entry in row.top_k}
        expected = references[kind.name]
        top1, expected_top1 = row.top_k[0]["class_id"], max(expected, key=expected.__getitem__)
        tolerance = LOSSLESS_TOLERANCE if kind.lossless else LOSSY_TOLERANCE
        worst = max(abs(stored.get(class_id, 0.0) - probability) for class_id, probability in expected.items())
        if top1 != expected_top1:
            problems[kind.name] = f"top-1 {top1}, the clean picture's is {expected_top1}"
        elif worst > tolerance:
            problems[kind.name] = f"a probability differs by {worst:.4f} from the clean picture's (tolerance {tolerance})"
        elif not bot_harness.emulator.replies_to(message):
            problems[kind.name] = "classified but not answered"
    assert problems == {}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_files_rejected_without_trace(bot_harness: BotHarness, transport: str) -> None:
    await bot_harness.start(rate_limit_per_minute=RATE_LIMIT)
    emulator = bot_harness.emulator
    kinds = rejected_kinds()

    messages = {name: (send(bot_harness, transport, data, file_name), key) for name, data, file_name, key in kinds}
    await bot_harness.wait_idle()

    answers = {name: [reply["text"] for reply in emulator.replies_to(message)] for name, (message, _) in messages.items()}
    assert answers == {name: [text(key, "en")] for name, (_, key) in messages.items()}
    assert await prediction_count(bot_harness.settings) == 0
    assert saved_files(bot_harness.settings) == []

    # The bot keeps working: a good picture afterwards is answered and is the only trace.
    good = send(bot_harness, transport, encode(clean_picture(), "PNG"), "flower.png")
    await emulator.wait_for_reply(good)
    await bot_harness.wait_idle()
    assert await prediction_count(bot_harness.settings) == 1
    assert len(saved_files(bot_harness.settings)) == 1


async def test_file_over_download_limit_not_fetched(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    declared = MAX_DOWNLOAD_BYTES + 1

    message = emulator.send_document(ALICE, None, b"\xff\xd8\xff\xe0", "huge.jpg", "image/jpeg", declared_size=declared)
    reply = await emulator.wait_for_reply(message)
    await flowerbot.wait_idle()

    assert reply["text"] == text("photo.too_big", "en", size_mb=f"{declared / (1024 * 1024):.1f}")
    assert emulator.calls_to("getFile") == []
    assert await prediction_count(flowerbot.settings) == 0
    assert saved_files(flowerbot.settings) == []
