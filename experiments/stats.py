"""Seed statistics for method comparisons: t-intervals, exact sign-flip tests, bootstrap intervals, curve areas.

Design choices:
- The interval of a mean over n seeds is Student's t-interval (n - 1 degrees of freedom): with 3-8 seeds a
  percentile bootstrap ignores both the n - 1 and the t quantile and comes out ~60 % as wide (t_4 = 2.78, not
  1.96). The bootstrap stays available beside it (seeded, so a table is reproducible from its runs).
- A paired difference is tested with the exact two-sided sign-flip (permutation) test: every one of the 2^n
  sign patterns of the per-seed differences, no normality assumption. With n pairs its smallest p is 2 / 2^n
  (0.0625 for 5 pairs), which the tables print so a reader sees what the seed count can show.
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

import itertools
import math

import numpy as np
from scipy import stats as scipy_stats

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


def t_interval(values, *, level: float = LEVEL) -> dict[str, float]:
    """Mean of the finite `values`, its sample SD and Student's t-interval: {"mean", "sd", "lo", "hi", "n"}.

    One value gives a zero-width interval (nothing to estimate a spread from) and SD NaN; none gives NaNs.
    """
    x = np.asarray(finite(values), dtype=np.float64)  # (n,)
    if x.size == 0:
        return {"mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "sd": math.nan, "lo": mean, "hi": mean, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": int(x.size)}


def sign_flip_p(diffs) -> float:
    """Exact two-sided sign-flip p-value of the mean of the finite paired differences `diffs` being 0: the share
    of the 2^n sign patterns whose |mean| is at least the observed one (NaN without a difference)."""
    d = np.asarray(finite(diffs), dtype=np.float64)  # (n,)
    if d.size == 0:
        return math.nan
    if d.size > 20:
        raise ValueError(f"sign_flip_p enumerates 2^n patterns; {d.size} differences are too many")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))  # (2^n, n)
    means = np.abs(signs @ d) / d.size  # (2^n,)
    observed = abs(float(d.mean()))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def min_sign_flip_p(n: int) -> float:
    """The smallest p-value `sign_flip_p` can give with n pairs: 2 / 2^n (1 for n = 0)."""
    return min(1.0, 2.0 / 2 ** n) if n else 1.0


def paired_seeds(values: dict[int, float], baseline: dict[int, float]) -> list[int]:
    """Seeds finite in both `values` and `baseline`, sorted."""
    return sorted(s for s in values.keys() & baseline.keys() if len(finite([values[s], baseline[s]])) == 2)


def paired_difference(values: dict[int, float], baseline: dict[int, float], **kwargs) -> dict[str, float]:
    """Mean of `values[seed] - baseline[seed]` over the seeds finite in both, with its bootstrap interval."""
    seeds = paired_seeds(values, baseline)
    return bootstrap_ci([values[s] - baseline[s] for s in seeds], **kwargs)


def paired_test(values: dict[int, float], baseline: dict[int, float], *, level: float = LEVEL) -> dict[str, float]:
    """The paired (same seed) difference `values - baseline`: mean, SD, t-interval ("lo", "hi"), the bootstrap
    interval beside it ("boot_lo", "boot_hi"), the exact sign-flip p ("p") and the smallest p its n allows."""
    seeds = paired_seeds(values, baseline)
    diffs = [values[s] - baseline[s] for s in seeds]
    boot = bootstrap_ci(diffs, level=level)
    return t_interval(diffs, level=level) | {"boot_lo": boot["lo"], "boot_hi": boot["hi"], "p": sign_flip_p(diffs),
                                             "p_min": min_sign_flip_p(len(diffs)), "seeds": seeds}


def curve_area(steps, values) -> float:
    """Trapezoid area under (step, value) points divided by the steps spanned: the curve's mean height.

    Points are sorted by step; NaN values are dropped; fewer than two points give NaN.
    """
    points = sorted((s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v))
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return math.nan
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])
