"""A vectorised simulator that drives the real policy `step` on a virtual clock.

Decision i happens at i / decisions_per_hour hours ("tick" i). Its reward is drawn from the arm's
mean at that decision (drift included): Bernoulli for binary, Beta(mean c, (1 - mean) c) for
continuous. Feedback arrives feedback_delay_hours after the decision with probability feedback_rate;
the decision matures when its attribution window closes, counting its reward if the feedback came
within the window, else 0 (`missing_feedback: zero`) or nothing (`ignore`), as in STATS.md item 1.
Since every decision matures a fixed window after it is made, maturation order is decision order, so
the next epoch boundary is found from a cumulative count of counted outcomes instead of a
per-decision loop: it is the later of the time the update_every-th outcome since the epoch start
matures and min_update_minutes after the start (or the limit, if sooner). Within an epoch the
weights are constant, so a block of decisions is assigned and rewarded at once; decisions drawn past
the boundary are discarded and redrawn under the new weights. `step` runs at every boundary; once it
ends the experiment, the rest of the traffic goes to the production arm (the winner, else the
control).

Counting: a run counts under promoted[arm] when its experiment ended with that arm as winner, the
control included when the policy kept it early; every other run (limit reached, or still running
when the traffic ran out) is inconclusive. A wrong promotion is a run whose winner's true mean at
the end of the run is more than `tolerance` below the best arm's. median_decisions_to_end counts a
run that never ended as its full traffic. Each run has its own Generator from SeedSequence(seed)
child number `index`, so results do not depend on how runs are split over processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from promptops.domain import Policy
from promptops.stats.engine import CONTINUE, PolicyState, initial_weights, step
from promptops.stats.estimator import EpochData

_EPS = 1e-9


@dataclass(frozen=True)
class SimArm:
    """One simulated arm: its true mean, feedback delay and (continuous) concentration."""

    name: str
    mean: float
    feedback_delay_hours: float = 0.0
    concentration: float = 20.0


@dataclass(frozen=True)
class Scenario:
    """A validated simulation scenario (CONTRACT.md); the first arm is the control."""

    name: str
    arms: tuple[SimArm, ...]
    runs: int = 100
    seed: int = 0
    decisions: int = 10_000
    decisions_per_hour: float = 1000.0
    reward: str = "binary"
    drift: tuple[tuple[float, float], ...] = ()
    feedback_rate: float = 1.0
    policy: Policy = field(default_factory=Policy)
    tolerance: float = 0.0


@dataclass(frozen=True)
class RunResult:
    """The outcome of one simulated run."""

    winner: int | None
    action: str  # the ending action, or "running" when the traffic ran out first
    decisions_to_end: int
    regret: float
    uniform_regret: float
    wrong: bool
    srm_alarm: bool
    checks: int


def mean_schedule(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Segment start indices and the true means per segment, shape (segments, K)."""
    base = np.array([a.mean for a in scenario.arms], dtype=float)
    starts, rows = [0], [base]
    for at, multiply in sorted(scenario.drift):
        starts.append(int(math.ceil(at * scenario.decisions)))
        rows.append(rows[-1] * multiply)
    return np.array(starts), np.vstack(rows)


def is_wrong(means: np.ndarray, winner: int, tolerance: float) -> bool:
    """Whether the winner's true mean is more than `tolerance` below the best (with float slack)."""
    return bool(float(np.max(means)) - float(means[winner]) > tolerance + 1e-12)


def run_generator(seed: int, index: int) -> np.random.Generator:
    """The Generator of run `index`: child `index` of SeedSequence(seed)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


class _Run:
    """The mutable state of one run; `simulate_run` is its only user."""

    def __init__(self, scenario: Scenario, index: int) -> None:
        sc = scenario
        self.sc = sc
        self.pol = sc.policy
        self.k = len(sc.arms)
        self.total = sc.decisions
        self.rng = run_generator(sc.seed, index)
        window = self.pol.attribution_window_hours
        delay = np.array([a.feedback_delay_hours for a in sc.arms], dtype=float)
        self.in_window = delay <= window + _EPS
        self.conc = np.array([a.concentration for a in sc.arms], dtype=float)
        self.zero = self.pol.missing_feedback_for(sc.reward) == "zero"
        starts, self.mu = mean_schedule(sc)
        self.seg_of = np.searchsorted(starts, np.arange(self.total), side="right") - 1
        self.arm = np.zeros(self.total, dtype=np.int64)
        self.counted = np.zeros(self.total, dtype=bool)
        self.val = np.zeros(self.total)
        self.epoch_of = np.zeros(self.total, dtype=np.int64)

    def assign(self, lo: int, hi: int, weights: np.ndarray) -> None:
        """Serve decisions lo..hi-1 with constant weights and draw their matured values."""
        m = hi - lo
        if m <= 0:
            return
        rng = self.rng
        cum = np.cumsum(weights)
        arm = np.minimum(np.searchsorted(cum / cum[-1], rng.random(m), side="right"), self.k - 1)
        self.arm[lo:hi] = arm
        p = self.mu[self.seg_of[lo:hi], arm]
        if self.sc.reward == "binary":
            reward = (rng.random(m) < p).astype(float)
        else:
            c = self.conc[arm]
            reward = rng.beta(p * c, (1.0 - p) * c)
        got = self.in_window[arm]
        if self.sc.feedback_rate < 1.0:
            got = got & (rng.random(m) < self.sc.feedback_rate)
        if self.zero:
            self.counted[lo:hi] = True
            self.val[lo:hi] = np.where(got, reward, 0.0)
        else:
            self.counted[lo:hi] = got
            self.val[lo:hi] = reward


def simulate_run(scenario: Scenario, index: int) -> RunResult:
    """Simulate run number `index` of a scenario through the real policy step."""
    run = _Run(scenario, index)
    pol, k, total, rng = run.pol, run.k, run.total, run.rng
    dph = scenario.decisions_per_hour
    window = pol.attribution_window_hours * dph
    min_ticks = pol.min_update_minutes / 60.0 * dph
    limit_tick = min(pol.max_decisions - 1.0, pol.max_days * 24.0 * dph)
    chunk = max(2 * pol.update_every + int(min_ticks) + 64, 256)

    cap = 64
    stats = np.zeros((3, k, cap))  # n, s, ss per arm and epoch
    served = np.zeros((k, cap))
    weights_hist = np.zeros((k, cap))
    state = PolicyState()
    weights = initial_weights(k)
    epoch, t0, i0, known, matured = 0, 0.0, 0, 0, 0
    winner, action, ended_at = None, "running", None

    while True:
        t_mat = math.inf
        while True:
            counts = np.cumsum(run.counted[matured:known])
            idx = int(np.searchsorted(counts, pol.update_every))
            if idx < counts.size:
                t_mat = matured + idx + window
                break
            if known >= total:
                break
            run.assign(known, min(total, known + chunk), weights)
            known = min(total, known + chunk)
        t = max(t_mat, t0 + min_ticks, float(i0))
        t = min(t, max(limit_tick, float(i0)))
        if t > total - 1 + _EPS:
            break
        end = min(total, int(math.floor(t + _EPS)) + 1)
        if known < end:
            run.assign(known, end, weights)
        known = end
        run.epoch_of[i0:end] = epoch
        if epoch >= cap:
            cap *= 2
            stats = np.concatenate([stats, np.zeros_like(stats)], axis=2)
            served = np.hstack([served, np.zeros_like(served)])
            weights_hist = np.hstack([weights_hist, np.zeros_like(weights_hist)])
        new = min(max(int(math.floor(t - window + _EPS)) + 1, matured), end)
        ok = run.counted[matured:new]
        cell = run.epoch_of[matured:new][ok] * k + run.arm[matured:new][ok]
        v = run.val[matured:new][ok]
        size = (epoch + 1) * k
        for row, w in enumerate((None, v, v * v)):
            stats[row, :, : epoch + 1] += np.bincount(cell, w, minlength=size).reshape(-1, k).T
        served[:, epoch] = np.bincount(run.arm[i0:end], minlength=k)
        weights_hist[:, epoch] = weights
        e1 = epoch + 1
        data = EpochData(
            n=stats[0, :, :e1],
            s=stats[1, :, :e1],
            ss=stats[2, :, :e1],
            assigned=served[:, :e1],
            weights=weights_hist[:, :e1],
        )
        res = step(
            data,
            control=0,
            state=state,
            policy=pol,
            rng=rng,
            hours_elapsed=t / dph,
            decisions_total=end,
        )
        state, weights = res.state, res.weights
        epoch, t0, i0, matured = e1, t, end, new
        if res.action != CONTINUE:
            winner, action, ended_at = res.winner, res.action, end
            break
        if i0 >= total:
            break

    if ended_at is not None:
        run.arm[ended_at:] = 0 if winner is None else winner
    elif known < total:
        run.assign(known, total, weights)

    gaps = run.mu.max(axis=1)[:, None] - run.mu
    regret = float(gaps[run.seg_of, run.arm].sum())
    per_seg = np.bincount(run.seg_of, minlength=run.mu.shape[0])
    uniform = float((per_seg * gaps.mean(axis=1)).sum())
    wrong = winner is not None and is_wrong(run.mu[-1], winner, scenario.tolerance)
    return RunResult(
        winner=winner,
        action=action,
        decisions_to_end=total if ended_at is None else ended_at,
        regret=regret,
        uniform_regret=uniform,
        wrong=wrong,
        srm_alarm=state.srm_alarm,
        checks=state.checks_done,
    )


def simulate_runs(scenario: Scenario, indices: list[int] | range) -> list[RunResult]:
    """Simulate several runs of a scenario, in order."""
    return [simulate_run(scenario, i) for i in indices]


def aggregate(scenario: Scenario, results: list[RunResult]) -> dict[str, object]:
    """The CONTRACT result: runs, promotions per arm, inconclusive, wrong, median end, regrets."""
    promoted = {a.name: 0 for a in scenario.arms}
    for r in results:
        if r.winner is not None:
            promoted[scenario.arms[r.winner].name] += 1
    runs = len(results)
    ends = [r.decisions_to_end for r in results]
    return {
        "runs": runs,
        "promoted": promoted,
        "inconclusive": runs - sum(promoted.values()),
        "wrong_promotions": sum(r.wrong for r in results),
        "median_decisions_to_end": float(np.median(ends)) if ends else 0.0,
        "mean_regret": float(np.mean([r.regret for r in results])) if results else 0.0,
        "uniform_regret": float(np.mean([r.uniform_regret for r in results])) if results else 0.0,
    }
