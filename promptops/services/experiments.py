"""Experiment lifecycle and the epoch update: maturation, statistics, new weights, promotion.

The epoch update runs off the request path (a background loop in the server, or `tick()` called by
tests and the CLI). It holds the experiment's row lock for its whole transaction, and every end of an
experiment is a conditional update from `running`, so promotion happens exactly once even when several
servers share one database.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import (
    ArmEpochRow,
    ArmRow,
    DecisionRow,
    EpochRow,
    ExperimentRow,
    FeedbackRow,
    LabelRow,
    PromptRow,
    VersionRow,
)
from promptops.db.queries import bump_change_seq, rowcount
from promptops.domain import (
    DEFAULT_METRIC,
    ENDED_STATUSES,
    PRODUCTION,
    ExperimentSpec,
    Policy,
    content_hash,
    metric_name_problem,
    parse_policy,
)
from promptops.errors import ExperimentNotFound, ExperimentStateError, InvalidInput
from promptops.services.calls import arm_usage
from promptops.services.context import Context
from promptops.services.registry import Registry, write_audit

SYSTEM_ACTOR = "promptops"
MATURITY_GRACE_SECONDS = 2.0


class Experiments:
    """Create, start, stop, promote and update experiments."""

    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self._rng = stats.new_rng()

    # -- creation --------------------------------------------------------------------------
    def create(self, prompt: str, versions: Sequence[int], *, metric: str = DEFAULT_METRIC,
               reward: str = "binary", strategy: str = "thompson",
               weights: Sequence[float] | None = None, auto_promote: bool | None = None,
               policy: dict[str, Any] | None = None, start: bool = True,
               actor: str = "api") -> dict[str, Any]:
        """Create an experiment over versions of a prompt; running unless start is False."""
        spec = self.make_spec(arms=[str(v) for v in versions], metric=metric, reward=reward,
                              strategy=strategy, weights=weights, auto_promote=auto_promote,
                              policy=policy, status="running" if start else "draft")
        with self.ctx.tx() as s:
            p = self.registry.prompt_row(s, prompt)
            vids = [self.registry.version_row(s, p, int(v)).id for v in versions]
            exp = self._insert(s, p, spec, vids, source="api", declared_hash=None, actor=actor)
            if start:
                self._start(s, exp, actor=actor)
            exp_id = exp.id
        return self.get(exp_id)

    @staticmethod
    def make_spec(*, arms: Sequence[str], metric: str, reward: str, strategy: str,
                  weights: Sequence[float] | None, auto_promote: bool | None,
                  policy: dict[str, Any] | None, status: str) -> ExperimentSpec:
        """Validate experiment settings into a spec (InvalidInput on any bad value)."""
        if len(arms) < 2:
            raise InvalidInput("an experiment needs at least two arms", field="versions")
        if len(set(arms)) != len(arms):
            raise InvalidInput("arms must be distinct", field="versions")
        if reward not in ("binary", "continuous"):
            raise InvalidInput("reward must be binary or continuous", field="reward")
        if strategy not in ("thompson", "fixed"):
            raise InvalidInput("strategy must be thompson or fixed", field="strategy")
        problem = metric_name_problem(metric)
        if problem:
            raise InvalidInput(f"metric {problem}", field="metric")
        w: tuple[float, ...] | None = None
        if strategy == "fixed":
            if weights is None or len(weights) != len(arms):
                raise InvalidInput("a fixed experiment needs one weight per arm", field="weights")
            if any((not isinstance(x, int | float)) or x < 0 for x in weights) or not (
                    abs(sum(weights) - 1.0) < 1e-6):
                raise InvalidInput("weights must be non-negative and sum to 1", field="weights")
            w = tuple(float(x) for x in weights)
        try:
            pol = parse_policy(policy or {})
        except ValueError as exc:
            raise InvalidInput(str(exc), field="policy") from None
        return ExperimentSpec(arms=tuple(arms), metric=metric, reward=reward,  # type: ignore[arg-type]
                              strategy=strategy, weights=w,  # type: ignore[arg-type]
                              auto_promote=auto_promote, status=status,  # type: ignore[arg-type]
                              policy=pol)

    def declare(self, s: Session, p: PromptRow, spec: ExperimentSpec,
                version_ids: dict[str, int], *, actor: str) -> list[str]:
        """Apply an experiment declared in a prompt file during sync; returns change lines."""
        vids = [version_ids[a] for a in spec.arms]
        declared = content_hash({
            "prompt": p.name, "arms": vids, "metric": spec.metric, "reward": spec.reward,
            "strategy": spec.strategy, "weights": spec.weights, "auto_promote": spec.auto_promote,
            "policy": spec.policy.overrides()})
        existing = s.scalar(select(ExperimentRow).where(
            ExperimentRow.prompt_id == p.id, ExperimentRow.declared_hash == declared)
            .order_by(ExperimentRow.id.desc()))
        if existing is not None:
            lines = []
            running = s.scalar(select(ExperimentRow).where(
                ExperimentRow.running_prompt_id == p.id))
            if running is not None and running.id != existing.id and running.source == "file":
                # The file went back to an earlier declaration: the one it replaced must stop.
                stopped = self._stop_running(s, p, actor=actor,
                                             reason="declaration changed in the file")
                lines.append(f"experiment {stopped} stopped (declaration changed)")
            if existing.status == "draft" and spec.status == "running":
                self._stop_running(s, p, actor=actor, reason="another declaration started")
                self._start(s, existing, actor=actor)
                lines.append(f"experiment {existing.id} started"
                             + self._control_note(s, existing))
            return lines
        lines = []
        stopped = self._stop_running(s, p, actor=actor, reason="declaration changed in the file")
        if stopped is not None:
            lines.append(f"experiment {stopped} stopped (declaration changed)")
        exp = self._insert(s, p, spec, vids, source="file", declared_hash=declared, actor=actor)
        if spec.status == "running":
            self._start(s, exp, actor=actor)
            lines.append(f"experiment {exp.id} started over versions "
                         f"{', '.join(str(self._number(s, v)) for v in vids)}"
                         + self._control_note(s, exp))
        else:
            lines.append(f"experiment {exp.id} created as draft")
        return lines

    def undeclare(self, s: Session, p: PromptRow, *, actor: str) -> list[str]:
        """The file no longer declares an experiment: stop the one it declared, if running."""
        running = s.scalar(select(ExperimentRow).where(ExperimentRow.running_prompt_id == p.id))
        if running is None or running.source != "file":
            return []
        self._stop_running(s, p, actor=actor, reason="experiment removed from the file")
        return [f"experiment {running.id} stopped (removed from the file)"]

    def _control_note(self, s: Session, exp: ExperimentRow) -> str:
        """Says so when the control (the first arm) is not the version holding production."""
        control = self._number(s, self._arms(s, exp.id)[exp.control_arm].version_id)
        prod = exp.production_version_at_start
        if prod is None or prod == control:
            return ""
        return f" (control v{control} is not production v{prod})"

    @staticmethod
    def _number(s: Session, version_id: int) -> int:
        return int(s.scalar(select(VersionRow.number).where(VersionRow.id == version_id)) or 0)

    def _stop_running(self, s: Session, p: PromptRow, *, actor: str, reason: str) -> int | None:
        running = s.scalar(select(ExperimentRow).where(ExperimentRow.running_prompt_id == p.id)
                           .with_for_update())
        if running is None:
            return None
        self._finish(s, running, status="stopped", winner=None, actor=actor, reason=reason)
        return running.id

    def _insert(self, s: Session, p: PromptRow, spec: ExperimentSpec, vids: list[int], *,
                source: str, declared_hash: str | None, actor: str) -> ExperimentRow:
        if len(set(vids)) != len(vids):
            raise InvalidInput("two arms are the same version")
        now = self.ctx.now()
        auto = spec.auto_promote if spec.auto_promote is not None else spec.strategy == "thompson"
        exp = ExperimentRow(
            prompt_id=p.id, status="draft", metric=spec.metric, reward=spec.reward,
            strategy=spec.strategy, fixed_weights=list(spec.weights) if spec.weights else None,
            auto_promote=auto, policy=spec.policy.to_dict(), control_arm=0, source=source,
            declared_hash=declared_hash, created_at=now, epoch=0, weights=[],
            policy_state={}, snapshot={}, matured_total=0, update_seq=0)
        s.add(exp)
        s.flush()
        for i, vid in enumerate(vids):
            s.add(ArmRow(experiment_id=exp.id, idx=i, version_id=vid, decisions=0, feedback=0,
                         reward_sum=0.0))
        write_audit(s, at=now, actor=actor, action="experiment.create", prompt_id=p.id,
                    experiment_id=exp.id, message=f"experiment {exp.id} created ({source})",
                    details={"versions": [self._number(s, v) for v in vids],
                             "strategy": spec.strategy, "metric": spec.metric,
                             "reward": spec.reward, "policy": spec.policy.overrides()})
        s.flush()
        return exp

    def start(self, experiment_id: int, *, actor: str = "api") -> dict[str, Any]:
        """Start a draft experiment."""
        with self.ctx.tx() as s:
            exp = self._row(s, experiment_id, lock=True)
            self._start(s, exp, actor=actor)
        return self.get(experiment_id)

    def _start(self, s: Session, exp: ExperimentRow, *, actor: str) -> None:
        if exp.status != "draft":
            raise ExperimentStateError(f"experiment {exp.id} is {exp.status}, not draft",
                                       status=exp.status)
        arms = self._arms(s, exp.id)
        # The control is the first arm, whatever holds production: a file that edited `main`
        # tests the new main against its variants. What production was is kept for the reader.
        control = 0
        prod = s.scalar(select(VersionRow.number).join(LabelRow, LabelRow.version_id == VersionRow.id)
                        .where(LabelRow.prompt_id == exp.prompt_id, LabelRow.name == PRODUCTION))
        now = self.ctx.now()
        w = stats.initial_weights(len(arms), strategy=exp.strategy,
                                  fixed_weights=exp.fixed_weights or None)
        exp.status, exp.running_prompt_id = "running", exp.prompt_id
        exp.control_arm, exp.started_at, exp.epoch, exp.epoch_started_at = control, now, 0, now
        exp.production_version_at_start = prod
        exp.weights = [float(x) for x in w]
        exp.policy_state = stats.PolicyState().to_dict()
        try:
            s.flush()
        except IntegrityError:
            raise ExperimentStateError(
                "this prompt already has a running experiment; stop it first") from None
        s.add(EpochRow(experiment_id=exp.id, idx=0, started_at=now, weights=exp.weights,
                       matured_at_start=0, summary={}))
        write_audit(s, at=now, actor=actor, action="experiment.start", prompt_id=exp.prompt_id,
                    experiment_id=exp.id, message=f"experiment {exp.id} started",
                    details={"control_version": self._number(s, arms[control].version_id),
                             "production_version": prod})
        bump_change_seq(s)

    # -- ending ----------------------------------------------------------------------------
    def stop(self, experiment_id: int, *, actor: str = "api") -> dict[str, Any]:
        """Stop a running or draft experiment; production stays where it is."""
        with self.ctx.tx() as s:
            exp = self._row(s, experiment_id, lock=True)
            if exp.status in ENDED_STATUSES:
                raise ExperimentStateError(f"experiment {exp.id} has already ended ({exp.status})",
                                           status=exp.status)
            self._finish(s, exp, status="stopped", winner=None, actor=actor,
                         reason="stopped by hand")
        return self.get(experiment_id)

    def promote(self, experiment_id: int, *, version: int | None = None,
                actor: str = "api") -> dict[str, Any]:
        """End a running experiment with a winner chosen by hand (the leader by default)."""
        with self.ctx.tx() as s:
            exp = self._row(s, experiment_id, lock=True)
            if exp.status != "running":
                raise ExperimentStateError(f"experiment {exp.id} is not running ({exp.status})",
                                           status=exp.status)
            arms = self._arms(s, exp.id)
            if version is None:
                winner = self._leader(exp)
            else:
                numbers = {self._number(s, a.version_id): a.idx for a in arms}
                if version not in numbers:
                    raise InvalidInput(f"version {version} is not an arm of experiment {exp.id}",
                                       field="version")
                winner = numbers[version]
            self._finish(s, exp, status="completed", winner=winner, actor=actor,
                         reason="promoted by hand")
        return self.get(experiment_id)

    @staticmethod
    def _leader(exp: ExperimentRow) -> int:
        arms = (exp.snapshot or {}).get("arms") or []
        losses = [(a.get("expected_loss"), i) for i, a in enumerate(arms)
                  if a.get("expected_loss") is not None]
        return min(losses)[1] if losses else exp.control_arm

    def _finish(self, s: Session, exp: ExperimentRow, *, status: str, winner: int | None,
                actor: str, reason: str, evidence: dict[str, Any] | None = None) -> None:
        """End an experiment once; with a winner, production moves to it unless it holds it.

        The winner's move applies even when production was moved by hand while the experiment
        ran (the experiment routed all traffic meanwhile, so its verdict is the newer evidence);
        the audited label move names the version it replaces. Stopping the experiment is how a
        hand-picked production version is kept.
        """
        now = self.ctx.now()
        # Conditional on the status we read: of two servers ending the same experiment, one wins.
        res = s.execute(update(ExperimentRow)
                        .where(ExperimentRow.id == exp.id, ExperimentRow.status == exp.status)
                        .values(status=status, running_prompt_id=None, ended_at=now,
                                winner_arm=winner, end_reason=reason)
                        .execution_options(synchronize_session=False))
        if rowcount(res) != 1:
            raise ExperimentStateError(f"experiment {exp.id} has already ended")
        s.refresh(exp)
        arms = self._arms(s, exp.id)
        p = s.get(PromptRow, exp.prompt_id)
        assert p is not None
        ev = dict(evidence or exp.snapshot or {})
        winner_version = self._number(s, arms[winner].version_id) if winner is not None else None
        write_audit(s, at=now, actor=actor, action=f"experiment.{status}", prompt_id=p.id,
                    experiment_id=exp.id,
                    message=f"experiment {exp.id} {status}: {reason}"
                            + (f"; winner version {winner_version}" if winner_version else ""),
                    details={"reason": reason, "winner_version": winner_version, "evidence": ev})
        if winner is not None:
            version = s.get(VersionRow, arms[winner].version_id)
            assert version is not None
            label_reason = f"experiment {exp.id}: {reason}"
            current = s.scalar(select(VersionRow.number).join(
                LabelRow, LabelRow.version_id == VersionRow.id).where(
                LabelRow.prompt_id == p.id, LabelRow.name == PRODUCTION))
            if exp.production_version_at_start is not None and current not in (
                    None, exp.production_version_at_start, version.number):
                label_reason += f"; replaces v{current}, set while the experiment ran"
            self.registry.set_label(s, p, version, PRODUCTION, actor=actor, reason=label_reason,
                                    experiment_id=exp.id, details={"evidence": ev})
        bump_change_seq(s)

    # -- the epoch update ------------------------------------------------------------------
    def tick(self) -> list[int]:
        """Run the update of every running experiment; returns the ids that changed epoch or ended."""
        with self.ctx.tx() as s:
            ids = list(s.scalars(select(ExperimentRow.id).where(ExperimentRow.status == "running")))
        changed = []
        for exp_id in ids:
            try:
                if self.update(exp_id):
                    changed.append(exp_id)
            except ExperimentStateError:
                continue  # another server ended it between our read and our update
        return changed

    def update(self, experiment_id: int) -> bool:
        """Fold newly matured outcomes in, and at an epoch boundary re-weight and check stopping."""
        with self.ctx.tx() as s:
            exp = self._row(s, experiment_id, lock=True)
            if exp.status != "running":
                return False
            now = self.ctx.now()
            policy = parse_policy(exp.policy)
            arms = self._arms(s, exp.id)
            new = self._mature(s, exp, policy, now)
            data = self._epoch_data(s, exp, len(arms))
            hours = (now - (exp.started_at or now)) / 3600
            decisions_total = sum(a.decisions for a in arms)
            epoch_row = s.scalar(select(EpochRow).where(EpochRow.experiment_id == exp.id,
                                                        EpochRow.idx == exp.epoch))
            matured_in_epoch = exp.matured_total - (epoch_row.matured_at_start if epoch_row else 0)
            minutes = (now - (exp.epoch_started_at or now)) / 60
            at_limit = decisions_total >= policy.max_decisions or hours >= policy.max_days * 24
            due = stats.should_start_epoch(matured_in_epoch=matured_in_epoch,
                                           minutes_in_epoch=minutes, policy=policy)
            exp.last_update_at = now
            if not (due or at_limit):
                if new:
                    summary = stats.summarize(data, control=exp.control_arm, policy=policy)
                    exp.snapshot = self._snapshot(exp, summary, reason=(exp.snapshot or {}).get(
                        "reason", "collecting outcomes"), state=None)
                return False
            result = stats.step(
                data, control=exp.control_arm,
                state=stats.PolicyState.from_dict(exp.policy_state or {}), policy=policy,
                rng=self._rng, hours_elapsed=hours, decisions_total=decisions_total,
                strategy=exp.strategy,
                fixed_weights=exp.fixed_weights or None, auto_promote=exp.auto_promote,
                names=self._arm_names(s, arms))
            exp.policy_state = result.state.to_dict()
            exp.snapshot = self._snapshot(exp, result.summary, reason=result.reason,
                                          state=result.state)
            if result.action in ("promote", "keep_control"):
                self._finish(s, exp, status="completed", winner=result.winner,
                             actor=SYSTEM_ACTOR, reason=result.reason, evidence=exp.snapshot)
                return True
            if result.action == "inconclusive":
                self._finish(s, exp, status="inconclusive", winner=None, actor=SYSTEM_ACTOR,
                             reason=result.reason, evidence=exp.snapshot)
                return True
            exp.epoch += 1
            exp.epoch_started_at = now
            exp.weights = [float(x) for x in result.weights]
            s.add(EpochRow(experiment_id=exp.id, idx=exp.epoch, started_at=now,
                           weights=exp.weights, matured_at_start=exp.matured_total,
                           summary={"p_best": _floats(result.summary.p_best),
                                    "mean": _floats(result.summary.mean),
                                    "checked": result.checked}))
            bump_change_seq(s)
            return True

    def _mature(self, s: Session, exp: ExperimentRow, policy: Policy, now: float) -> int:
        """Mark decisions whose attribution window closed and add them to the epoch sums."""
        window = policy.attribution_window_hours * 3600
        seq = exp.update_seq + 1
        # Wait a little past the window: a feedback stamped inside it may still be in a commit
        # batch, or come from a replica whose clock runs slightly behind.
        res = s.execute(update(DecisionRow).where(
            DecisionRow.experiment_id == exp.id, DecisionRow.counted_in == 0,
            DecisionRow.decided_at <= now - window - MATURITY_GRACE_SECONDS).values(counted_in=seq)
            .execution_options(synchronize_session=False))
        if not rowcount(res):
            return 0
        exp.update_seq = seq
        zero = policy.missing_feedback_for(exp.reward) == "zero"
        reward = FeedbackRow.reward
        q = (select(DecisionRow.arm, DecisionRow.epoch, func.count(DecisionRow.id),
                    func.count(FeedbackRow.id), func.coalesce(func.sum(reward), 0.0),
                    func.coalesce(func.sum(reward * reward), 0.0))
             .outerjoin(FeedbackRow, (FeedbackRow.decision_id == DecisionRow.id)
                        & (FeedbackRow.metric == exp.metric)
                        & (FeedbackRow.received_at <= DecisionRow.decided_at + window))
             .where(DecisionRow.experiment_id == exp.id, DecisionRow.counted_in == seq)
             .group_by(DecisionRow.arm, DecisionRow.epoch))
        existing: dict[Any, ArmEpochRow] = {(r.arm, r.epoch): r for r in s.scalars(
            select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))}
        total = 0
        for arm, epoch, count, with_fb, ssum, ssq in s.execute(q).all():
            row = existing.get((arm, epoch))
            if row is None:
                row = ArmEpochRow(experiment_id=exp.id, arm=arm, epoch=epoch, assigned=0, n=0,
                                  s=0.0, ss=0.0)
                s.add(row)
            row.assigned += int(count)
            row.n += int(count if zero else with_fb)
            row.s += float(ssum)
            row.ss += float(ssq)
            total += int(count)
        exp.matured_total += total
        return total

    def _epoch_data(self, s: Session, exp: ExperimentRow, k: int) -> stats.EpochData:
        cells = [(r.arm, r.epoch, r.n, r.s, r.ss, r.assigned) for r in s.scalars(
            select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))]
        weights = [(ep.idx, ep.weights) for ep in s.scalars(
            select(EpochRow).where(EpochRow.experiment_id == exp.id))]
        return stats.EpochData.from_cells(k, exp.epoch + 1, cells, weights)

    def _arm_names(self, s: Session, arms: list[ArmRow]) -> list[str]:
        rows = {v.id: v for v in s.scalars(select(VersionRow).where(
            VersionRow.id.in_([a.version_id for a in arms])))}
        return [f"v{rows[a.version_id].number} ({rows[a.version_id].variant})" for a in arms]

    def _snapshot(self, exp: ExperimentRow, summary: Any, *, reason: str,
                  state: Any) -> dict[str, Any]:
        arms = []
        for i in range(len(summary.mean)):
            arms.append({
                "mean": _float(summary.mean[i]), "ci_low": _float(summary.ci_low[i]),
                "ci_high": _float(summary.ci_high[i]), "p_best": _float(summary.p_best[i]),
                "expected_loss": _float(summary.expected_loss[i]),
                "p_beats_control": _float(summary.p_beats_control[i])})
        prev_state = exp.policy_state or {}
        # A report figure, not a stopping input: a fixed seed keeps it stable between refreshes.
        remaining = stats.value_remaining(summary.mean, summary.sd, rng=stats.new_rng(exp.id))
        return {"arms": arms, "reason": reason, "srm_p": _float(summary.srm_p),
                "value_remaining": _float(remaining),
                "srm_alarm": bool(state.srm_alarm if state is not None
                                  else prev_state.get("srm_alarm", False)),
                "checks_done": int(state.checks_done if state is not None
                                   else prev_state.get("checks_done", 0)),
                "at": self.ctx.now()}

    # -- reads -----------------------------------------------------------------------------
    def _row(self, s: Session, experiment_id: int, *, lock: bool = False) -> ExperimentRow:
        if not 0 < experiment_id < 2**31:
            raise ExperimentNotFound(experiment_id)
        q = select(ExperimentRow).where(ExperimentRow.id == experiment_id)
        if lock:
            q = q.with_for_update()
        exp = s.scalar(q)
        if exp is None:
            raise ExperimentNotFound(experiment_id)
        return exp

    @staticmethod
    def _arms(s: Session, experiment_id: int) -> list[ArmRow]:
        return list(s.scalars(select(ArmRow).where(ArmRow.experiment_id == experiment_id)
                              .order_by(ArmRow.idx)))

    def get(self, experiment_id: int) -> dict[str, Any]:
        """An experiment with its per-arm figures (the API's shape)."""
        with self.ctx.tx() as s:
            return self._public(s, self._row(s, experiment_id))

    def list(self, *, prompt: str | None = None, status: str | None = None,
             limit: int = 200) -> list[dict[str, Any]]:
        """Experiments, newest first."""
        with self.ctx.tx() as s:
            q = select(ExperimentRow).order_by(ExperimentRow.id.desc()).limit(limit)
            if prompt is not None:
                q = q.where(ExperimentRow.prompt_id == self.registry.prompt_row(s, prompt).id)
            if status is not None:
                q = q.where(ExperimentRow.status == status)
            return [self._public(s, e) for e in s.scalars(q).all()]

    def _public(self, s: Session, exp: ExperimentRow) -> dict[str, Any]:
        name = s.scalar(select(PromptRow.name).where(PromptRow.id == exp.prompt_id))
        arms = self._arms(s, exp.id)
        versions = {v.id: v for v in s.scalars(select(VersionRow).where(
            VersionRow.id.in_([a.version_id for a in arms])))}
        n_by_arm: dict[int, int] = {}
        for arm, total in s.execute(select(ArmEpochRow.arm, func.sum(ArmEpochRow.n))
                                    .where(ArmEpochRow.experiment_id == exp.id)
                                    .group_by(ArmEpochRow.arm)):
            n_by_arm[arm] = int(total or 0)
        snap_arms = (exp.snapshot or {}).get("arms") or []
        usage = arm_usage(s, exp.id, len(arms))
        out_arms = []
        for a in arms:
            v = versions[a.version_id]
            snap = snap_arms[a.idx] if a.idx < len(snap_arms) else {}
            out_arms.append({
                "version": v.number, "variant": v.variant, "decisions": a.decisions,
                "feedback": a.feedback, "reward_sum": a.reward_sum, "n": n_by_arm.get(a.idx, 0),
                "mean": snap.get("mean"), "ci_low": snap.get("ci_low"),
                "ci_high": snap.get("ci_high"), "p_best": snap.get("p_best"),
                "expected_loss": snap.get("expected_loss"),
                "p_beats_control": snap.get("p_beats_control"),
                "weight": (exp.weights[a.idx] if exp.status == "running"
                           and a.idx < len(exp.weights) else 0.0),
                "is_control": a.idx == exp.control_arm, **usage[a.idx].as_dict()})
        winner = None
        if exp.winner_arm is not None and exp.winner_arm < len(arms):
            winner = versions[arms[exp.winner_arm].version_id].number
        policy = parse_policy(exp.policy)
        control_version = out_arms[exp.control_arm]["version"] if out_arms else None
        return {
            "id": exp.id, "prompt": name, "status": exp.status, "winner": winner,
            "metric": exp.metric, "reward": exp.reward, "strategy": exp.strategy,
            "auto_promote": exp.auto_promote, "source": exp.source,
            "control_version": control_version,
            "production_at_start": exp.production_version_at_start,
            "control_is_production": (None if exp.production_version_at_start is None
                                      else control_version == exp.production_version_at_start),
            "created_at": exp.created_at, "started_at": exp.started_at,
            "ended_at": exp.ended_at, "end_reason": exp.end_reason, "epoch": exp.epoch,
            "matured": exp.matured_total, "last_update_at": exp.last_update_at,
            "policy": policy.to_dict(),
            "missing_feedback": policy.missing_feedback_for(exp.reward),
            "reason": (exp.snapshot or {}).get("reason") or self._waiting(exp, policy),
            "srm_alarm": bool((exp.snapshot or {}).get("srm_alarm", False)),
            "srm_p": (exp.snapshot or {}).get("srm_p"),
            "value_remaining": (exp.snapshot or {}).get("value_remaining"),
            "checks_done": (exp.snapshot or {}).get("checks_done", 0),
            "arms": out_arms,
        }

    @staticmethod
    def _waiting(exp: ExperimentRow, policy: Policy) -> str | None:
        if exp.status != "running":
            return None
        return (f"collecting outcomes: each counts {policy.attribution_window_hours:g} h after "
                f"its decision; burn-in needs {policy.min_samples_per_arm:,} per arm and "
                f"{policy.min_hours:g} h")

    def history(self, experiment_id: int) -> builtins.list[dict[str, Any]]:
        """Per-epoch weights, P(best) and means, oldest first (for charts)."""
        with self.ctx.tx() as s:
            self._row(s, experiment_id)
            eps = s.scalars(select(EpochRow).where(EpochRow.experiment_id == experiment_id)
                            .order_by(EpochRow.idx)).all()
            assigned: dict[int, list[float]] = {}
            for r in s.scalars(select(ArmEpochRow).where(
                    ArmEpochRow.experiment_id == experiment_id)):
                row = assigned.setdefault(r.epoch, [])
                while len(row) <= r.arm:
                    row.append(0)
                row[r.arm] = r.assigned
            return [{"epoch": e.idx, "started_at": e.started_at, "weights": e.weights,
                     "matured_at_start": e.matured_at_start,
                     "p_best": (e.summary or {}).get("p_best"),
                     "mean": (e.summary or {}).get("mean"),
                     "checked": (e.summary or {}).get("checked", False),
                     "assigned": assigned.get(e.idx, [])} for e in eps]


def _float(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _floats(xs: Any) -> list[float | None]:
    return [_float(x) for x in xs]
