"""Resumable training checkpoints, written to `<out>/checkpoint.pt` after every epoch.

A checkpoint contains the trained parameters (the head alone when the backbone
is frozen, else the whole model), the optimizer, scheduler and early-stopping
state, the best weights so far, the per-epoch history, the random number
generator states, and the resolved recipe, data spec and weights spec. It is
saved with tensors and plain Python values only, so it loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
FEATURES_NAME = "features.pt"
CHECKPOINT_FORMAT = 1


def capture_rng_state() -> dict[str, Any]:
    """Return the torch, NumPy and Python generator states as tensors and plain values."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": python_state[0], "state": list(python_state[1]), "gauss": python_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically: to a temporary file that is renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}; this code reads format {CHECKPOINT_FORMAT}")
    return state


def check_resumable(state: dict[str, Any], *, recipe: dict, data: dict, weights: str, path: Path) -> None:
    """Raise ValueError when the checkpoint was made by a run with another recipe, data or weights."""
    differences = [
        f"recipe.{key}: checkpoint {state['recipe'].get(key)!r}, now {value!r}"
        for key, value in recipe.items()
        if state["recipe"].get(key) != value
    ]
    if state.get("data") != data:
        differences.append(f"data: checkpoint {state.get('data')!r}, now {data!r}")
    if state.get("weights") != weights:
        differences.append(f"weights: checkpoint {state.get('weights')!r}, now {weights!r}")
    if differences:
        raise ValueError(
            f"cannot resume from {path}: the run differs in " + "; ".join(differences)
            + ". Rerun with the same settings, or without --resume to start over"
        )
