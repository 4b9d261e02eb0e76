"""Special functions in plain numpy: the normal CDF (vectorised) and the chi-squared survival.

The normal CDF is a cubic Hermite interpolation of `math.erfc` on a grid of step 1/128 over [-10,
10] (absolute error below 1e-11, checked against scipy in the tests); outside that range it is 0 or
1 to within 1e-23. The chi-squared survival function is the regularized upper incomplete gamma
function, by its power series below a + 1 and its continued fraction (modified Lentz) above, as in
Numerical Recipes section 6.2; it keeps full relative accuracy for small p-values.
"""

from __future__ import annotations

import math

import numpy as np

_LO, _HI, _STEPS_PER_UNIT = -10.0, 10.0, 128
_H = 1.0 / _STEPS_PER_UNIT
_GRID = np.linspace(_LO, _HI, int((_HI - _LO) * _STEPS_PER_UNIT) + 1)
_CDF = np.array([0.5 * math.erfc(-z / math.sqrt(2.0)) for z in _GRID])
_PDF = np.exp(-0.5 * _GRID**2) / math.sqrt(2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def norm_pdf(x: np.ndarray | float) -> np.ndarray:
    """The standard normal density, elementwise."""
    x = np.asarray(x, dtype=float)
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def norm_cdf(x: np.ndarray | float) -> np.ndarray:
    """The standard normal CDF, elementwise, to about 1e-11 absolute accuracy."""
    x = np.asarray(x, dtype=float)
    xc = np.clip(x, _LO, _HI - 1e-9)
    u = (xc - _LO) * _STEPS_PER_UNIT
    i = np.floor(u).astype(np.intp)
    t = u - i
    t2 = t * t
    t3 = t2 * t
    h00 = 2.0 * t3 - 3.0 * t2 + 1.0
    h10 = t3 - 2.0 * t2 + t
    h01 = -2.0 * t3 + 3.0 * t2
    h11 = t3 - t2
    out = h00 * _CDF[i] + h01 * _CDF[i + 1] + _H * (h10 * _PDF[i] + h11 * _PDF[i + 1])
    out = np.where(x <= _LO, 0.0, np.where(x >= _HI, 1.0, out))
    return out


def norm_cdf_scalar(x: float) -> float:
    """The standard normal CDF of one number, exact to double precision."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _gamma_p_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (x < a + 1)."""
    term = 1.0 / a
    total = term
    ap = a
    for _ in range(10_000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-16:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_q_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by its continued fraction (x >= a + 1)."""
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a)."""
    if a <= 0:
        raise ValueError("gamma_q needs a > 0")
    if x <= 0:
        return 1.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return _gamma_q_fraction(a, x)


def chi2_sf(x: float, df: int) -> float:
    """The chi-squared survival function P(X >= x) with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("chi2_sf needs df >= 1")
    return gamma_q(0.5 * df, 0.5 * x)
