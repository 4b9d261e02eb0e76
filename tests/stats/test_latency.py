"""Latency histograms: quantiles within the bucket error, sums across parts."""

from __future__ import annotations

import random

import pytest

from promptops.stats import latency


def test_quantiles_are_within_ten_percent():
    rng = random.Random(3)
    values = sorted(rng.lognormvariate(5, 1) for _ in range(5000))
    counts = latency.histogram(values)
    for q in (0.5, 0.95):
        exact = values[int(q * len(values))]
        assert latency.quantile(counts, q) == pytest.approx(exact, rel=0.1)


def test_parts_add_up_to_the_whole():
    a, b = [3.0, 40.0, 900.0], [0.2, 15.0]
    assert latency.add(latency.histogram(a), latency.histogram(b)) == latency.histogram(a + b)


def test_empty_and_extreme_values():
    assert latency.quantile([], 0.5) is None
    assert latency.bucket_of(0.0) == 0
    assert latency.bucket_of(1e12) == latency.BUCKETS
    assert latency.quantile(latency.histogram([1e12]), 0.5) == latency.bound(latency.BUCKETS - 1)
