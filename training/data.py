"""Training data: ImageFolder directories, Oxford 102, and extra labelled photos.

A data source resolves to `Splits`: a label set and, per split, a list of
`Sample(path, label)`. Images are decoded with `classifier.decode.decode_image`,
the decoder that serving uses, so training decodes photos as the bot does
(EXIF rotation, HEIC, every Pillow mode converted to RGB). Before a run,
`find_unreadable_images` decodes each file once, so that training and
evaluation can leave out the files that fail.

Sources (`DataSpec.source`):

- a directory with `train/` and `val/` class subfolders (`test/` is optional);
- a directory of class subfolders only, split per class by a seeded fraction;
- `flowers102`: Oxford 102 through torchvision's `Flowers102` under `root`,
  downloaded when `download` is set. Its splits must hold 1020 / 1020 / 6149
  images with labels 0..101.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from classifier.labels import LabelSet

logger = logging.getLogger(__name__)

FLOWERS102 = "flowers102"
FLOWERS102_SPLIT_SIZES = {"train": 1020, "val": 1020, "test": 6149}
FLOWERS102_CLASSES = 102
DEFAULT_FLOWERS102_ROOT = Path("data")

# Suffixes read from ImageFolder directories. HEIC and HEIF decode through
# pillow-heif, as in serving.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif")
SPLITS = ("train", "val", "test")

# The check before a run decodes JPEGs at up to 1/8 scale (see `check_image`).
# The reduced scale still reads the entropy-coded data to its end, so a cut-off
# JPEG fails as it does at full size. On 300 flowers5 photos (about 400 x 266)
# it took 0.3 ms per photo against 1.2 ms for the serving decode, one thread of
# a 2-core x86 machine.
CHECK_DRAFT_SIZE = 32
# Unreadable images beyond this many are counted but not logged one by one.
MAX_UNREADABLE_WARNINGS = 10


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled image file; `label` is an output index of the label set."""

    path: Path
    label: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSpec:
    """The location and split settings of the training data.

    `source` is an ImageFolder directory or `flowers102`. `root` is the
    download directory of Oxford 102. `val_fraction` and `split_seed` split a
    directory that has no `val/` subfolder. `limit_per_class` keeps the first
    N images of each class in each split (tiny runs and tests).
    """

    source: str
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    split_seed: int = 0
    limit_per_class: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be within (0, 1), got {self.val_fraction!r}")
        if self.limit_per_class is not None and self.limit_per_class < 1:
            raise ValueError(f"limit_per_class must be >= 1, got {self.limit_per_class!r}")

    @property
    def is_flowers102(self) -> bool:
        return self.source.lower() == FLOWERS102

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def with_absolute_paths(self) -> DataSpec:
        """Return this spec with its directories made absolute, so a bundle's record works from any directory.

        `flowers102` stays as it is, and so does a `root` of None.
        """
        source = self.source if self.is_flowers102 else str(Path(self.source).expanduser().resolve())
        root = str(Path(self.root).expanduser().resolve()) if self.root is not None else None
        return dataclasses.replace(self, source=source, root=root)


@dataclasses.dataclass(frozen=True)
class Splits:
    labels: LabelSet
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None = None

    def split(self, name: str) -> list[Sample]:
        samples = getattr(self, name, None) if name in SPLITS else None
        if samples is None:
            available = [split for split in SPLITS if getattr(self, split) is not None]
            raise ValueError(f"split {name!r} is not available; this data has: {', '.join(available)}")
        return samples


class ImageDataError(RuntimeError):
    """An image file of the data set that cannot be read or decoded, or data left unusable without such files.

    `path` and `reason` are set when one file is the cause. `reason` is a
    `classifier.decode` reason or `unreadable` when reading the file failed.
    """

    def __init__(self, message: str, *, path: Path | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def load_image(path: str | Path, *, draft_size: int | None = None):
    """Decode an image file to an RGB PIL image with the serving decoder.

    `draft_size` is passed to `decode_image`. None keeps its default, which
    decodes large JPEGs at a reduced scale as serving does.
    """
    from classifier.decode import DEFAULT_DRAFT_SIZE, ImageDecodeError, decode_image

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDataError(f"cannot read image {path}: {error}", path=path, reason="unreadable") from error
    try:
        return decode_image(data, draft_size=draft_size or DEFAULT_DRAFT_SIZE)
    except ImageDecodeError as error:
        raise ImageDataError(f"cannot decode image {path}: {error}", path=path, reason=error.reason) from error


@dataclasses.dataclass(frozen=True)
class UnreadableImage:
    """An image file that could not be read or decoded.

    `message` is the one-line error, which names the path. A dataset built
    with `mark_unreadable=True` returns one in place of the image.
    """

    path: Path
    reason: str
    message: str

    @classmethod
    def from_error(cls, error: ImageDataError) -> UnreadableImage:
        return cls(Path(error.path) if error.path is not None else Path(), error.reason or "unreadable", str(error))

    def to_error(self) -> ImageDataError:
        return ImageDataError(self.message, path=self.path, reason=self.reason)


def _load_or_mark(path: Path, *, mark_unreadable: bool):
    """Return the decoded image, or an `UnreadableImage` when it fails and `mark_unreadable` is set."""
    if not mark_unreadable:
        return load_image(path)
    try:
        return load_image(path)
    except ImageDataError as error:
        return UnreadableImage.from_error(error)


class ImageSamples(Dataset):
    """Decoded images with their labels; `transform` maps a PIL image to a tensor.

    With `mark_unreadable`, an image that fails to load is returned as an
    `UnreadableImage` instead of raising `ImageDataError`; collate such
    items with `collate_readable`.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None, *, mark_unreadable: bool = False) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mark_unreadable = mark_unreadable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample = self.samples[index]
        image = _load_or_mark(sample.path, mark_unreadable=self.mark_unreadable)
        if self.transform is not None and not isinstance(image, UnreadableImage):
            image = self.transform(image)
        return image, sample.label

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.samples]


class InMemoryImages(Dataset):
    """PIL images held in memory (synthetic non-flowers, test images), labelled -1."""

    def __init__(self, images: Sequence, transform: Callable) -> None:
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index].convert("RGB")), -1


def view_seed(seed: int, index: int, view: int) -> int:
    """Return the seed of augmented view `view` of sample `index`, a 63-bit integer.

    The seed depends only on these three numbers, so a view is the same in
    the feature cache, in the plain path and in any DataLoader worker.
    """
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, index, view]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def render_view(image, transform: Callable, seed: int) -> torch.Tensor:
    """Apply a random transform with torch's CPU generator seeded to `seed`, restoring its state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


class SeededViews(Dataset):
    """Augmented views keyed by `(sample index, view number)`.

    A sampler yields the keys; view `v` of sample `i` is always rendered with
    the seed `view_seed(seed, i, v)`. Both training paths read views from
    here: the feature cache renders views 0..K-1 once, and the plain path
    renders the view its sampler picks each epoch.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, seed: int, *, mark_unreadable: bool = False) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.mark_unreadable = mark_unreadable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | UnreadableImage, int]:
        index, view = (int(part) for part in key)
        sample = self.samples[index]
        image = _load_or_mark(sample.path, mark_unreadable=self.mark_unreadable)
        if isinstance(image, UnreadableImage):
            return image, sample.label
        return render_view(image, self.transform, view_seed(self.seed, index, view)), sample.label


# ---------------------------------------------------------------------------
# Unreadable images: the check before a run and the ones that fail during it


class ReadableBatch(NamedTuple):
    """A batch collated by `collate_readable`.

    `images` and `labels` contain the readable items only, and are None when
    no item of the batch could be read. `readable` has one flag per item of
    the batch, in order, and `failures` lists the unreadable ones.
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None
    readable: torch.Tensor
    failures: list[UnreadableImage]


def collate_readable(items: Sequence[tuple[Any, int]]) -> ReadableBatch:
    """Collate `(image, label)` items, leaving out those whose image is an `UnreadableImage`."""
    readable = [not isinstance(image, UnreadableImage) for image, _ in items]
    failures = [image for image, _ in items if isinstance(image, UnreadableImage)]
    loaded = [item for item, ok in zip(items, readable) if ok]
    images, labels = default_collate(loaded) if loaded else (None, None)
    return ReadableBatch(images, labels, torch.tensor(readable, dtype=torch.bool), failures)


def raise_unreadable(image: UnreadableImage) -> None:
    """Stop at an unreadable image: the handler for runs with `--strict-data`."""
    raise image.to_error()


class ReadableBatches:
    """Iterate `(images, labels)` over a loader that collates with `collate_readable`.

    Each unreadable image goes to `on_unreadable`, which may raise to stop the
    run, and a batch without a readable image is left out.
    """

    def __init__(self, loader: Iterable[ReadableBatch], on_unreadable: Callable[[UnreadableImage], None]) -> None:
        self.loader = loader
        self.on_unreadable = on_unreadable

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            for failure in batch.failures:
                self.on_unreadable(failure)
            # NOTE: under torchrun, a rank that leaves out a whole batch takes one
            # optimizer step fewer than the others, and DistributedDataParallel
            # then waits for it. That needs every image of a batch to fail.
            if batch.images is not None:
                yield batch.images, batch.labels


def check_image(path: str | Path) -> UnreadableImage | None:
    """Decode an image file as training does, JPEGs at a reduced scale; return why it failed, or None.

    The decoder checks the content, not the file name, and rejects images
    over its pixel limit before decoding any pixel.
    """
    try:
        load_image(path, draft_size=CHECK_DRAFT_SIZE)
    except ImageDataError as error:
        return UnreadableImage.from_error(error)
    return None


def find_unreadable_images(paths: Iterable[str | Path], *, threads: int = 1) -> list[UnreadableImage]:
    """Check each distinct image file once with `check_image`; return the failures in the order of `paths`.

    `threads` > 1 checks that many files at a time in a thread pool.
    """
    unique = list(dict.fromkeys(Path(path) for path in paths))
    if threads > 1 and len(unique) > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-check") as pool:
            results = list(pool.map(check_image, unique))
    else:
        results = [check_image(path) for path in unique]
    return [result for result in results if result is not None]


class SkippedImages:
    """The unreadable images a run leaves out, counted per source.

    The first `max_warnings` images get a warning each. Later ones are only
    counted, and `log_summary` reports the total. An image is counted once,
    under the first source it was added from.
    """

    def __init__(self, max_warnings: int = MAX_UNREADABLE_WARNINGS) -> None:
        self.max_warnings = max_warnings
        self.by_source: Counter[str] = Counter()
        self._paths: set[Path] = set()

    def __len__(self) -> int:
        return len(self._paths)

    def add(self, image: UnreadableImage, source: str) -> None:
        if image.path in self._paths:
            return
        self._paths.add(image.path)
        self.by_source[source] += 1
        if len(self._paths) <= self.max_warnings:
            logger.warning("skipping unreadable image (%s): %s", source, image.message)
        elif len(self._paths) == self.max_warnings + 1:
            logger.warning("more unreadable images are skipped; only their count is logged from here on")

    def log_summary(self) -> None:
        if self._paths:
            counts = ", ".join(f"{source} {count}" for source, count in sorted(self.by_source.items()))
            logger.warning("skipped %d %s in all (%s)", len(self._paths), unreadable_images(len(self._paths)), counts)

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.by_source.items()))


def unreadable_images(count: int) -> str:
    """Return "unreadable image" or "unreadable images", the form that follows the number `count`."""
    return "unreadable image" if count == 1 else "unreadable images"


def drop_unreadable(
    groups: dict[str, Sequence[Sample]],
    unreadable: Sequence[UnreadableImage],
    *,
    strict: bool,
    skipped: SkippedImages,
) -> dict[str, list[Sample]]:
    """Remove the samples whose file is in `unreadable` from each named group, recording them in `skipped`.

    With `strict`, raise `ImageDataError` for the first unreadable file in
    group order instead.
    """
    failures = {image.path: image for image in unreadable}
    if strict and failures:
        first = next(
            (failures[sample.path] for samples in groups.values() for sample in samples if sample.path in failures),
            unreadable[0],
        )
        others = len(failures) - 1
        raise ImageDataError(
            f"{first.message}{f' ({others} more {unreadable_images(others)})' if others else ''}; "
            f"fix or remove the file, or leave out --strict-data to skip unreadable images",
            path=first.path,
            reason=first.reason,
        )
    remaining: dict[str, list[Sample]] = {}
    for name, samples in groups.items():
        remaining[name] = []
        for sample in samples:
            if sample.path in failures:
                skipped.add(failures[sample.path], name)
            else:
                remaining[name].append(sample)
    return remaining


def check_classes_left(samples: Sequence[Sample], labels: LabelSet, *, skipped: int, where: str) -> None:
    """Raise `ImageDataError` when unreadable images left a class of `labels` without training images.

    A label set has at least 2 classes, so this also stops a run that would
    be left with fewer than 2.
    """
    present = {sample.label for sample in samples}
    empty = [class_id for label, class_id in enumerate(labels.class_ids) if label not in present]
    if not empty:
        return
    cause = f"after skipping {skipped} {unreadable_images(skipped)}, " if skipped else ""
    too_few = f", which leaves {len(present)} of {len(labels)} classes and training needs at least 2" if len(present) < 2 else ""
    raise ImageDataError(
        f"{cause}these classes have no readable training images in {where}: {', '.join(empty)}{too_few}. "
        f"Fix or replace their unreadable files"
    )


# ---------------------------------------------------------------------------
# Sources


def load_splits(spec: DataSpec) -> Splits:
    """Resolve a data spec to its label set and samples per split."""
    if spec.is_flowers102:
        splits = load_flowers102(Path(spec.root) if spec.root else DEFAULT_FLOWERS102_ROOT, download=spec.download)
    else:
        splits = load_image_folder(Path(spec.source), val_fraction=spec.val_fraction, split_seed=spec.split_seed)
    if spec.limit_per_class is not None:
        splits = Splits(
            labels=splits.labels,
            train=limit_per_class(splits.train, spec.limit_per_class),
            val=limit_per_class(splits.val, spec.limit_per_class),
            test=limit_per_class(splits.test, spec.limit_per_class) if splits.test is not None else None,
        )
    logger.info(
        "data %s: %d classes, %d train, %d val, %s test images",
        spec.source,
        len(splits.labels),
        len(splits.train),
        len(splits.val),
        len(splits.test) if splits.test is not None else "no",
    )
    return splits


def _folder_samples(root: Path, class_ids: Sequence[str], *, allow_missing_classes: bool) -> list[Sample]:
    samples: list[Sample] = []
    for label, class_id in enumerate(class_ids):
        class_dir = root / class_id
        if not class_dir.is_dir():
            if allow_missing_classes:
                logger.warning("split %s has no folder for class %r", root, class_id)
                continue
            raise FileNotFoundError(f"class folder {class_dir} is missing")
        files = sorted(
            path for path in class_dir.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        samples.extend(Sample(path, label) for path in files)
    extra = sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in set(class_ids)
    )
    if extra:
        raise ValueError(f"{root} has class folders that the training split lacks: {', '.join(extra)}")
    return samples


def load_image_folder(root: Path, *, val_fraction: float = 0.2, split_seed: int = 0) -> Splits:
    """Read an ImageFolder directory with `train/` and `val/`, or split one folder of classes per class."""
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist; pass an ImageFolder directory or 'flowers102'")
    labels = LabelSet.from_path(root)
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise FileNotFoundError(f"{root} has train/ but no val/; add val/ with the same class folders")
        train = _folder_samples(root / "train", labels.class_ids, allow_missing_classes=False)
        val = _folder_samples(root / "val", labels.class_ids, allow_missing_classes=True)
        test = _folder_samples(root / "test", labels.class_ids, allow_missing_classes=True) if (root / "test").is_dir() else None
    else:
        everything = _folder_samples(root, labels.class_ids, allow_missing_classes=False)
        train, val = split_by_fraction(everything, val_fraction=val_fraction, seed=split_seed)
        test = None
    trained = {sample.label for sample in train}
    empty = [class_id for label, class_id in enumerate(labels.class_ids) if label not in trained]
    if empty:
        raise ValueError(f"these classes have no training images in {root}: {', '.join(empty)}")
    if not val:
        raise ValueError(f"the validation split of {root} is empty")
    return Splits(labels=labels, train=train, val=val, test=test)


def split_by_fraction(samples: Sequence[Sample], *, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split each class by a seeded shuffle: round(n * val_fraction) images to val, at least one kept for train."""
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    generator = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda sample: str(sample.path))
        generator.shuffle(members)
        count = min(round(len(members) * val_fraction), len(members) - 1)
        val.extend(members[:count])
        train.extend(members[count:])
    return train, val


def limit_per_class(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """Keep the first `limit` samples of each class, in their original order."""
    seen: Counter[int] = Counter()
    kept: list[Sample] = []
    for sample in samples:
        if seen[sample.label] < limit:
            seen[sample.label] += 1
            kept.append(sample)
    return kept


def load_flowers102(root: Path, *, download: bool = False) -> Splits:
    """Load Oxford 102 through torchvision, checking split sizes, labels and class names."""
    from torchvision.datasets import Flowers102

    labels = LabelSet.oxford102()
    if len(labels) != FLOWERS102_CLASSES:
        raise AssertionError(f"LabelSet.oxford102() has {len(labels)} classes, expected {FLOWERS102_CLASSES}")
    torchvision_names = getattr(Flowers102, "classes", None)
    if torchvision_names is not None:
        # torchvision 0.29 spells class 59 "pink-yellow dahlia?"; the label set drops the question mark.
        ours = [name.rstrip("?").strip().lower() for name in labels.display_names("en")]
        theirs = [name.rstrip("?").strip().lower() for name in torchvision_names]
        if ours != theirs:
            different = [index for index, (a, b) in enumerate(zip(ours, theirs)) if a != b]
            raise AssertionError(f"LabelSet.oxford102() English names differ from torchvision's Flowers102.classes at {different[:5]}")

    splits: dict[str, list[Sample]] = {}
    for split, expected in FLOWERS102_SPLIT_SIZES.items():
        try:
            dataset = Flowers102(str(root), split=split, download=download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"Oxford 102 is not in {root}/flowers-102 ({error}). Pass --download to fetch it, "
                f"or point --data-root at a directory holding flowers-102/jpg, imagelabels.mat and setid.mat"
            ) from error
        # NOTE: `_image_files` and `_labels` are private attributes of
        # torchvision's Flowers102 (0.29); reading them avoids decoding every
        # image through `__getitem__` just to learn its label.
        files: list[Path] = list(dataset._image_files)
        targets: list[int] = [int(label) for label in dataset._labels]
        if len(files) != expected:
            raise AssertionError(f"Oxford 102 {split} split has {len(files)} images, expected {expected}")
        if min(targets) < 0 or max(targets) >= FLOWERS102_CLASSES:
            raise AssertionError(f"Oxford 102 {split} labels span {min(targets)}..{max(targets)}, expected 0..101")
        splits[split] = [Sample(Path(path), label) for path, label in zip(files, targets)]
    if set(s.label for s in splits["train"]) != set(range(FLOWERS102_CLASSES)):
        raise AssertionError("Oxford 102 train split does not cover all 102 labels")
    return Splits(labels=labels, train=splits["train"], val=splits["val"], test=splits["test"])


# ---------------------------------------------------------------------------
# Extra labelled photos (corrections collected by the bot)


def resolve_examples(examples: Iterable[Any], labels: LabelSet) -> list[Sample]:
    """Turn extra labelled photos into samples.

    Each example is a `Sample`, a `(path, label)` pair or a mapping with
    `path` and `label` keys. The label is an output index or a class id of
    `labels`. A missing file or an unknown label raises ValueError naming it.
    """
    samples: list[Sample] = []
    for position, example in enumerate(examples):
        if isinstance(example, Sample):
            path, label = example.path, example.label
        elif isinstance(example, dict):
            try:
                path, label = example["path"], example["label"]
            except KeyError as error:
                raise ValueError(f"extra example {position} lacks the key {error.args[0]!r}: {example!r}") from None
        else:
            path, label = example
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"extra example {position}: image file {path} not found")
        if isinstance(label, str) and (label in labels.class_ids or not label.isdigit()):
            try:
                index = labels.index_of(label)
            except KeyError:
                raise ValueError(
                    f"extra example {position} ({path}) has label {label!r}, which is not a class of the training data"
                ) from None
        else:
            index = int(label)
            if not 0 <= index < len(labels):
                raise ValueError(f"extra example {position} ({path}) has label index {index}, outside 0..{len(labels) - 1}")
        samples.append(Sample(path, index))
    return samples


def read_examples_file(path: str | Path) -> list[dict[str, Any]]:
    """Read labelled photos from a JSON list or a JSON-lines file of `{"path": ..., "label": ...}` objects.

    Relative paths are resolved against the file's directory.
    """
    import json

    path = Path(path)
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        entries = json.loads(text)
    else:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    resolved = []
    for entry in entries:
        if not isinstance(entry, dict) or "path" not in entry or "label" not in entry:
            raise ValueError(f'{path}: every entry needs "path" and "label", got {entry!r}')
        image = Path(entry["path"])
        resolved.append({"path": image if image.is_absolute() else path.parent / image, "label": entry["label"]})
    return resolved


def list_images(path: str | Path) -> list[Path]:
    """Return the image files in a directory tree (sorted), or the path itself when it is a file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"image path {path} not found")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return counts
