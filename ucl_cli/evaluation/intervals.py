"""Confidence intervals of a metric measured over trials.

The interval is Student's t over the per-trial values: with T trials of mean m and sample
standard deviation sd (ddof 1),

    half_width = t_{(1 + confidence) / 2, T - 1} * sd / sqrt(T),   [m - half_width, m + half_width]

clipped to the metric's range (recall: [0, 1]; mean rank: [1, candidates]). Why this one: trials
are independent draws given the manifest, each trial's value is an average of many queries (so
close to normal), and it is the interval `ucl synth` reports over seeds. What it covers: the
randomness of the trial draws for THIS manifest and bank, not the sampling of the manifest from
a larger population (a different set of clips would move the mean by more than this).
With one trial there is no interval (low and high are None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A metric's mean over trials, its confidence interval and the per-trial values."""

    mean: float
    low: float | None
    high: float | None
    half_width: float | None  # before clipping to the metric's range
    per_trial: tuple[float, ...]

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "half_width": self.half_width,
            "per_trial": list(self.per_trial),
        }


def t_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Interval:
    """Mean of per-trial `values` with a Student-t interval clipped to `bounds`."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("an interval needs at least one value")
    mean = float(data.mean())
    per_trial = tuple(float(v) for v in data)
    if data.size < 2:
        return Interval(mean, None, None, None, per_trial)
    from scipy.stats import t

    quantile = float(t.ppf((1.0 + confidence) / 2.0, data.size - 1))
    half = quantile * float(data.std(ddof=1)) / math.sqrt(data.size)
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return Interval(mean, low, high, half, per_trial)
