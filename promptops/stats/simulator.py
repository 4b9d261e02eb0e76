"""A vectorised simulator that drives the real policy `step` on a virtual clock.

Decision i happens at i / decisions_per_hour hours ("tick" i). Traffic comes from units: without
`units` each decision is its own unit; with {mean_decisions, icc} a unit makes 1 + Poisson(mean - 1)
decisions, the first at a uniformly random tick and the others within the next hour, and the unit
keeps the arm of its first exposure (drawn from the epoch's weights). A unit's propensity multiplies
every arm's mean by B / m, B ~ Beta(m c, (1 - m) c), m the arms' average base mean and c = (1 - icc)
/ icc, so rewards are correlated within the unit (about icc) and an A/A test stays exact. An arm's
mean follows its `schedule` and the scenario's `drift`; rewards are Bernoulli (binary) or
Beta(p c, (1 - p) c) (continuous); metrics are normal draws truncated at 0.

Feedback comes with probability feedback_rate, feedback_delay_hours after the decision. Everything
else is the server's rules, called from `units`, `engine` and `rollout`: an epoch closes when
update_every decisions have matured since it began and min_update_minutes have passed (or at the
limit); a decision matures when its window closes and counts through `matured_values`; unit sums
are updated with `fold_units`, for the reward and for every metric (a metric's cap is fixed from
its first CAP_MIN_VALUES values once they have matured, and the values summed before are capped
then); SRM
counts new units per epoch; the feedback counts cover decisions two windows old, late feedback
counted once it has arrived. `step` runs at every boundary. After a
challenger's promotion (holdout_share > 0) the previous production keeps its share and
`holdout_step` runs at every boundary. Once the experiment ends the rest of the traffic goes to
production.

Counting: promoted[arm] counts runs whose experiment ended with that winner (the control included
when kept early); other runs are inconclusive. final[arm] is production at the end of the run,
after any rollback. A wrong promotion is a run with a winner whose final production arm's true mean
at the end is more than `tolerance` below the best arm's. median_decisions_to_end counts a run that
never ended as its full traffic. Each run has its own Generator from SeedSequence(seed) child
`index`, so results do not depend on how runs are split over processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from promptops.domain import HoldoutAction, Policy, StatsAction
from promptops.stats.engine import CONTINUE, PolicyState, initial_weights, step
from promptops.stats.estimator import EpochData
from promptops.stats.rollout import holdout_step, holdout_weights, rollback_scan, rollback_window
from promptops.stats.units import (
    CAP_MIN_VALUES,
    FeedbackCounts,
    MetricData,
    fold_units,
    matured_values,
    metric_cap,
)

_EPS = 1e-9


@dataclass(frozen=True)
class SimArm:
    """One simulated arm: its true mean and how it changes, feedback, concentration, metrics."""

    name: str
    mean: float
    feedback_delay_hours: float = 0.0
    concentration: float = 20.0
    feedback_rate: float | None = None  # None: the scenario's
    schedule: tuple[tuple[float, float], ...] = ()  # (at fraction, new mean)
    metrics: tuple[tuple[str, float, float], ...] = ()  # (metric, mean, sd)


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
    unit_mean_decisions: float | None = None
    unit_icc: float = 0.0


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
    final: int = 0
    rolled_back: bool = False
    feedback_alarm: bool = False
    guardrail_blocked: bool = False
    stop_reason: str | None = None


def mean_schedule(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Segment start indices and the true means per segment, shape (segments, K)."""
    n = scenario.decisions
    base = np.array([a.mean for a in scenario.arms], dtype=float)
    points = {0} | {int(math.ceil(at * n)) for at, _ in scenario.drift}
    for a in scenario.arms:
        points |= {int(math.ceil(at * n)) for at, _ in a.schedule}
    starts = np.array(sorted(points))
    rows = []
    for s in starts:
        row = base.copy()
        for j, a in enumerate(scenario.arms):
            for at, mean in sorted(a.schedule):
                if int(math.ceil(at * n)) <= s:
                    row[j] = mean
        for at, multiply in sorted(scenario.drift):
            if int(math.ceil(at * n)) <= s:
                row = row * multiply
        rows.append(row)
    return starts, np.vstack(rows)


def is_wrong(means: np.ndarray, winner: int, tolerance: float) -> bool:
    """Whether the winner's true mean is more than `tolerance` below the best (with float slack)."""
    return bool(float(np.max(means)) - float(means[winner]) > tolerance + 1e-12)


def run_generator(seed: int, index: int) -> np.random.Generator:
    """The Generator of run `index`: child `index` of SeedSequence(seed)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def _truncated_normal(rng: np.random.Generator, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    x = rng.normal(mean, sd)
    for _ in range(8):
        bad = x < 0
        if not bad.any():
            break
        x[bad] = rng.normal(mean[bad], sd[bad])
    return np.maximum(x, 0.0)


class _Traffic:
    """Who comes when: unit of every decision, first exposures, unit propensities."""

    def __init__(self, sc: Scenario, rng: np.random.Generator) -> None:
        n = sc.decisions
        if sc.unit_mean_decisions is None or sc.unit_mean_decisions <= 1.0:
            self.unit = np.arange(n)
            self.first = np.ones(n, dtype=bool)
            self.units = n
        else:
            m = sc.unit_mean_decisions
            count = int(n / m * 1.3) + 16
            size = 1 + rng.poisson(m - 1.0, count)
            start = rng.uniform(0.0, n, count)
            owner = np.repeat(np.arange(count), size)
            offset = rng.uniform(0.0, sc.decisions_per_hour, owner.size)
            offset[np.concatenate([[0], np.cumsum(size)[:-1]])] = 0.0
            order = np.argsort(start[owner] + offset, kind="stable")[:n]
            _, self.unit = np.unique(owner[order], return_inverse=True)
            self.units = int(self.unit.max()) + 1
            self.first = np.zeros(n, dtype=bool)
            _, first_idx = np.unique(self.unit, return_index=True)
            self.first[first_idx] = True
        self.factor = np.ones(self.units)
        if sc.unit_icc > 0 and sc.unit_mean_decisions:
            ref = float(np.mean([a.mean for a in sc.arms]))
            c = (1.0 - sc.unit_icc) / sc.unit_icc
            self.factor = rng.beta(ref * c, (1.0 - ref) * c, self.units) / ref


class _Run:
    """The mutable state of one run; `simulate_run` is its only user."""

    def __init__(self, scenario: Scenario, index: int) -> None:
        sc = scenario
        self.sc = sc
        self.pol = sc.policy
        self.k = len(sc.arms)
        self.total = sc.decisions
        self.rng = run_generator(sc.seed, index)
        self.traffic = _Traffic(sc, self.rng)
        dph = sc.decisions_per_hour
        self.delay_ticks = np.array([a.feedback_delay_hours for a in sc.arms]) * dph
        self.window_ticks = self.pol.attribution_window_hours * dph
        self.rate = np.array(
            [sc.feedback_rate if a.feedback_rate is None else a.feedback_rate for a in sc.arms]
        )
        self.conc = np.array([a.concentration for a in sc.arms], dtype=float)
        starts, self.mu = mean_schedule(sc)
        self.seg_of = np.searchsorted(starts, np.arange(self.total), side="right") - 1
        self.metric_names = sorted({m for a in sc.arms for m, _, _ in a.metrics})
        self.metric_params = np.zeros((len(self.metric_names), 2, self.k))
        for j, a in enumerate(sc.arms):
            for name, mean, sd in a.metrics:
                self.metric_params[self.metric_names.index(name), :, j] = (mean, sd)
        n = self.total
        self.arm = np.zeros(n, dtype=np.int64)
        self.reward = np.zeros(n)
        self.got = np.zeros(n, dtype=bool)
        self.on_time = np.zeros(n, dtype=bool)
        self.metric = np.zeros((len(self.metric_names), n))
        self.unit_arm = np.full(self.traffic.units, -1, dtype=np.int64)

    def assign(self, lo: int, hi: int, weights: np.ndarray, *, keep: tuple[int, ...] = ()) -> None:
        """Serve decisions lo..hi-1 with constant weights (returning units keep their arm, if it
        is in `keep` or no restriction is given) and draw their rewards and metrics."""
        m = hi - lo
        if m <= 0:
            return
        rng = self.rng
        unit = self.traffic.unit[lo:hi]
        prior = self.unit_arm[unit]
        fresh = prior < 0
        if keep:
            fresh |= ~np.isin(prior, keep)
        cum = np.cumsum(weights)
        drawn = np.minimum(np.searchsorted(cum / cum[-1], rng.random(m), side="right"), self.k - 1)
        # a unit's first fresh decision in the block fixes its arm (numpy keeps the last write of a
        # repeated index, so write in reverse order)
        idx = np.flatnonzero(fresh)[::-1]
        self.unit_arm[unit[idx]] = drawn[idx]
        arm = self.unit_arm[unit]
        self.arm[lo:hi] = arm
        p = np.clip(self.mu[self.seg_of[lo:hi], arm] * self.traffic.factor[unit], 0.0, 1.0)
        if self.sc.reward == "binary":
            self.reward[lo:hi] = (rng.random(m) < p).astype(float)
        else:
            c = self.conc[arm]
            pc = np.clip(p, 1e-6, 1 - 1e-6)
            self.reward[lo:hi] = rng.beta(pc * c, (1.0 - pc) * c)
        got = rng.random(m) < self.rate[arm]
        self.got[lo:hi] = got
        self.on_time[lo:hi] = got & (self.delay_ticks[arm] <= self.window_ticks + _EPS)
        for j in range(len(self.metric_names)):
            params = self.metric_params[j]
            self.metric[j, lo:hi] = _truncated_normal(rng, params[0, arm], params[1, arm])

    def serve_rest(self, lo: int, arm: int) -> None:
        """After the end, production serves every remaining decision (no draws needed)."""
        self.arm[lo:] = arm


class _Sums:
    """The per-unit and per-cell sums the server keeps, folded epoch by epoch."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        k = run.k
        self.cap = 64
        units = run.traffic.units
        self.first_epoch = np.zeros(units, dtype=np.int64)
        self.count = np.zeros(units)
        self.sum = np.zeros(units)
        self.mcount = np.zeros(units)
        metrics = len(run.metric_names)
        self.msum = np.zeros((metrics, units))
        self.caps: list[float | None] = [None] * metrics
        self.cells = np.zeros((3, k, self.cap))
        self.mcells = np.zeros((metrics, 3, k, self.cap))
        self.assigned = np.zeros((k, self.cap))
        self.weights = np.zeros((k, self.cap))

    def grow(self, epoch: int) -> None:
        while epoch >= self.cap:
            self.cap *= 2
            self.cells = np.concatenate([self.cells, np.zeros_like(self.cells)], axis=2)
            self.mcells = np.concatenate([self.mcells, np.zeros_like(self.mcells)], axis=3)
            self.assigned = np.hstack([self.assigned, np.zeros_like(self.assigned)])
            self.weights = np.hstack([self.weights, np.zeros_like(self.weights)])

    def fold(self, lo: int, hi: int, *, reward_kind: str, policy: Policy) -> None:
        """Fold decisions lo..hi-1, which just matured, into the unit and cell sums."""
        if hi <= lo:
            return
        run = self.run
        k, cap = run.k, self.cap
        unit = run.traffic.unit[lo:hi]
        counted, value = matured_values(
            run.on_time[lo:hi], run.reward[lo:hi], reward_kind=reward_kind, policy=policy
        )
        uniq, inv = np.unique(unit, return_inverse=True)
        add_c = np.bincount(inv, weights=counted.astype(float), minlength=uniq.size)
        add_s = np.bincount(inv, weights=np.where(counted, value, 0.0), minlength=uniq.size)
        arm = run.unit_arm[uniq]
        first = self.first_epoch[uniq]
        dn, ds, dss = fold_units(
            arms=k,
            epochs=cap,
            arm=arm,
            first_epoch=first,
            old_count=self.count[uniq],
            old_sum=self.sum[uniq],
            add_count=add_c,
            add_sum=add_s,
        )
        self.cells += np.stack([dn, ds, dss])
        self.count[uniq] += add_c
        self.sum[uniq] += add_s
        if run.metric_names:
            add_m = np.bincount(inv, minlength=uniq.size).astype(float)
            for j in range(len(run.metric_names)):
                vals = run.metric[j, lo:hi]
                if self.caps[j] is None and hi >= CAP_MIN_VALUES:
                    self._fix_cap(j, lo, hi)
                cap_j = self.caps[j]
                if cap_j is not None:
                    vals = np.minimum(vals, cap_j)
                add = np.bincount(inv, weights=vals, minlength=uniq.size)
                dn, ds, dss = fold_units(
                    arms=k,
                    epochs=cap,
                    arm=arm,
                    first_epoch=first,
                    old_count=self.mcount[uniq],
                    old_sum=self.msum[j, uniq],
                    add_count=add_m,
                    add_sum=add,
                )
                self.mcells[j] += np.stack([dn, ds, dss])
                self.msum[j, uniq] += add
            self.mcount[uniq] += add_m

    def _fix_cap(self, j: int, lo: int, hi: int) -> None:
        """Fix metric j's cap from its first CAP_MIN_VALUES values (hi of them have matured), and
        cap the values already summed (0..lo-1): each unit's mean moves to its capped mean."""
        run = self.run
        cap = metric_cap(run.metric[j, :CAP_MIN_VALUES])
        self.caps[j] = cap
        if cap is None or lo <= 0:
            return
        before = run.metric[j, :lo]
        over = before > cap
        if not over.any():
            return
        uniq, inv = np.unique(run.traffic.unit[:lo][over], return_inverse=True)
        delta = np.bincount(inv, weights=cap - before[over], minlength=uniq.size)
        dn, ds, dss = fold_units(
            arms=run.k,
            epochs=self.cap,
            arm=run.unit_arm[uniq],
            first_epoch=self.first_epoch[uniq],
            old_count=self.mcount[uniq],
            old_sum=self.msum[j, uniq],
            add_count=np.zeros(uniq.size),
            add_sum=delta,
        )
        self.mcells[j] += np.stack([dn, ds, dss])
        self.msum[j, uniq] += delta

    def data(self, epochs: int, feedback: FeedbackCounts) -> EpochData:
        """The EpochData of the first `epochs` epochs."""
        run = self.run
        metrics = {
            name: MetricData(
                n=self.mcells[j, 0, :, :epochs],
                s=self.mcells[j, 1, :, :epochs],
                ss=self.mcells[j, 2, :, :epochs],
                cap=self.caps[j],
            )
            for j, name in enumerate(run.metric_names)
        }
        return EpochData(
            n=self.cells[0, :, :epochs],
            s=self.cells[1, :, :epochs],
            ss=self.cells[2, :, :epochs],
            assigned=self.assigned[:, :epochs],
            weights=self.weights[:, :epochs],
            feedback=feedback,
            metrics=metrics or None,
        )


def _feedback_counts(run: _Run, t: float) -> FeedbackCounts:
    """Per-arm feedback counts at tick t over decisions two windows old."""
    cut = min(int(math.floor(t - 2.0 * run.window_ticks + _EPS)) + 1, run.total)
    k = run.k
    if cut <= 0:
        return FeedbackCounts.empty(k)
    arm = run.arm[:cut]
    eligible = np.bincount(arm, minlength=k).astype(float)
    on_time = np.bincount(arm, weights=run.on_time[:cut], minlength=k)
    late_mask = run.got[:cut] & ~run.on_time[:cut]
    arrived = np.arange(cut) + run.delay_ticks[arm] <= t + _EPS
    late = np.bincount(arm, weights=late_mask & arrived, minlength=k)
    return FeedbackCounts(eligible=eligible, on_time=on_time, late=late)


def _sums(v: np.ndarray) -> tuple[float, float, float]:
    return float(v.size), float(v.sum()), float((v * v).sum())


def simulate_run(scenario: Scenario, index: int) -> RunResult:
    """Simulate run number `index` of a scenario through the real policy step."""
    run = _Run(scenario, index)
    sums = _Sums(run)
    pol, k, total, rng = run.pol, run.k, run.total, run.rng
    dph = scenario.decisions_per_hour
    window = run.window_ticks
    min_ticks = pol.min_update_minutes / 60.0 * dph
    limit_tick = min(pol.max_decisions - 1.0, pol.max_days * 24.0 * dph)

    state = PolicyState()
    weights = initial_weights(k)
    epoch, t0, i0, matured = 0, 0.0, 0, 0
    winner: int | None = None
    action, ended_at, final, rolled_back, stop = "running", None, 0, False, None
    holdout_from: int | None = None  # first decision of the holdout phase
    holdout_t0 = 0.0
    keep: tuple[int, ...] = ()
    served_all = False

    while True:
        t = max(matured + pol.update_every - 1 + window, t0 + min_ticks, float(i0))
        if holdout_from is None:
            t = min(t, max(limit_tick, float(i0)))
        if t > total - 1 + _EPS:
            break
        end = min(total, int(math.floor(t + _EPS)) + 1)
        run.assign(i0, end, weights, keep=keep)
        sums.grow(epoch)
        new = min(max(int(math.floor(t - window + _EPS)) + 1, matured), end)
        first = run.traffic.first[i0:end]
        units_first = run.traffic.unit[i0:end][first]
        sums.first_epoch[units_first] = epoch
        sums.assigned[:, epoch] = np.bincount(run.arm[i0:end][first], minlength=k)
        sums.weights[:, epoch] = weights
        if holdout_from is None:
            sums.fold(matured, new, reward_kind=scenario.reward, policy=pol)
        e1 = epoch + 1
        epoch, t0, i0, matured = e1, t, end, new
        if holdout_from is not None:
            assert winner is not None
            counted, value = matured_values(
                run.on_time[:matured], run.reward[:matured], reward_kind=scenario.reward, policy=pol
            )
            arm = run.arm[:matured]
            old_v = value[(arm == 0) & counted][-rollback_window(pol) :]
            new_all = value[holdout_from:][(arm[holdout_from:] == winner) & counted[holdout_from:]]
            scans = [_sums(new_all[-size:]) for size in rollback_scan(pol)]
            old_s = _sums(old_v)
            verdict = holdout_step(
                n=(scans[0][0], old_s[0]),
                s=(scans[0][1], old_s[1]),
                ss=(scans[0][2], old_s[2]),
                decisions=end - holdout_from,
                hours=(t - holdout_t0) / dph,
                policy=pol,
                recent=tuple(scans[1:]),
            )
            if verdict.action == HoldoutAction.ROLLBACK:
                final, rolled_back, served_all = 0, True, True
                run.serve_rest(end, 0)
                break
            if verdict.action == HoldoutAction.END_HOLDOUT:
                served_all = True
                run.serve_rest(end, winner)
                break
            if end >= total:
                break
            continue
        res = step(
            sums.data(e1, _feedback_counts(run, t)),
            control=0,
            state=state,
            policy=pol,
            rng=rng,
            hours_elapsed=t / dph,
            decisions_total=end,
            reward_kind=scenario.reward,
            matured_decisions=float(matured),
        )
        state, weights = res.state, res.weights
        if res.action != CONTINUE:
            winner, action, ended_at = res.winner, str(res.action), end
            stop = None if res.stop_reason is None else str(res.stop_reason)
            final = 0 if winner is None else winner
            if res.action == StatsAction.PROMOTE and winner != 0 and pol.holdout_share > 0:
                assert winner is not None
                holdout_from, holdout_t0 = end, t
                weights = holdout_weights(k, new=winner, old=0, policy=pol)
                keep = (winner, 0)
                if end >= total:
                    break
                continue
            run.serve_rest(end, final)
            served_all = True
            break
        if i0 >= total:
            break

    if not served_all and i0 < total:
        run.assign(i0, total, weights, keep=keep)  # still running (or in holdout) at the end

    gaps = run.mu.max(axis=1)[:, None] - run.mu
    regret = float(gaps[run.seg_of, run.arm].sum())
    per_seg = np.bincount(run.seg_of, minlength=run.mu.shape[0])
    uniform = float((per_seg * gaps.mean(axis=1)).sum())
    wrong = winner is not None and is_wrong(run.mu[-1], final, scenario.tolerance)
    return RunResult(
        winner=winner,
        action=action,
        decisions_to_end=total if ended_at is None else ended_at,
        regret=regret,
        uniform_regret=uniform,
        wrong=wrong,
        srm_alarm=state.srm_alarm,
        checks=state.checks_done,
        final=final,
        rolled_back=rolled_back,
        feedback_alarm=state.feedback_alarm,
        guardrail_blocked=bool(state.blocked),
        stop_reason=stop,
    )


def simulate_runs(scenario: Scenario, indices: list[int] | range) -> list[RunResult]:
    """Simulate several runs of a scenario, in order."""
    return [simulate_run(scenario, i) for i in indices]


def aggregate(scenario: Scenario, results: list[RunResult]) -> dict[str, object]:
    """The CONTRACT result: runs, promotions and final production per arm, inconclusive,
    rollbacks, wrong promotions, safety freezes, guardrail blocks, median end and regrets."""
    promoted = {a.name: 0 for a in scenario.arms}
    final = {a.name: 0 for a in scenario.arms}
    for r in results:
        if r.winner is not None:
            promoted[scenario.arms[r.winner].name] += 1
        final[scenario.arms[r.final].name] += 1
    runs = len(results)
    ends = [r.decisions_to_end for r in results]
    return {
        "runs": runs,
        "promoted": promoted,
        "final": final,
        "inconclusive": runs - sum(promoted.values()),
        "rolled_back": sum(r.rolled_back for r in results),
        "wrong_promotions": sum(r.wrong for r in results),
        "frozen": {
            "srm": sum(r.srm_alarm for r in results),
            "feedback": sum(r.feedback_alarm for r in results),
        },
        "guardrail_blocked": sum(r.guardrail_blocked for r in results),
        "median_decisions_to_end": float(np.median(ends)) if ends else 0.0,
        "mean_regret": float(np.mean([r.regret for r in results])) if results else 0.0,
        "uniform_regret": float(np.mean([r.uniform_regret for r in results])) if results else 0.0,
    }
