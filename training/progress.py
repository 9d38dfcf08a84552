"""Progress events of a training run, for a callback or as JSON lines on stdout.

`python -m training train --progress-json` prints one JSON object per line on
stdout and nothing else there (logs go to stderr), so a supervisor process
such as the bot's retrain job can parse stdout line by line. The library
entry `training.train.train(..., progress=callback)` passes the same dicts to
`callback`. Every event has an `event` key:

- `{"event": "phase", "phase": P}` when a phase starts. P is one of
  `load_data`, `weights`, `features`, `train`, `calibrate`, `save`.
- `{"event": "progress", "phase": "features", "done": n, "total": m}` during
  feature extraction, at most about once a second.
- `{"event": "epoch", "epoch": e, "epochs": E, "train_loss": float,
  "train_acc": float, "val_acc": float, "val_top5": float, "lr": float,
  "best_val_acc": float, "best_epoch": int, "improved": bool, "seconds": float}`
  after each epoch; `epoch` counts from 1, accuracies are fractions 0..1.
- `{"event": "early_stop", "epoch": e, "best_epoch": b, "best_val_acc": float}`
  when early stopping ends training.
- `{"event": "done", "out": path, "version": id, "val_acc": float,
  "val_top5": float, "epochs_run": int, "seconds": float}` after the bundle
  is written.
- `{"event": "error", "message": text}` when the run fails (printed by the
  command-line entry before it exits with status 2 for invalid input, such as
  a missing data folder or unreadable weights, and 1 for other failures).

Floats are plain JSON numbers; NaN never appears.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]

PHASES = ("load_data", "weights", "features", "train", "calibrate", "save")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value


class ProgressReporter:
    """Sends progress events to an optional callback; silent on ranks other than 0."""

    def __init__(self, callback: ProgressCallback | None = None, *, enabled: bool = True, min_interval_s: float = 1.0) -> None:
        self.callback = callback
        self.enabled = enabled and callback is not None
        self.min_interval_s = min_interval_s
        self._last_progress = 0.0

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        payload = {"event": event, **{key: _clean(value) for key, value in fields.items()}}
        try:
            self.callback(payload)
        except Exception:
            # A failing observer must not end a training run that took minutes.
            logger.exception("progress callback failed on event %s", event)

    def phase(self, name: str) -> None:
        logger.info("phase: %s", name)
        self.emit("phase", phase=name)

    def step(self, phase: str, done: int, total: int) -> None:
        """Emit a `progress` event, throttled to one per `min_interval_s` except the last."""
        now = time.monotonic()
        if done < total and now - self._last_progress < self.min_interval_s:
            return
        self._last_progress = now
        self.emit("progress", phase=phase, done=done, total=total)


def json_lines_callback(stream: TextIO | None = None) -> ProgressCallback:
    """Return a callback that writes each event as one JSON line to `stream` (stdout by default), flushed."""

    def write(event: dict[str, Any]) -> None:
        target = stream if stream is not None else sys.stdout
        target.write(json.dumps(event, ensure_ascii=False, allow_nan=False) + "\n")
        target.flush()

    return write
