"""Turn untrusted image bytes into an RGB PIL image, or raise `ImageDecodeError`.

The format is read from the content, never from a file name or MIME type. The
order of checks matters:

1. `Image.open` only parses the header, restricted to the photo formats listed
   in `ALLOWED_FORMATS`.
2. The declared width × height is compared with `max_pixels`, and the long
   side / short side with `max_aspect_ratio`, before any pixel is decoded.
   A 100-byte PNG can declare 20000 × 20000, and a 500-byte PNG of
   160000 × 1 passes the pixel limit but would be resized to
   40960000 × 256 by the eval transform, which scales the short side.
3. Large JPEGs are decoded at a reduced DCT scale (`Image.draft`) that keeps
   the short side at least `draft_size` (twice the eval resize by default).
4. `load()` decodes the pixels inside the same check, so a damaged file fails
   here and not later in preprocessing.
5. The EXIF orientation is applied and every Pillow mode becomes RGB.

Every failure on bad input is raised as `ImageDecodeError` with a `reason` from
`DECODE_REASONS`.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

logger = logging.getLogger(__name__)

try:
    import pillow_heif
except ImportError:  # pragma: no cover - pillow-heif is a core dependency, but keep decoding JPEG/PNG without it.
    pillow_heif = None
    logger.warning("pillow-heif is not installed; HEIC photos will be rejected as unsupported")
else:
    pillow_heif.register_heif_opener()

DEFAULT_MAX_PIXELS = 40_000_000
# JPEG draft decoding keeps the short side at least this long, which is twice
# the default eval resize (256). Measured on 1.5-15 MP JPEGs made from
# flowers5 photos with added grain: the preprocessed tensor differs from a
# full decode by about 0.005 on average (normalized units). Drafting down to
# 256 gave 0.01-0.06 and saved only a few milliseconds per photo.
DEFAULT_DRAFT_SIZE = 512
# Maximum long side / short side. Preprocessing scales the short side to 256,
# so the resized long side stays at most 20 × 256 = 5120 pixels. Phone
# panoramas are usually below 10:1.
MAX_ASPECT_RATIO = 20

DECODE_REASONS = ("empty", "not_image", "truncated", "too_large", "unsupported")

# Photo formats people send. Formats with weak signatures (TGA, for example,
# has no magic number and accepts many random byte strings) are left out on
# purpose, so that random bytes are reported as `not_image`.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
# Formats that `Image.open` identifies by a real signature but that are not
# decoded here. A file in one of them gets `unsupported`, not `not_image`.
_RECOGNIZED_UNSUPPORTED = ("PSD", "EPS", "ICO", "ICNS", "JPEG2000", "DDS", "QOI", "PCX", "SGI", "PPM", "XBM", "XPM")

# EXIF orientation value -> the transpose that shows the image upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

_WHITE = (255, 255, 255)
_SRGB_PROFILE = ImageCms.createProfile("sRGB")


class ImageDecodeError(ValueError):
    """Image bytes that cannot be turned into an RGB picture.

    `reason` is one of `DECODE_REASONS`, so callers can pick a user message:

    - `empty`: no bytes.
    - `not_image`: not an image in a supported format.
    - `truncated`: cut off or damaged pixel data.
    - `too_large`: over the pixel limit or the aspect ratio limit.
    - `unsupported`: a recognized image kind that is not decoded here.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown decode reason {reason!r}; expected one of {DECODE_REASONS}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep the reason when the error crosses a process boundary
        return (type(self), (self.reason, self.message))


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = DEFAULT_DRAFT_SIZE,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode image bytes into an upright RGB image.

    `max_pixels` bounds the declared width × height, and `max_aspect_ratio`
    bounds the declared long side / short side. `draft_size` lets a large
    JPEG decode at 1/2, 1/4 or 1/8 scale while its short side stays at least
    that many pixels. Pass None to always decode at full size.
    Raises `ImageDecodeError` for every kind of bad input.
    """
    if max_aspect_ratio < 1:
        raise ValueError(f"max_aspect_ratio must be at least 1, got {max_aspect_ratio}")
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    try:
        # Pillow raises DecompressionBombError in Image.open above twice
        # Image.MAX_IMAGE_PIXELS. Below that, the max_pixels check in _decode
        # decides. warnings.catch_warnings is not used to turn Pillow's bomb
        # warning into an error because it changes process-wide state and
        # decoding runs in several threads.
        return _decode(bytes(data), max_pixels=max_pixels, draft_size=draft_size, max_aspect_ratio=max_aspect_ratio)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, MemoryError) as error:
        raise ImageDecodeError("too_large", f"the image is too large to decode: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError("not_image", "the data is not an image in a supported format") from error
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError) as error:
        raise ImageDecodeError("truncated", f"the image data is damaged or cut off: {error}") from error
    except Exception as error:
        # Pillow's format plugins raise assorted exception types on hostile input.
        # None of them may escape as anything but a decoding error.
        logger.warning("unexpected %s while decoding %d bytes", type(error).__name__, len(data), exc_info=True)
        raise ImageDecodeError("not_image", f"the image could not be decoded: {type(error).__name__}") from error


def _decode(data: bytes, *, max_pixels: int, draft_size: int | None, max_aspect_ratio: float) -> Image.Image:
    image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("not_image", f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
        )
    long_side, short_side = max(width, height), min(width, height)
    if long_side > max_aspect_ratio * short_side:
        raise ImageDecodeError(
            "too_large",
            f"the image is {width}x{height}, an aspect ratio of {long_side / short_side:.1f}:1, "
            f"over the limit of {max_aspect_ratio:g}:1; crop it to a less elongated shape",
        )

    if draft_size and image.format in ("JPEG", "MPO") and min(width, height) >= 2 * draft_size:
        # Pillow picks the largest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least draft_size.
        image.draft(image.mode, (draft_size, draft_size))

    # Animated GIF, WebP and PNG open on their first frame; load() decodes only that frame.
    image.load()
    # NOTE: HEIC rotation is left to pillow-heif, which applies the file's irot/imir boxes
    # and reports EXIF orientation 1. No real phone HEIC was available to test this.
    orientation = _exif_orientation(image)
    rgb = _to_rgb(image)

    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    return rgb


def _open(data: bytes) -> Image.Image:
    """Open the header with the allowed formats, telling unsupported images apart from non-images."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        pass

    try:
        with Image.open(io.BytesIO(data)) as other:
            detected = other.format
    except Exception:  # noqa: BLE001 - any failure here only means "not an image we recognize"
        detected = None
    if detected in _RECOGNIZED_UNSUPPORTED:
        raise ImageDecodeError("unsupported", f"{detected} images are not supported; send a JPEG, PNG, WebP or HEIC photo")
    if pillow_heif is None and _looks_like_heif(data):
        raise ImageDecodeError("unsupported", "HEIC images need pillow-heif, which is not installed")
    raise ImageDecodeError("not_image", "the data is not an image in a supported format")


def _looks_like_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"hevc")


def _exif_orientation(image: Image.Image) -> int:
    """Return the EXIF orientation (1-8), or 1 when the image has none or its EXIF is unreadable."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as error:  # noqa: BLE001 - broken EXIF must not reject a readable picture
        logger.info("ignoring unreadable EXIF data: %s: %s", type(error).__name__, error)
        return 1
    if isinstance(orientation, int) and 1 <= orientation <= 8:
        return orientation
    return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB. Transparent pixels are composited on white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _composite_on_white(image.convert("RGBA"))
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("1", "L", "P", "RGBX", "YCbCr", "HSV"):
        return image.convert("RGB")
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        return ImageCms.profileToProfile(image, lab, _SRGB_PROFILE, outputMode="RGB")
    raise ImageDecodeError("unsupported", f"images in Pillow mode {mode} are not supported")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Convert CMYK through its embedded ICC profile; use Pillow's naive formula when there is none."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, profile, _SRGB_PROFILE, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as error:
            logger.info("CMYK image has an unusable ICC profile, converting without it: %s", error)
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float grayscale into 0-255 without clipping.

    - `I;16*` modes are scaled from their full 0-65535 range.
    - `I` and `F` values already inside 0-255 are kept. Non-negative integers
      up to 65535 (a 16-bit PNG opened as `I`) are scaled from 0-65535, and
      floats inside 0-1 are scaled from 0-1.
    - Anything else is stretched from its own minimum and maximum.
    """
    values = np.asarray(image, dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0

    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    elif low >= 0.0 and high <= 255.0 and not (image.mode == "F" and high <= 1.0):
        scaled = values
    elif image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif image.mode != "F" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)

    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
