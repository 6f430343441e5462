"""Paired statistics for seed-by-seed comparisons: t interval and sign test."""

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The t-based confidence interval of the mean of ``diffs`` (NaN if < 2)."""
    diffs = np.asarray(diffs, np.float64)
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean = diffs.mean()
    half = stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n)
    return float(mean - half), float(mean + half)


def sign_test(diffs: Sequence[float]) -> float:
    """Two-sided sign test of a zero median: the p-value; ties are dropped."""
    positive = sum(d > 0 for d in diffs)
    negative = sum(d < 0 for d in diffs)
    if positive + negative == 0:
        return 1.0
    return float(stats.binomtest(positive, positive + negative).pvalue)


def paired(diffs: Sequence[float], level: float = 0.95) -> dict:
    """Summary of paired differences: n, mean, sample std, interval, signs."""
    diffs = [float(d) for d in diffs]
    low, high = t_interval(diffs, level)
    return {
        "n": len(diffs),
        "mean": float(np.mean(diffs)) if diffs else math.nan,
        "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
        "low": low,
        "high": high,
        "positive": sum(d > 0 for d in diffs),
        "negative": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
        "sign_p": sign_test(diffs),
    }


def reading(summary: dict, reference: float | None = None) -> str:
    """What the interval says: a sign, "not resolved", and the reference.

    ``> 0`` or ``< 0`` when the interval excludes zero, "not resolved" when it
    holds zero; with a ``reference`` (the seed's reported difference), whether
    the interval holds it or rules it out.
    """
    low, high = summary["low"], summary["high"]
    if math.isnan(low):
        return "too few pairs"
    if low > 0:
        text = "> 0"
    elif high < 0:
        text = "< 0"
    else:
        text = "not resolved"
    if reference is not None:
        inside = low <= reference <= high
        text += f"; {'holds' if inside else 'rules out'} the seed's {reference:+.2f}"
    return text
