"""Intervals for the instrument's numbers: proportions (Wilson), paired differences, means over seeds.

>>> [round(x, 3) for x in wilson(8, 10)]
[0.49, 0.943]
>>> paired_difference([1, 1, 0, 1], [0, 1, 0, 0])[0]
0.5
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["wilson", "paired_difference", "mean_interval"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n`` (NaN, NaN when ``n == 0``)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = 1.96,
                      bounds: tuple[float, float] = (-1.0, 1.0)) -> tuple[float, float, float]:
    """Mean of ``a - b`` over pairs with a normal-approximation 95 % interval, clipped to ``bounds``:
    ``(mean, lo, hi)`` (NaN for no pairs; a zero-width interval when every difference is equal).

    For 0/1 outcomes this is the paired (McNemar-style) difference of two proportions.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(d.mean())
    half = z * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    lo, hi = bounds
    return (m, max(lo, m - half), min(hi, m + half))


def mean_interval(values: Sequence[float], confidence: float = 0.95,
                  bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """Mean and a Student-t interval, clipped to ``bounds`` (e.g. ``(0, 1)`` for accuracies).

    >>> m, lo, hi = mean_interval([0.9, 1.0, 1.0], bounds=(0, 1)); float(hi)
    1.0
    """
    from scipy.stats import t as student_t  # lazy: scipy is heavy and only intervals need it

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if len(x) < 2:
        return (m, math.nan, math.nan)
    half = float(student_t.ppf((1 + confidence) / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return (m, max(bounds[0], m - half), min(bounds[1], m + half))
