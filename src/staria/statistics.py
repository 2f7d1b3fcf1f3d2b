"""Intervals for the numbers Staria reports (every rate and mean comes with one)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion; None for no trials."""
    if trials == 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(centre - half), float(centre + half)


def mean_interval(
    values: Sequence[float], resamples: int = 1000, seed: int = 0
) -> tuple[float | None, tuple[float, float] | None]:
    """The mean and its 95% bootstrap interval; (None, None) for no values."""
    if not len(values):
        return None, None
    values = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    return float(values.mean()), (float(low), float(high))


def paired_mean_interval(
    values: np.ndarray, resamples: int = 1000, seed: int = 0
) -> tuple[float | None, tuple[float, float] | None]:
    """The mean of `values` [units, repeats] (NaN: no value, e.g. a sample without a return)
    and its 95% bootstrap interval resampling the units (rows: prompts or pieces, each with its
    repeats, e.g. one sample per seed). The draws depend only on the number of rows and `seed`,
    so arrays over the same units get the same draws (paired). (None, None) without a value."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if not np.isfinite(values).any():
        return None, None
    draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    resampled = values[draws]  # [resamples, units, repeats]
    sums = np.nansum(resampled, axis=(1, 2))
    counts = np.isfinite(resampled).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return float(np.nanmean(values)), (float(low), float(high))
