"""Fixed-bucket latency histograms: quantiles from counts that add up across epochs and servers.

Bucket k holds latencies in (B[k-1], B[k]] milliseconds with B[k] = FIRST_MS * GROWTH**k, plus an
overflow bucket; a quantile is interpolated geometrically within its bucket, so its relative error
stays below GROWTH - 1 (10%) whatever the range. Counts are plain lists of integers: summing two
histograms is adding them element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

FIRST_MS = 1.0
GROWTH = 1.1
BUCKETS = 150  # the last bound is about 1.6 million ms; anything slower lands in the overflow bucket
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(latency_ms: float) -> int:
    """The bucket index of a latency (the overflow bucket is BUCKETS)."""
    if latency_ms <= FIRST_MS:
        return 0
    return min(BUCKETS, math.ceil(math.log(latency_ms / FIRST_MS) / _LOG_GROWTH - 1e-9))


def bound(k: int) -> float:
    """The upper bound of bucket k in milliseconds."""
    return FIRST_MS * GROWTH**k


def add(counts: Sequence[int], more: Sequence[int]) -> list[int]:
    """The element-wise sum of two histograms (either may be shorter, or empty)."""
    size = max(len(counts), len(more))
    return [(counts[i] if i < len(counts) else 0) + (more[i] if i < len(more) else 0) for i in range(size)]


def histogram(latencies: Iterable[float]) -> list[int]:
    """The counts of some latencies, trimmed after the last non-empty bucket."""
    counts = [0] * (BUCKETS + 1)
    for value in latencies:
        counts[bucket_of(value)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return counts


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram, or None when it is empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for k, count in enumerate(counts):
        if count and seen + count >= rank:
            low = 0.0 if k == 0 else bound(k - 1)
            high = bound(min(k, BUCKETS - 1)) if k < BUCKETS else bound(BUCKETS - 1)
            frac = (rank - seen) / count
            if k == 0:
                return high * frac
            if k >= BUCKETS:
                return high
            return low * (high / low) ** frac
        seen += count
    return bound(min(len(counts) - 1, BUCKETS - 1))
