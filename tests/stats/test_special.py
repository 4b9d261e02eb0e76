"""The normal CDF and chi-squared survival function against scipy and textbook values."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from promptops.stats.special import chi2_sf, gamma_q, norm_cdf, norm_cdf_scalar, norm_pdf


def test_norm_cdf_matches_scipy_everywhere():
    x = np.linspace(-12, 12, 400_001)
    assert np.abs(norm_cdf(x) - sps.norm.cdf(x)).max() < 1e-10


def test_norm_cdf_textbook_values():
    assert norm_cdf(1.959963984540054) == pytest.approx(0.975, abs=1e-12)
    assert norm_cdf(-2.5758293035489) == pytest.approx(0.005, abs=1e-12)
    assert norm_cdf(0.0) == pytest.approx(0.5, abs=1e-15)
    assert norm_cdf_scalar(-3.0) == pytest.approx(sps.norm.cdf(-3.0), rel=1e-14)


def test_norm_pdf_matches_scipy():
    x = np.linspace(-8, 8, 1001)
    np.testing.assert_allclose(norm_pdf(x), sps.norm.pdf(x), rtol=1e-13)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 20, 39, 100])
def test_chi2_sf_matches_scipy(df):
    xs = np.concatenate([np.linspace(0.001, 3 * df + 60, 3000), [sps.chi2.isf(1e-3, df)]])
    for x in xs:
        expected = sps.chi2.sf(x, df)
        assert chi2_sf(float(x), df) == pytest.approx(expected, rel=1e-10, abs=1e-300)


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        pytest.param(10.828, 1, 0.001, id="df1-0.001"),
        pytest.param(13.816, 2, 0.001, id="df2-0.001"),
        pytest.param(3.841, 1, 0.05, id="df1-0.05"),
        pytest.param(16.266, 3, 0.001, id="df3-0.001"),
    ],
)
def test_chi2_sf_textbook_critical_values(x, df, p):
    assert chi2_sf(x, df) == pytest.approx(p, rel=2e-3)


def test_chi2_sf_df2_is_exponential():
    for x in (0.5, 5.0, 40.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-13)


def test_gamma_q_edges():
    assert gamma_q(1.5, 0.0) == 1.0
    with pytest.raises(ValueError):
        gamma_q(0.0, 1.0)
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)
