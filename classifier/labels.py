"""Label sets: the ordered classes a model predicts, with display names per language.

A `LabelSet` maps output index `i` of a model to a stable class id (a folder name,
a line of a text file, or an Oxford 102 name) and to display names in English
(`en`) and Simplified Chinese (`zh`). A set may carry only one language, and
`display_name` then falls back to the language it has.

A class may also have aliases per language: other common names that a name search
should find (月季 for rose), which are never shown as the class's name.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"
MIN_CLASSES = 2

# Chinese names for class folder names that are common outside Oxford 102,
# such as the five classes of the TensorFlow flowers data set. Oxford 102
# names are looked up in classifier/data/oxford102.json as well.
COMMON_CHINESE_NAMES = {
    "daisy": "雏菊",
    "dandelion": "蒲公英",
    "roses": "玫瑰",
    "rose": "玫瑰",
    "sunflowers": "向日葵",
    "sunflower": "向日葵",
    "tulips": "郁金香",
    "tulip": "郁金香",
}

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}


class LabelSetError(ValueError):
    """A label file or directory that cannot be read as a label set."""


def _reject_near_duplicates(class_ids: Sequence[str]) -> None:
    """Raise `LabelSetError` when two class ids are equal ignoring case and surrounding whitespace."""
    first_by_key: dict[str, str] = {}
    for class_id in class_ids:
        key = class_id.strip().casefold()
        if key in first_by_key:
            raise LabelSetError(
                f"class ids {first_by_key[key]!r} and {class_id!r} differ only in case or surrounding whitespace; "
                "keep one of them"
            )
        first_by_key[key] = class_id


def normalize_language(lang: str | None) -> str:
    """Reduce a language tag such as `zh-hans` or `en_US` to its primary subtag (`zh`, `en`)."""
    if not lang:
        return DEFAULT_LANGUAGE
    return lang.replace("_", "-").split("-", 1)[0].lower()


def _lookup_key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


@functools.cache
def _known_chinese_names() -> dict[str, str]:
    """Return English name -> Chinese name for Oxford 102 and the common folder names."""
    known = {_lookup_key(english): chinese for english, chinese in COMMON_CHINESE_NAMES.items()}
    for entry in _read_oxford102_entries():
        known.setdefault(_lookup_key(entry["names"]["en"]), entry["names"]["zh"])
    return known


@functools.cache
def _known_aliases() -> dict[str, dict[str, tuple[str, ...]]]:
    """Return English name -> aliases per language, from the Oxford 102 entries that have aliases."""
    known: dict[str, dict[str, tuple[str, ...]]] = {}
    for position, entry in enumerate(_read_oxford102_entries()):
        aliases = _read_aliases(entry, position)
        if aliases:
            known[_lookup_key(entry["names"]["en"])] = aliases
    return known


def _aliases_for_folder_name(class_id: str) -> dict[str, tuple[str, ...]]:
    """Return the known aliases of a class named like an Oxford 102 class, also in the plural (`roses`)."""
    known = _known_aliases()
    key = _lookup_key(class_id)
    if key in known:
        return known[key]
    if key.endswith("s"):
        return known.get(key[:-1], {})
    return {}


def _read_aliases(entry: Mapping[str, Any], position: int) -> dict[str, tuple[str, ...]]:
    """Read a class entry's optional `"aliases": {lang: [name, ...]}`, raising `LabelSetError` when malformed."""
    raw = entry.get("aliases")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise LabelSetError(f'class entry {position}: "aliases" must map a language to a list of names, got {raw!r}')
    aliases: dict[str, tuple[str, ...]] = {}
    for lang, names in raw.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise LabelSetError(f'class entry {position}: aliases in {lang!r} must be a list of strings, got {names!r}')
        cleaned = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
        if cleaned:
            aliases[normalize_language(lang)] = cleaned
    return aliases


@functools.cache
def _read_oxford102_entries() -> tuple[dict[str, Any], ...]:
    text = resources.files("classifier").joinpath("data/oxford102.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["classes"])


@dataclass(frozen=True)
class LabelSet:
    """Ordered class ids with display names and search aliases per language.

    `names[lang][i]` is the display name of class `i` in `lang`; an empty string
    marks a name that is unknown in that language. `aliases[lang][i]` is a tuple
    of other names of class `i` in `lang` (often empty); a language without any
    alias has no key.
    """

    class_ids: tuple[str, ...]
    names: Mapping[str, tuple[str, ...]]
    source: str = ""
    aliases: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_ids", tuple(self.class_ids))
        object.__setattr__(self, "names", MappingProxyType({lang: tuple(names) for lang, names in self.names.items()}))
        object.__setattr__(
            self,
            "aliases",
            MappingProxyType({lang: tuple(tuple(names) for names in per_class) for lang, per_class in self.aliases.items()}),
        )
        if len(self.class_ids) < MIN_CLASSES:
            # A softmax over one class returns 100% for every input.
            raise LabelSetError(
                f"a label set needs at least {MIN_CLASSES} classes, got {len(self.class_ids)}: "
                f"{', '.join(self.class_ids) or '(none)'}; add the other classes the model must tell apart"
            )
        duplicates = sorted({cid for cid in self.class_ids if self.class_ids.count(cid) > 1})
        if duplicates:
            raise LabelSetError(f"duplicate class ids in label set: {', '.join(duplicates)}")
        if any(not cid.strip() for cid in self.class_ids):
            raise LabelSetError("class ids must not be empty")
        _reject_near_duplicates(self.class_ids)
        for lang, names in self.names.items():
            if len(names) != len(self.class_ids):
                raise LabelSetError(
                    f"label set has {len(self.class_ids)} classes but {len(names)} names in language {lang!r}"
                )
        for lang, per_class in self.aliases.items():
            if len(per_class) != len(self.class_ids):
                raise LabelSetError(
                    f"label set has {len(self.class_ids)} classes but {len(per_class)} alias lists in language {lang!r}"
                )

    def __hash__(self) -> int:
        return hash((self.class_ids, tuple(sorted(self.names.items())), tuple(sorted(self.aliases.items()))))

    # Construction

    @classmethod
    def from_names(cls, names: Iterable[str], *, source: str = "") -> LabelSet:
        """Build a label set from class names, adding Chinese names and aliases where they are known."""
        class_ids = tuple(name.strip() for name in names)
        english = tuple(cid.replace("_", " ") for cid in class_ids)
        known = _known_chinese_names()
        chinese = tuple(known.get(_lookup_key(cid), "") for cid in class_ids)
        display: dict[str, tuple[str, ...]] = {"en": english}
        if any(chinese):
            display["zh"] = chinese
        known_aliases = [_aliases_for_folder_name(cid) for cid in class_ids]
        return cls(class_ids=class_ids, names=display, source=source, aliases=_aliases_by_language(known_aliases))

    @classmethod
    def from_path(cls, path: str | Path) -> LabelSet:
        """Read a label set from a text file, a JSON label file or an ImageFolder directory.

        - a directory: its subfolders are the classes, sorted by name as
          torchvision's `ImageFolder` sorts them. When the directory has a
          `train/` subfolder, the classes are read from there.
        - `*.json`: the format `to_dict` writes, or a plain list of names.
        - any other file: one class name per line; blank lines and lines that
          start with `#` are skipped.
        """
        path = Path(path)
        if not path.exists():
            raise LabelSetError(f"label path not found: {path}")
        if path.is_dir():
            return cls._from_image_folder(path)
        if path.suffix.lower() == ".json":
            return cls._from_json_file(path)
        return cls._from_text_file(path)

    @classmethod
    def _from_image_folder(cls, path: Path) -> LabelSet:
        root = path / "train" if (path / "train").is_dir() else path
        class_dirs = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        if not class_dirs:
            has_images = any(entry.suffix.lower() in _IMAGE_SUFFIXES for entry in root.iterdir())
            hint = " (it contains images directly; put each class in its own subfolder)" if has_images else ""
            raise LabelSetError(f"no class subfolders in image folder {root}{hint}")
        return cls.from_names(class_dirs, source=str(root))

    @classmethod
    def _from_text_file(cls, path: Path) -> LabelSet:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise LabelSetError(f"label file {path} is not UTF-8 text: {error}") from error
        names = [line.strip() for line in text.splitlines()]
        names = [name for name in names if name and not name.startswith("#")]
        if not names:
            raise LabelSetError(f"label file {path} has no class names; write one name per line")
        return cls.from_names(names, source=str(path))

    @classmethod
    def _from_json_file(cls, path: Path) -> LabelSet:
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LabelSetError(f"label file {path} is not valid JSON: {error}") from error
        if isinstance(document, list) and all(isinstance(item, str) for item in document):
            return cls.from_names(document, source=str(path))
        labels = cls.from_dict(document)
        return cls(class_ids=labels.class_ids, names=labels.names, source=str(path))

    @classmethod
    def oxford102(cls) -> LabelSet:
        """Return the 102 Oxford Flowers classes in torchvision's `Flowers102` label order."""
        return cls.from_dict({"classes": list(_read_oxford102_entries()), "source": "oxford102"})

    # Serialization

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: `{"source": ..., "classes": [{"id": ..., "names": {lang: name}}]}`.

        A class with aliases also gets `"aliases": {lang: [name, ...]}`.
        """
        classes = []
        for index, class_id in enumerate(self.class_ids):
            entry: dict[str, Any] = {"id": class_id, "names": {lang: names[index] for lang, names in self.names.items() if names[index]}}
            aliases = {lang: list(per_class[index]) for lang, per_class in self.aliases.items() if per_class[index]}
            if aliases:
                entry["aliases"] = aliases
            classes.append(entry)
        return {"source": self.source, "classes": classes}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> LabelSet:
        """Build a label set from the dict `to_dict` returns.

        Each class entry may also be a plain string, or carry its names as
        top-level `en` / `zh` keys, and may carry `"aliases": {lang: [name, ...]}`.
        """
        if not isinstance(document, Mapping) or not isinstance(document.get("classes"), list):
            raise LabelSetError('a label dict needs a "classes" list')
        class_ids: list[str] = []
        per_class_names: list[dict[str, str]] = []
        per_class_aliases: list[dict[str, tuple[str, ...]]] = []
        for position, entry in enumerate(document["classes"]):
            if isinstance(entry, str):
                entry = {"id": entry}
            if not isinstance(entry, Mapping):
                raise LabelSetError(f"class entry {position} must be a string or an object, got {entry!r}")
            names = dict(entry.get("names") or {})
            for lang in LANGUAGES:
                if isinstance(entry.get(lang), str):
                    names.setdefault(lang, entry[lang])
            class_id = entry.get("id") or names.get("en")
            if not isinstance(class_id, str) or not class_id.strip():
                raise LabelSetError(f'class entry {position} has no "id"')
            class_ids.append(class_id)
            per_class_names.append({normalize_language(lang): str(name).strip() for lang, name in names.items()})
            per_class_aliases.append(_read_aliases(entry, position))

        languages = sorted({lang for names in per_class_names for lang, name in names.items() if name})
        if not languages:
            # Names default to the class ids, so a list of ids is a valid English label set.
            per_class_names = [{"en": class_id.replace("_", " ")} for class_id in class_ids]
            languages = ["en"]
        display = {lang: tuple(names.get(lang, "") for names in per_class_names) for lang in languages}
        return cls(
            class_ids=tuple(class_ids),
            names=display,
            source=str(document.get("source", "")),
            aliases=_aliases_by_language(per_class_aliases),
        )

    # Lookup

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages that have at least one display name."""
        return tuple(lang for lang, names in self.names.items() if any(names))

    def index_of(self, class_id: str) -> int:
        """Return the output index of `class_id`; raise `KeyError` when the set lacks it."""
        try:
            return self.class_ids.index(class_id)
        except ValueError:
            raise KeyError(f"class id {class_id!r} is not in this label set") from None

    def display_name(self, index: int, lang: str | None = DEFAULT_LANGUAGE) -> str:
        """Return the name of class `index` in `lang`, falling back to English, then any language, then the id."""
        if not 0 <= index < len(self.class_ids):
            raise IndexError(f"class index {index} is out of range for {len(self.class_ids)} classes")
        for candidate in (normalize_language(lang), DEFAULT_LANGUAGE, *self.names):
            names = self.names.get(candidate)
            if names and names[index]:
                return names[index]
        return self.class_ids[index]

    def display_names(self, lang: str | None = DEFAULT_LANGUAGE) -> list[str]:
        """Return every display name in `lang`, in index order, with the same fallback as `display_name`."""
        return [self.display_name(index, lang) for index in range(len(self.class_ids))]

    def aliases_of(self, index: int) -> tuple[str, ...]:
        """Return every alias of class `index`, in all languages (for search; aliases are never displayed)."""
        return tuple(alias for per_class in self.aliases.values() for alias in per_class[index])

    def matches(self, other: LabelSet | Sequence[str]) -> bool:
        """Return whether `other` has the same class ids in the same order."""
        other_ids = other.class_ids if isinstance(other, LabelSet) else tuple(other)
        return tuple(other_ids) == self.class_ids


def _aliases_by_language(per_class: Sequence[Mapping[str, tuple[str, ...]]]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Turn one `{lang: aliases}` dict per class into `{lang: aliases per class}`, keeping only languages that have any."""
    languages = sorted({lang for aliases in per_class for lang in aliases})
    return {lang: tuple(aliases.get(lang, ()) for aliases in per_class) for lang in languages}
