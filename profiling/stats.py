"""Small statistics, and counts in words, shared by the trainer's messages and the report (standard library only)."""

from statistics import mean


def counted(n, one, many=None):
    """'1 step', '3 steps': a count with its noun in the number it takes."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def percentile(values, q):
    """The q-quantile (0..1) by linear interpolation; 0.0 for no values."""
    values = sorted(values)
    if not values:
        return 0.0
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def first_last_min(values, k):
    """Mean of the first and last k values and the minimum; None values (fp16 overflow steps log no grad
    norm) are left out."""
    values = [v for v in values if v is not None]
    if not values:
        return {"first": None, "last": None, "min": None}
    return {"first": mean(values[:k]), "last": mean(values[-k:]), "min": min(values)}
