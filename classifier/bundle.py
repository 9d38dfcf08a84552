"""Model bundles: a directory with everything needed to serve one model.

Layout::

    <bundle>/
        bundle.json   format version, version id, labels, preprocessing,
                      architecture, recipe, metrics, calibration, OOD, exports
        model.pt      the FlowerNet state dict (torch.save)
        model.onnx    optional exports, listed under "exports"
        references/   optional small training photos per class, listed under
                      "references" (see classifier.references)

Reading `bundle.json` needs no torch, so the ONNX serving install can load a
bundle; `state_dict()` and `build_torch_model()` import torch when called.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier.labels import LabelSet, LabelSetError
from classifier.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch

    from classifier.model import FlowerNet

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST_NAME = "bundle.json"
WEIGHTS_NAME = "model.pt"
SUPPORTED_ARCHITECTURES = ("convnext_tiny",)
HOW_TO_MAKE_A_BUNDLE = (
    "make one with `python -m classifier new-bundle --classes PATH --out DIR` (random weights) "
    "or train one with `python -m training train`"
)


class BundleError(Exception):
    """A bundle directory that is missing, incomplete or unreadable."""


def new_version_id(now: dt.datetime | None = None) -> str:
    """Return a sortable, unique version id such as `20250101-120000-a1b2c3` (UTC time plus 6 hex digits)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _default_calibration() -> dict[str, Any]:
    return {"temperature": 1.0}


def _default_ood() -> dict[str, Any]:
    # "energy": the score is T * logsumexp(logits / T), higher for in-distribution photos.
    return {"score": "energy", "temperature": 1.0, "threshold": None}


@dataclass
class Bundle:
    """A model bundle: metadata from `bundle.json` plus lazily loaded weights.

    `calibration["temperature"]` divides the logits before the softmax.
    `ood["score"]` is `energy` or `msp`, and `ood["threshold"]` (None until
    fitted) is the score below which a photo is called out of distribution.
    `exports` maps a name such as `onnx` to `{"file": ..., "fit_for_serving": bool, ...}`.
    `references` maps a class index (as a string) to reference photo files
    inside the bundle, such as `{"0": ["references/0-0.jpg"]}`.
    """

    version: str
    labels: LabelSet
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    architecture: str = "convnext_tiny"
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=_default_calibration)
    ood: dict[str, Any] = field(default_factory=_default_ood)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    path: Path | None = None
    _state_dict: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    # Derived values

    @property
    def num_classes(self) -> int:
        """Number of classes, which is the model's output size."""
        return len(self.labels)

    @property
    def temperature(self) -> float:
        """Calibration temperature (1.0 when not calibrated)."""
        return float(self.calibration.get("temperature") or 1.0)

    @property
    def ood_threshold(self) -> float | None:
        """OOD score threshold, or None when no threshold was fitted."""
        threshold = self.ood.get("threshold")
        return None if threshold is None else float(threshold)

    def export_path(self, name: str) -> Path | None:
        """Return the path of export `name` inside this bundle, or None when it is not listed."""
        entry = self.exports.get(name)
        if not entry or not entry.get("file") or self.path is None:
            return None
        return self.path / entry["file"]

    # Weights

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        """Return the model weights, reading `model.pt` on first use."""
        if self._state_dict is None:
            if self.path is None:
                raise BundleError("this bundle has neither weights in memory nor a directory to read them from")
            weights_path = self.path / WEIGHTS_NAME
            if not weights_path.is_file():
                raise BundleError(f"model bundle {self.path} has no {WEIGHTS_NAME}; {HOW_TO_MAKE_A_BUNDLE}")
            import torch

            try:
                self._state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
            except Exception as error:  # torch.load raises many types for a damaged file
                raise BundleError(f"cannot read {weights_path}: {error}; {HOW_TO_MAKE_A_BUNDLE}") from error
        return self._state_dict

    def set_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the weights held in memory; `save` writes them."""
        self._state_dict = state_dict

    def build_torch_model(self) -> FlowerNet:
        """Build the FlowerNet, load the weights and put it in eval mode (on the CPU)."""
        from classifier.model import build_model

        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise BundleError(f"unsupported architecture {self.architecture!r}; expected one of {SUPPORTED_ARCHITECTURES}")
        model = build_model(self.num_classes)
        try:
            model.load_state_dict(self.state_dict())
        except RuntimeError as error:
            raise BundleError(f"the weights in {self.path} do not fit {self.num_classes} classes: {error}") from error
        return model.eval()

    # Serialization

    def to_dict(self) -> dict[str, Any]:
        """Return the content of `bundle.json`."""
        return {
            "format": BUNDLE_FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "architecture": self.architecture,
            "labels": self.labels.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "recipe": self.recipe,
            "metrics": self.metrics,
            "calibration": self.calibration,
            "ood": self.ood,
            "exports": self.exports,
            "references": self.references,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, path: Path | None = None) -> Bundle:
        """Build a bundle from the content of `bundle.json`."""
        where = f" in {path / MANIFEST_NAME}" if path else ""
        format_version = document.get("format")
        if format_version != BUNDLE_FORMAT:
            raise BundleError(f"unsupported bundle format {format_version!r}{where}; this code reads format {BUNDLE_FORMAT}")
        for key in ("version", "labels"):
            if key not in document:
                raise BundleError(f'missing "{key}"{where}')
        try:
            labels = LabelSet.from_dict(document["labels"])
            preprocessing = Preprocessing.from_dict(document.get("preprocessing", {}))
        except (LabelSetError, ValueError, TypeError) as error:
            raise BundleError(f"invalid bundle metadata{where}: {error}") from error
        return cls(
            version=str(document["version"]),
            labels=labels,
            preprocessing=preprocessing,
            architecture=document.get("architecture", "convnext_tiny"),
            recipe=dict(document.get("recipe") or {}),
            metrics=dict(document.get("metrics") or {}),
            calibration={**_default_calibration(), **(document.get("calibration") or {})},
            ood={**_default_ood(), **(document.get("ood") or {})},
            exports={name: dict(entry) for name, entry in (document.get("exports") or {}).items()},
            references={str(index): [str(name) for name in names] for index, names in (document.get("references") or {}).items()},
            created_at=str(document.get("created_at", "")),
            path=path,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Bundle:
        """Read `bundle.json` from `directory`; the weights are read later, on first use."""
        directory = Path(directory)
        if not directory.is_dir():
            raise BundleError(f"model bundle not found: {directory} is not a directory; {HOW_TO_MAKE_A_BUNDLE}")
        manifest = directory / MANIFEST_NAME
        if not manifest.is_file():
            raise BundleError(f"{directory} is not a model bundle: {MANIFEST_NAME} is missing; {HOW_TO_MAKE_A_BUNDLE}")
        if not (directory / WEIGHTS_NAME).is_file():
            raise BundleError(f"model bundle {directory} has no {WEIGHTS_NAME}; {HOW_TO_MAKE_A_BUNDLE}")
        try:
            document = json.loads(manifest.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BundleError(f"{manifest} is not valid JSON: {error}; {HOW_TO_MAKE_A_BUNDLE}") from error
        if not isinstance(document, dict):
            raise BundleError(f"{manifest} must contain a JSON object")
        bundle = cls.from_dict(document, path=directory.resolve())
        logger.info("loaded model bundle %s (%d classes) from %s", bundle.version, bundle.num_classes, directory)
        return bundle

    def save(
        self,
        directory: str | os.PathLike,
        *,
        state_dict: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, str | os.PathLike] | None = None,
    ) -> Path:
        """Write the bundle to `directory` and return its path.

        The files are written into a temporary sibling directory, which is then
        renamed to `directory`, so readers never see a half-written bundle. An
        existing bundle at `directory` is first renamed aside and removed after
        the new one is in place.

        `extra_files` maps a file name inside the bundle to a source path, for
        example `{"model.onnx": tmp_path}`. Files listed in `exports`, with
        their `<file>.data` external weights and any `data_files`, are copied
        from the current bundle directory.
        """
        import torch

        directory = Path(directory)
        if state_dict is not None:
            self._state_dict = state_dict
        weights = self.state_dict()

        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            torch.save(dict(weights), staging / WEIGHTS_NAME)
            self._copy_files(staging, extra_files or {})
            manifest = staging / MANIFEST_NAME
            manifest.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            _fsync_directory_files(staging)
            _replace_directory(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.path = directory.resolve()
        logger.info("saved model bundle %s to %s", self.version, directory)
        return directory

    def _copy_files(self, staging: Path, extra_files: Mapping[str, str | os.PathLike]) -> None:
        for name, source in extra_files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / name)
        for names in self.references.values():
            for name in names:
                source = self.path / name if self.path else None
                if not (staging / name).exists() and source is not None and source.is_file():
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, staging / name)
        for export_name, entry in self.exports.items():
            file_name = entry.get("file")
            if not file_name:
                continue
            # ONNX models over 2 GB, and some exporters by default, keep weights in `<file>.data`.
            names = [file_name, *entry.get("data_files", []), f"{file_name}.data"]
            for name in names:
                if (staging / name).exists():
                    continue
                source = self.path / name if self.path else None
                if source is not None and source.is_file():
                    shutil.copy2(source, staging / name)
                elif name == file_name:
                    raise BundleError(
                        f'export "{export_name}" lists {file_name}, which is neither in extra_files nor in {self.path}'
                    )

    def copy(self) -> Bundle:
        """Return a copy with independent metadata dicts that shares the weights."""
        return Bundle(
            version=self.version,
            labels=self.labels,
            preprocessing=self.preprocessing,
            architecture=self.architecture,
            recipe=copy.deepcopy(self.recipe),
            metrics=copy.deepcopy(self.metrics),
            calibration=copy.deepcopy(self.calibration),
            ood=copy.deepcopy(self.ood),
            exports=copy.deepcopy(self.exports),
            references=copy.deepcopy(self.references),
            created_at=self.created_at,
            path=self.path,
            _state_dict=self._state_dict,
        )


def _fsync_directory_files(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir():
            _fsync_directory_files(entry)
            continue
        with open(entry, "rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_directory(staging: Path, directory: Path) -> None:
    """Rename `staging` to `directory`, moving an existing `directory` aside first.

    NOTE: POSIX cannot swap two directories in one rename, so for a moment
    between the two renames `directory` does not exist. A crash there leaves
    the old bundle at `.<name>.old-*` beside it.
    """
    if not directory.exists():
        os.replace(staging, directory)
        return
    if not (directory / MANIFEST_NAME).is_file() and any(directory.iterdir()):
        raise BundleError(f"refusing to replace {directory}: it is a non-empty directory without {MANIFEST_NAME}")
    aside = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(directory, aside)
    try:
        os.replace(staging, directory)
    except BaseException:
        os.replace(aside, directory)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def new_random_bundle(
    labels: LabelSet,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
) -> Bundle:
    """Write a bundle with randomly initialized weights (seeded) for `labels` and return it.

    The global torch random state is left as it was.
    """
    import torch

    from classifier.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(len(labels))
    bundle = Bundle(
        version=new_version_id(),
        labels=labels,
        preprocessing=preprocessing or Preprocessing(),
        recipe={"kind": "random-init", "seed": seed},
    )
    bundle.save(out, state_dict=model.state_dict())
    return bundle
