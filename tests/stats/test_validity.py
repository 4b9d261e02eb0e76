"""Safety checks: late feedback and feedback rates per arm, chi-squared with minimum counts."""

import numpy as np
import pytest

from promptops.stats import FeedbackCounts, contingency_p, feedback_finding


def counts(eligible, on_time, late):
    return FeedbackCounts(
        eligible=np.array(eligible, float), on_time=np.array(on_time, float), late=np.array(late, float)
    )


def test_contingency_matches_the_textbook_2x2():
    # [[20, 30], [30, 20]]: chi2 = 4.0 with 1 df, p = 0.0455
    assert contingency_p(np.array([[20, 30], [30, 20]])) == pytest.approx(0.0455, abs=1e-4)
    assert contingency_p(np.array([[2, 3], [3, 2]])) is None  # expected counts below 5


def test_late_control_is_named_with_the_fix():
    f = feedback_finding(
        counts([2000, 2000], [0, 200], [240, 0]),
        level=1e-4,
        ignore_missing=False,
        control=0,
        names=["v1 (main)", "v2 (b)"],
    )
    assert f is not None and f.arm == 0
    assert f.sentence.startswith("the control (v1 (main))'s feedback arrives later than the window")
    assert "lengthen `attribution_window_hours`" in f.sentence


def test_equal_late_shares_and_no_late_feedback_pass():
    assert (
        feedback_finding(
            counts([2000, 2000], [190, 200], [10, 11]), level=0.001, ignore_missing=False, control=0
        )
        is None
    )
    assert (
        feedback_finding(
            counts([2000, 2000], [190, 200], [0, 0]), level=0.001, ignore_missing=False, control=0
        )
        is None
    )
    assert (
        feedback_finding(counts([2000, 2000], [0, 200], [240, 0]), level=0.0, ignore_missing=False, control=0)
        is None
    )


def test_feedback_rate_only_matters_when_missing_is_ignored():
    c = counts([2000, 2000], [1600, 800], [0, 0])
    assert feedback_finding(c, level=1e-4, ignore_missing=False, control=0) is None
    f = feedback_finding(c, level=1e-4, ignore_missing=True, control=0, names=["a", "b"])
    assert f is not None and f.arm == 1 and "40% of its decisions against 80%" in f.sentence
