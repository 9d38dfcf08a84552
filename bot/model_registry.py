"""The model directory and the model registry at start-up.

`choose_serving_bundle` picks the bundle the bot loads, so a model promoted by
/retrain or chosen by /rollback keeps serving after a restart.
`register_serving_bundle` brings the registry in line with the bundle that
serves, `clean_model_dir` removes what a crash left in the model directory, and
`prune_old_bundles` deletes old rejected and retired bundles.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier.backends import unservable_reason
from classifier.bundle import Bundle, BundleError

if TYPE_CHECKING:
    from bot.settings import Settings
    from storage.models import ModelVersion
    from storage.repository import Repository

logger = logging.getLogger(__name__)

# Prefix of a retraining run's work directory inside the model directory.
WORK_DIR_PREFIX = ".retrain-"
# Metrics copied from a bundle into its registry row; the rest (history, per class) stays in bundle.json.
SUMMARY_METRIC_KEYS = ("val_top1", "val_top5", "epochs_run", "best_epoch", "train_samples", "val_samples")


class UnservableBundleError(Exception):
    """The bundle at `path` loads, but the configured backend cannot serve it, for `reason`."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def clean_model_dir(models_dir: Path) -> list[Path]:
    """Remove what a crash can leave in the model directory and return the removed paths.

    - `.retrain-*`: work directories of runs that did not finish;
    - `.<name>.tmp-*` and `.<name>.training-*`: staging directories of
      `Bundle.save` and of training, never renamed into place;
    - `.<name>.old-*`: a bundle moved aside while being replaced. It is removed
      when `<name>` exists, and renamed back to `<name>` otherwise, because then
      the crash came between the two renames and it is the only copy.
    """
    removed: list[Path] = []
    if not models_dir.is_dir():
        return removed
    for entry in sorted(models_dir.iterdir()):
        if not entry.is_dir() or not entry.name.startswith("."):
            continue
        if entry.name.startswith(WORK_DIR_PREFIX) or ".tmp-" in entry.name or ".training-" in entry.name:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif ".old-" in entry.name:
            original = models_dir / entry.name[1:].rsplit(".old-", 1)[0]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            else:
                os.replace(entry, original)
                logger.warning("restored bundle %s from %s, left by a crash between two renames", original, entry)
    for path in removed:
        logger.warning("removed %s, left in the model directory by an interrupted run or save", path)
    return removed


async def prune_old_bundles(repository: Repository, models_dir: Path, keep: int) -> list[str]:
    """Delete the directories of rejected and retired bundles beyond the `keep` newest of each status.

    Only directories inside `models_dir` are deleted, because a MODEL_PATH elsewhere
    belongs to the operator, and never the serving bundle or the one /rollback returns
    to. The registry rows stay as history. Returns the versions whose directory was deleted.
    """
    serving = await repository.serving_model()
    previous = await repository.previous_model()
    protected = {model.version for model in (serving, previous) if model is not None}
    models = await repository.list_models()
    root = models_dir.resolve()
    removed: list[str] = []
    for status in ("rejected", "retired"):
        old = [model for model in models if model.status == status and model.version not in protected]
        for model in old[: max(0, len(old) - keep)]:
            path = Path(model.path).resolve()
            if path.parent != root or not path.is_dir():
                continue
            try:
                await asyncio.to_thread(shutil.rmtree, path)
            except OSError as error:
                logger.warning("could not delete the %s bundle %s at %s: %s", status, model.version, path, error)
                continue
            removed.append(model.version)
            logger.info("deleted the %s bundle %s at %s (RETRAIN_KEEP_OLD_MODELS=%d)", status, model.version, path, keep)
    return removed


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Return the bundle metrics that go into the registry row."""
    return {key: metrics[key] for key in SUMMARY_METRIC_KEYS if key in metrics}


async def choose_serving_bundle(settings: Settings, repository: Repository) -> Bundle:
    """Return the bundle the bot should serve at start-up, and record it in the registry.

    MODEL_PATH names the operator's bundle. When its version is new to the
    registry, it is registered and serves: the operator chose it. When the
    registry contains it and serves another version (promoted by /retrain or
    chosen by /rollback), that version serves, if its files still load and
    BACKEND can serve it (BACKEND=onnx needs an ONNX export).

    Raises `UnservableBundleError` without touching the registry when the bundle that
    should serve cannot be served with BACKEND, so a failed start leaves the registry
    as it was.
    """
    configured = await asyncio.to_thread(Bundle.load, settings.model_path)
    configured_problem = unservable_reason(configured, settings.backend)
    known = await repository.get_model(configured.version)
    serving = await repository.serving_model()
    if known is None or serving is None or serving.version == configured.version:
        if configured_problem is not None:
            raise UnservableBundleError(settings.model_path, configured_problem)
        await register_serving_bundle(repository, configured)
        return configured
    try:
        chosen = await asyncio.to_thread(Bundle.load, serving.path)
    except BundleError as error:
        problem = f"its files cannot be loaded ({error})"
    else:
        problem = unservable_reason(chosen, settings.backend)
    if problem is not None:
        if configured_problem is not None:
            logger.error("registry's serving model %s cannot be served with BACKEND=%s either: %s", serving.version, settings.backend, problem)
            raise UnservableBundleError(settings.model_path, configured_problem)
        logger.error(
            "registry's serving model %s cannot be served with BACKEND=%s (%s); serving MODEL_PATH %s instead",
            serving.version, settings.backend, problem, configured.version,
        )
        await register_serving_bundle(repository, configured)
        return configured
    logger.info("serving %s from the registry instead of MODEL_PATH's %s", chosen.version, configured.version)
    return chosen


def bundle_created_at(bundle: Bundle) -> datetime | None:
    """Return the time stamp written into `bundle` when it was saved, as an aware UTC datetime.

    Returns None, so the registry uses the time of registration, when the bundle has no
    time stamp or an invalid one.
    """
    if not bundle.created_at:
        return None
    try:
        created = datetime.fromisoformat(bundle.created_at)
    except ValueError:
        logger.warning("bundle %s has an invalid created_at %r; the registry records the time of registration", bundle.version, bundle.created_at)
        return None
    if created.tzinfo is None:
        return created.replace(tzinfo=timezone.utc)
    return created.astimezone(timezone.utc)


async def register_serving_bundle(repository: Repository, bundle: Bundle) -> ModelVersion:
    """Register `bundle` when the registry lacks it and mark it serving, so the registry matches what serves."""
    if bundle.path is None:
        raise ValueError(f"bundle {bundle.version} has no directory; only a saved bundle can be registered")
    model = await repository.get_model(bundle.version)
    if model is None:
        model = await repository.register_model(
            bundle.version, str(bundle.path), metrics=summarize_metrics(bundle.metrics), created_at=bundle_created_at(bundle)
        )
    if model.status != "serving":
        model = await repository.set_serving(bundle.version)
    return model
