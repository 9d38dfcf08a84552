"""Reference photos: a few training photos per class, stored inside a model bundle.

The bot sends them so that a person can compare their photo with what each
listed species looks like. They are chosen from the base training split at
training time (never from photos people sent the bot, which are private) and
shrunk to small JPEGs under `references/` in the bundle::

    <bundle>/references/<class index>-<n>.jpg

`bundle.json` lists them under `"references"` (`{"<class index>": [file, ...]}`),
so `Bundle.save` copies them along whenever a bundle is saved again, as export
does. A bundle without them lists none, and the bot then says that no
reference photos are available. The photos carry the license of the training
data they come from.
"""

from __future__ import annotations

import io
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from classifier.decode import ImageDecodeError, decode_image

if TYPE_CHECKING:
    from classifier.bundle import Bundle

logger = logging.getLogger(__name__)

REFERENCES_DIR = "references"
# Three per class keeps an Oxford 102 bundle about 10 MB larger (306 JPEGs of 20-40 KB).
DEFAULT_PER_CLASS = 3
# Long side in pixels: enough to see the flower in a chat, small enough to send quickly.
MAX_SIDE = 480
JPEG_QUALITY = 85


def choose_reference_photos(
    samples: Iterable[tuple[str | Path, int]],
    num_classes: int,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
) -> dict[int, list[Path]]:
    """Pick up to `per_class` image paths per class label from `(path, label)` pairs.

    Each class's paths are sorted and then shuffled with `seed`, so the choice
    is the same for the same files on every machine. Candidates beyond
    `per_class` are kept at the end of each list, as spares for photos that
    fail to decode. Labels outside `0..num_classes-1` are ignored.
    """
    by_class: dict[int, list[Path]] = defaultdict(list)
    for path, label in samples:
        if 0 <= int(label) < num_classes:
            by_class[int(label)].append(Path(path))
    chosen: dict[int, list[Path]] = {}
    for label in sorted(by_class):
        paths = sorted(by_class[label], key=str)
        random.Random(f"{seed}:{label}").shuffle(paths)
        chosen[label] = paths
    return chosen


def reference_jpeg(data: bytes, *, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """Decode image bytes (as serving does) and return them as a JPEG whose long side is at most `max_side`.

    Raises `ImageDecodeError` for bytes that are not a usable image.
    """
    image = decode_image(data, draft_size=max_side)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def write_reference_photos(
    candidates: Mapping[int, Sequence[str | Path]],
    scratch_dir: str | Path,
    *,
    per_class: int = DEFAULT_PER_CLASS,
) -> tuple[dict[str, list[str]], dict[str, Path]]:
    """Write up to `per_class` small JPEGs per class into `scratch_dir`.

    Returns the `"references"` listing for `bundle.json` and the matching
    `extra_files` argument of `Bundle.save` (name inside the bundle to the
    file written here). Candidates that cannot be read are skipped with a
    warning, and the next candidate of the class takes their place.
    """
    scratch = Path(scratch_dir) / REFERENCES_DIR
    scratch.mkdir(parents=True, exist_ok=True)
    listing: dict[str, list[str]] = {}
    extra_files: dict[str, Path] = {}
    for label in sorted(candidates):
        names: list[str] = []
        for source in candidates[label]:
            if len(names) >= per_class:
                break
            try:
                jpeg = reference_jpeg(Path(source).read_bytes())
            except (OSError, ImageDecodeError) as error:
                logger.warning("skipped reference photo %s of class %d: %s", source, label, error)
                continue
            name = f"{REFERENCES_DIR}/{label}-{len(names)}.jpg"
            target = scratch / Path(name).name
            target.write_bytes(jpeg)
            names.append(name)
            extra_files[name] = target
        if names:
            listing[str(label)] = names
    logger.info("wrote %d reference photos for %d classes", len(extra_files), len(listing))
    return listing, extra_files


def add_reference_photos(
    bundle: Bundle,
    samples: Iterable[tuple[str | Path, int]],
    scratch_dir: str | Path,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
) -> dict[str, Path]:
    """Choose and write reference photos for `bundle` from `(path, label)` training samples.

    Sets `bundle.references` and returns the `extra_files` to pass to
    `bundle.save`; `scratch_dir` must exist until that save is done.
    `per_class=0` stores none.
    """
    if per_class <= 0:
        bundle.references = {}
        return {}
    candidates = choose_reference_photos(samples, bundle.num_classes, per_class=per_class, seed=seed)
    listing, extra_files = write_reference_photos(candidates, scratch_dir, per_class=per_class)
    bundle.references = listing
    missing = bundle.num_classes - len(listing)
    if missing:
        logger.warning("%d of %d classes have no reference photo", missing, bundle.num_classes)
    return extra_files


def reference_paths(bundle: Bundle, index: int) -> list[Path]:
    """Return the reference photo files of class `index` that exist in the bundle directory (maybe none)."""
    if bundle.path is None:
        return []
    names = bundle.references.get(str(index)) or []
    paths = [bundle.path / name for name in names]
    return [path for path in paths if path.is_file()]


def has_reference_photos(bundle: Bundle) -> bool:
    """Return whether the bundle lists any reference photo."""
    return bundle.path is not None and any(bundle.references.values())
