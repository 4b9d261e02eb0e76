"""Statistics of offline evaluations: pass rates, paired comparisons, McNemar, and the gate.

Model. An eval runs every version on the same cases. Each case ends `passed`, `failed` or `error`
for each version (repetitions and weighted assertions are folded into that one outcome before this
module, see `promptops.assertions.grade_case`), so a case is the unit of observation and cases are
independent; no cluster-robust correction is needed for repeats.

- Pass rate. p = passed / (passed + failed + errors): an error is never a pass. Its 95% interval is
  Wilson's score interval (Wilson 1927), which stays inside [0, 1] and keeps close to nominal
  coverage for small n and rates near 0 or 1, where the Wald interval collapses. With no case at
  all the rate is 0 and the interval [0, 1]: nothing is known, and a gate cannot pass on it.
- Paired difference. Over the n cases, a = both pass, b = only the version passes, c = only the
  baseline passes, d = neither; diff = (b - c) / n. Its 95% interval is Newcombe's hybrid score
  ("square-and-add") interval for paired proportions, method 10 of Newcombe (1998), "Improved
  confidence intervals for the difference between binomial proportions based on paired data",
  Statistics in Medicine 17: 2635-2650, in the form given by Fagerland, Lydersen and Laake (2014),
  "Recommended tests and confidence intervals for paired binomial proportions", Statistics in
  Medicine 33: 2850-2875, section 8: Wilson intervals (l1, u1), (l2, u2) of the two marginal rates
  combined with the estimated correlation psi of the two rates,

      L = diff - sqrt((p1 - l1)^2 + (u2 - p2)^2 - 2 psi (p1 - l1)(u2 - p2))
      U = diff + sqrt((p2 - l2)^2 + (u1 - p1)^2 - 2 psi (p2 - l2)(u1 - p1))

  with psi = (ad - bc - n/2) / sqrt(r1 r2 s1 s2) when ad - bc > n/2, 0 when 0 <= ad - bc <= n/2,
  (ad - bc) / sqrt(...) when negative, and 0 when a margin is empty. It is closed form, stays in
  [-1, 1], and behaves at the edges: with no discordant case the interval is narrow but not a
  point (about +-1.5 points for 200 cases that all agree, the rule of three on the discordance
  rate), and with n = 1 it is wide. Fagerland et al. recommend it among the closed-form intervals.
- McNemar. The exact (conditional) test: under no difference, b ~ Binomial(b + c, 1/2); the
  two-sided p-value is min(1, 2 P(X <= min(b, c))), and 1 when no case disagrees.
- Gate. A version passes when its pass rate is at least `min_pass_rate` and, when `max_regression`
  is set and a baseline is given, the paired interval of its difference from the baseline does not
  lie entirely below -max_regression (upper bound < -max_regression fails). The baseline itself is
  held to `min_pass_rate` alone. Whatever the rule (none included), a version whose every case is
  an error fails: nothing was graded, so nothing passed (a provider that is down is not green).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""

_TOLERANCE = 1e-12  # 9/10 must meet min_pass_rate 0.9 whatever the float rounding


@dataclass(frozen=True)
class PassRate:
    """A version's outcome counts on an eval, its pass rate and the rate's Wilson 95% interval."""

    passed: int
    failed: int
    errors: int
    rate: float
    ci_low: float
    ci_high: float

    @property
    def cases(self) -> int:
        """All cases counted: passed, failed and errors."""
        return self.passed + self.failed + self.errors


@dataclass(frozen=True)
class PairedComparison:
    """A version against a baseline on the same cases: the paired difference, its interval, McNemar."""

    cases: int
    both: int
    improved_count: int
    regressed_count: int
    neither: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    improved: tuple[str, ...]
    regressed: tuple[str, ...]


@dataclass(frozen=True)
class GateRule:
    """The gate of an eval: a floor on the pass rate and a limit on regression against the baseline."""

    min_pass_rate: float | None = None
    max_regression: float | None = None


@dataclass(frozen=True)
class GateVerdict:
    """Whether a gate passed, and why not (an empty tuple when it passed)."""

    passed: bool
    reasons: tuple[str, ...] = ()


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion; [0, 1] when n is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At p = 0 or 1 the bound is exactly 0 or 1; rounding must not leave it a hair inside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def pass_rate(passed: int, failed: int, errors: int, *, z: float = Z95) -> PassRate:
    """The pass rate passed / (passed + failed + errors) with its Wilson interval."""
    if min(passed, failed, errors) < 0:
        raise ValueError("counts must be non-negative")
    n = passed + failed + errors
    low, high = wilson_interval(passed, n, z=z)
    return PassRate(passed, failed, errors, passed / n if n else 0.0, low, high)


def paired_interval(
    both: int, only_first: int, only_second: int, neither: int, *, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's square-and-add interval for p1 - p2 of paired proportions (see the module)."""
    a, b, c, d = both, only_first, only_second, neither
    if min(a, b, c, d) < 0:
        raise ValueError("counts must be non-negative")
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    r1, r2, s1, s2 = a + b, c + d, a + c, b + d  # first's passes/fails, second's passes/fails
    p1, p2 = r1 / n, s1 / n
    l1, u1 = wilson_interval(r1, n, z=z)
    l2, u2 = wilson_interval(s1, n, z=z)
    psi = 0.0
    if r1 and r2 and s1 and s2:
        cross = a * d - b * c
        scale = math.sqrt(r1) * math.sqrt(r2) * math.sqrt(s1) * math.sqrt(s2)
        if cross > n / 2:
            psi = (cross - n / 2) / scale
        elif cross < 0:
            psi = cross / scale
    diff = p1 - p2
    down = (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2)
    up = (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1)
    low = diff - math.sqrt(max(0.0, down))
    high = diff + math.sqrt(max(0.0, up))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """The exact two-sided McNemar p-value from the two discordant counts (1 when there are none)."""
    if only_first < 0 or only_second < 0:
        raise ValueError("counts must be non-negative")
    m = only_first + only_second
    if m == 0:
        return 1.0
    k = min(only_first, only_second)
    # Exact integers: the tail is a ratio of big ints, correctly rounded, with no underflow of terms.
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**m)


def compare_paired(
    version: Mapping[str, bool], baseline: Mapping[str, bool], *, z: float = Z95
) -> PairedComparison:
    """Compare a version with a baseline case by case (True = passed; a failure or error is False).

    Both mappings must hold the same case ids; `improved` and `regressed` keep the version's order.
    """
    if version.keys() != baseline.keys():
        missing = sorted(set(version) ^ set(baseline))[:5]
        raise ValueError(f"the version and the baseline ran different cases (e.g. {missing})")
    improved = tuple(i for i, ok in version.items() if ok and not baseline[i])
    regressed = tuple(i for i, ok in version.items() if not ok and baseline[i])
    both = sum(1 for i, ok in version.items() if ok and baseline[i])
    n = len(version)
    neither = n - both - len(improved) - len(regressed)
    b, c = len(improved), len(regressed)
    low, high = paired_interval(both, b, c, neither, z=z)
    return PairedComparison(
        cases=n,
        both=both,
        improved_count=b,
        regressed_count=c,
        neither=neither,
        diff=(b - c) / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        p_value=mcnemar_exact(b, c),
        improved=improved,
        regressed=regressed,
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def check_gate(
    rule: GateRule, *, name: str, rate: PassRate, comparison: PairedComparison | None = None
) -> GateVerdict:
    """Apply the gate to one version; pass `comparison=None` for the baseline (min_pass_rate only)."""
    reasons: list[str] = []
    if rate.cases and rate.errors == rate.cases:
        reasons.append(f"{name}: every case is an error ({rate.errors}/{rate.cases}): no output was graded")
    if rule.min_pass_rate is not None and rate.rate < rule.min_pass_rate - _TOLERANCE:
        reasons.append(
            f"{name}: pass rate {_pct(rate.rate)} ({rate.passed}/{rate.cases}, 95% CI "
            f"{_pct(rate.ci_low)} to {_pct(rate.ci_high)}) is below min_pass_rate "
            f"{_pct(rule.min_pass_rate)}"
        )
    if (
        rule.max_regression is not None
        and comparison is not None
        and comparison.ci_high < -rule.max_regression - _TOLERANCE
    ):
        reasons.append(
            f"{name}: worse than the baseline by {_pct(-comparison.diff)} (95% CI "
            f"{_pct(-comparison.ci_high)} to {_pct(-comparison.ci_low)} worse, "
            f"{comparison.regressed_count} cases regressed), beyond max_regression "
            f"{_pct(rule.max_regression)}"
        )
    return GateVerdict(not reasons, tuple(reasons))


def combine_verdicts(verdicts: Iterable[GateVerdict]) -> GateVerdict:
    """One verdict for a run: passed when every version passed, with all the reasons."""
    reasons = tuple(r for v in verdicts for r in v.reasons)
    return GateVerdict(not reasons, reasons)
