"""Seed statistics for method comparisons: percentile-bootstrap intervals, paired differences, curve areas.

Design choices:
- Percentile bootstrap of the mean over seeds: no normality assumption, and with 5-10 seeds it says
  honestly how little a handful of runs can tell apart. Resampling is seeded, so a table is
  reproducible from its runs.
- Differences against a baseline are paired by seed (same seed = same data order, same initial
  sampling stream), which removes the seed-to-seed variance both runs share; only seeds present in
  both are used.
- The area under the pass@1 curve is the trapezoid area over the evaluated steps divided by the
  steps spanned: the curve's mean height, on the same 0-1 scale as pass@1, so it rewards learning
  early and staying there, not only the last point.
- Missing values (NaN, None: a crashed or unfinished run) are left out and counted, never imputed.

Shapes: none (lists of floats).
"""
from __future__ import annotations

import math

import numpy as np

N_BOOT = 10_000
"""bootstrap resamples"""
LEVEL = 0.95
"""confidence level of the intervals"""


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def bootstrap_ci(values, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict[str, float]:
    """Mean of the finite `values` and its percentile-bootstrap interval: {"mean", "lo", "hi", "n"}.

    One value gives a zero-width interval; none gives NaNs.
    """
    x = np.asarray(finite(values), dtype=np.float64)  # (n,)
    if x.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # (n_boot,)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    # Quantiles interpolate in floating point; keep the interval around the sample mean it describes.
    mean = float(x.mean())
    return {"mean": mean, "lo": min(float(lo), mean), "hi": max(float(hi), mean), "n": int(x.size)}


def paired_difference(values: dict[int, float], baseline: dict[int, float], **kwargs) -> dict[str, float]:
    """Mean of `values[seed] - baseline[seed]` over the seeds finite in both, with its bootstrap interval."""
    seeds = sorted(s for s in values.keys() & baseline.keys() if len(finite([values[s], baseline[s]])) == 2)
    return bootstrap_ci([values[s] - baseline[s] for s in seeds], **kwargs)


def curve_area(steps, values) -> float:
    """Trapezoid area under (step, value) points divided by the steps spanned: the curve's mean height.

    Points are sorted by step; NaN values are dropped; fewer than two points give NaN.
    """
    points = sorted((s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v))
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return math.nan
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])
