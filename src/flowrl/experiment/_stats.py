"""Summaries over seeds for reporting: the mean and a confidence interval (host-side numpy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np


class Interval(NamedTuple):
    """The result of [`flowrl.experiment.confidence_interval`][]: `mean`, `low`, `high` of the
    interval (`nan` when fewer than two values), `n` values, and the `method` used."""

    mean: float
    low: float
    high: float
    n: int
    method: str


def confidence_interval(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    method: Literal["t", "bootstrap"] = "t",
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    r"""Mean of `values` (one number per seed) and a two-sided confidence interval for it.

    - `method="t"`: Student's t interval
      $\bar x \pm t_{(1+\ell)/2,\, n-1}\, s / \sqrt{n}$ with $s$ the sample standard deviation
      (`ddof = 1`). Exact for normal data; with very few seeds it is honest but wide
      ($t_{0.975, 1} = 12.7$ for two seeds).
    - `method="bootstrap"`: the percentile bootstrap over `resamples` resamples of the seeds
      (`numpy` generator seeded with `seed`). With few seeds it is far too narrow (two seeds
      can only produce three distinct means); prefer `"t"` there.

    The interval is not clipped to the range of the quantity (a success rate may get an
    interval below 0 or above 1); clip when you display it if you like.

    **Arguments:** `values` (the per-seed numbers); `level` in `(0, 1)`; `method`;
    `resamples` and `seed` for the bootstrap.

    **Returns:** an [`flowrl.experiment.Interval`][]; `low` and `high` are `nan` for fewer than two
    values.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("`values` is empty")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must lie in (0, 1), got {level}")
    n, mean = int(x.size), float(np.mean(x))
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, method)
    if method == "t":
        from scipy import stats  # a dependency of jax

        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(np.std(x, ddof=1)) / math.sqrt(n)
        return Interval(mean, mean - half, mean + half, n, method)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
        return Interval(mean, float(low), float(high), n, method)
    raise ValueError(f"`method` must be 't' or 'bootstrap', got {method!r}")
