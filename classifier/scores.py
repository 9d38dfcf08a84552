"""Probability and out-of-distribution scores computed from logits, in NumPy.

Serving and calibration both use these functions, so a threshold fitted in
training means the same thing at serving time.
"""

from __future__ import annotations

import numpy as np

OOD_SCORES = ("energy", "msp")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return softmax(logits / temperature) along the last axis, as float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def logsumexp(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return log(sum(exp(values))) along `axis`, computed without overflow."""
    values = np.asarray(values, dtype=np.float64)
    peak = values.max(axis=axis, keepdims=True)
    return np.squeeze(peak, axis=axis) + np.log(np.exp(values - peak).sum(axis=axis))


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return the negative free energy `T * logsumexp(logits / T)`; higher means more in-distribution.

    The free energy of Liu et al., "Energy-based Out-of-distribution
    Detection" (NeurIPS 2020), is `E(x) = -T * logsumexp(f(x) / T)`, where low
    energy marks in-distribution inputs. This returns `-E(x)`, so that both
    scores here rank in-distribution photos higher.
    """
    return temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature)


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return the maximum softmax probability (after temperature scaling); higher means more in-distribution."""
    return softmax(logits, temperature).max(axis=-1).astype(np.float64)


def ood_score(
    logits: np.ndarray,
    *,
    score: str = "energy",
    energy_temperature: float = 1.0,
    calibration_temperature: float = 1.0,
) -> np.ndarray:
    """Return the score named `score` (`energy` or `msp`) for logits of shape (..., C)."""
    if score == "energy":
        return energy_score(logits, energy_temperature)
    if score == "msp":
        return msp_score(logits, calibration_temperature)
    raise ValueError(f"unknown OOD score {score!r}; expected one of {', '.join(OOD_SCORES)}")
