"""Experiment lifecycle: create, start, stop, promote, finish, and the reads.

Every end of an experiment is a conditional update from the status read, so promotion happens
exactly once even when several servers share one database (the epoch update is in `epochs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import (
    ArmEpochRow,
    ArmRow,
    EpochRow,
    ExperimentGateRow,
    ExperimentRow,
    LabelRow,
    PromptRow,
    VersionRow,
)
from promptops.db.queries import bump_change_seq, rowcount
from promptops.domain import (
    DEFAULT_METRIC,
    ENDED_STATUSES,
    LIVE_STATUSES,
    PRODUCTION,
    ExperimentSpec,
    ExperimentStatus,
    Policy,
    RewardKind,
    Strategy,
    metric_name_problem,
    parse_policy,
)
from promptops.errors import ExperimentNotFound, ExperimentStateError, InvalidInput
from promptops.services.calls import arm_usage
from promptops.services.context import Context
from promptops.services.evalgate import EvalCatalog, GateStatus, gate_of, gate_status
from promptops.services.registry import Registry, write_audit
from promptops.services.views import ArmView, EpochView, EvalGateView, ExperimentView, Snapshot


class Experiments:
    """Create, start, stop, promote and read experiments."""

    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.catalog = EvalCatalog(ctx.settings.evals_dir)

    # -- creation --------------------------------------------------------------------------
    def create(
        self,
        prompt: str,
        versions: Sequence[int],
        *,
        metric: str = DEFAULT_METRIC,
        reward: str = RewardKind.BINARY,
        strategy: str = Strategy.THOMPSON,
        weights: Sequence[float] | None = None,
        auto_promote: bool | None = None,
        policy: dict[str, Any] | None = None,
        start: bool = True,
        requires_eval: str | None = None,
        metrics: Sequence[str] = (),
        guardrails: Sequence[Any] = (),
        actor: str = "api",
    ) -> ExperimentView:
        """Create an experiment over versions of a prompt; running unless start is False (or it
        requires an eval its arms have not passed yet: then a draft that starts when they do).
        `guardrails` join the policy's; `metrics` are secondary metrics."""
        pol = dict(policy or {})
        if guardrails:
            pol["guardrails"] = [*(pol.get("guardrails") or []), *guardrails]
        spec = self.make_spec(
            arms=[str(v) for v in versions],
            metric=metric,
            reward=reward,
            strategy=strategy,
            weights=weights,
            auto_promote=auto_promote,
            policy=pol,
            status=ExperimentStatus.RUNNING if start else ExperimentStatus.DRAFT,
            metrics=metrics,
        )
        with self.ctx.tx() as s:
            p = self.registry.prompt_row(s, prompt)
            vids = [self.registry.version_row(s, p, int(v)).id for v in versions]
            exp = self.insert(s, p, spec, vids, source="api", declared_hash=None, actor=actor)
            if requires_eval is not None:
                self.require_eval(s, exp, requires_eval, auto_start=start)
            if start and self.gate(s, exp) is None:
                self.start_row(s, exp, actor=actor)
            exp_id = exp.id
        return self.get(exp_id)

    @staticmethod
    def make_spec(
        *,
        arms: Sequence[str],
        metric: str,
        reward: str,
        strategy: str,
        weights: Sequence[float] | None,
        auto_promote: bool | None,
        policy: dict[str, Any] | None,
        status: str,
        metrics: Sequence[str] = (),
    ) -> ExperimentSpec:
        """Validate experiment settings into a spec (InvalidInput on any bad value)."""
        if len(arms) < 2:
            raise InvalidInput("an experiment needs at least two arms", field="versions")
        if len(set(arms)) != len(arms):
            raise InvalidInput("arms must be distinct", field="versions")
        if reward not in tuple(RewardKind):
            raise InvalidInput("reward must be binary or continuous", field="reward")
        if strategy not in tuple(Strategy):
            raise InvalidInput("strategy must be thompson or fixed", field="strategy")
        problem = metric_name_problem(metric)
        if problem:
            raise InvalidInput(f"metric {problem}", field="metric")
        w: tuple[float, ...] | None = None
        if strategy == Strategy.FIXED:
            if weights is None or len(weights) != len(arms):
                raise InvalidInput("a fixed experiment needs one weight per arm", field="weights")
            if any((not isinstance(x, int | float)) or x < 0 for x in weights) or not (
                abs(sum(weights) - 1.0) < 1e-6
            ):
                raise InvalidInput("weights must be non-negative and sum to 1", field="weights")
            w = tuple(float(x) for x in weights)
        for name in metrics:
            problem = metric_name_problem(name) if isinstance(name, str) else "must be a string"
            if problem is None and name == metric:
                problem = "is the primary metric"
            if problem:
                raise InvalidInput(f"metrics: {name!r} {problem}", field="metrics")
        if len(set(metrics)) != len(metrics):
            raise InvalidInput("metrics must be distinct", field="metrics")
        try:
            pol = parse_policy(policy or {})
        except ValueError as exc:
            raise InvalidInput(str(exc), field="policy") from None
        for g in pol.guardrails:
            problem = metric_name_problem(g.metric)
            if problem:
                raise InvalidInput(f"guardrail metric {problem}", field="guardrails")
        return ExperimentSpec(
            arms=tuple(arms),
            metric=metric,
            reward=RewardKind(reward),
            strategy=Strategy(strategy),
            weights=w,
            auto_promote=auto_promote,
            status=status,  # type: ignore[arg-type]
            policy=pol,
            metrics=tuple(metrics),
        )

    def control_note(self, s: Session, exp: ExperimentRow) -> str:
        """Says so when the control (the first arm) is not the version holding production."""
        control = self.number(s, self.arms(s, exp.id)[exp.control_arm].version_id)
        prod = exp.production_version_at_start
        if prod is None or prod == control:
            return ""
        return f" (control v{control} is not production v{prod})"

    @staticmethod
    def number(s: Session, version_id: int) -> int:
        """The version number of a version id."""
        return int(s.scalar(select(VersionRow.number).where(VersionRow.id == version_id)) or 0)

    def stop_running(self, s: Session, p: PromptRow, *, actor: str, reason: str) -> int | None:
        """Stop the prompt's running experiment, if any; returns its id."""
        running = s.scalar(
            select(ExperimentRow).where(ExperimentRow.running_prompt_id == p.id).with_for_update()
        )
        if running is None:
            return None
        self.finish(s, running, status=ExperimentStatus.STOPPED, winner=None, actor=actor, reason=reason)
        return running.id

    def insert(
        self,
        s: Session,
        p: PromptRow,
        spec: ExperimentSpec,
        vids: list[int],
        *,
        source: str,
        declared_hash: str | None,
        actor: str,
    ) -> ExperimentRow:
        """Insert a draft experiment with its arms, audited."""
        if len(set(vids)) != len(vids):
            raise InvalidInput("two arms are the same version")
        now = self.ctx.now()
        auto = spec.auto_promote if spec.auto_promote is not None else spec.strategy == Strategy.THOMPSON
        exp = ExperimentRow(
            prompt_id=p.id,
            status=ExperimentStatus.DRAFT,
            metric=spec.metric,
            reward=spec.reward,
            strategy=spec.strategy,
            fixed_weights=list(spec.weights) if spec.weights else None,
            auto_promote=auto,
            policy=spec.policy.to_dict(),
            control_arm=0,
            source=source,
            declared_hash=declared_hash,
            created_at=now,
            epoch=0,
            weights=[],
            policy_state={},
            snapshot={},
            matured_total=0,
            update_seq=0,
            metrics=list(spec.metrics),
        )
        s.add(exp)
        s.flush()
        for i, vid in enumerate(vids):
            s.add(
                ArmRow(experiment_id=exp.id, idx=i, version_id=vid, decisions=0, feedback=0, reward_sum=0.0)
            )
        write_audit(
            s,
            at=now,
            actor=actor,
            action="experiment.create",
            prompt_id=p.id,
            experiment_id=exp.id,
            message=f"experiment {exp.id} created ({source})",
            details={
                "versions": [self.number(s, v) for v in vids],
                "strategy": spec.strategy,
                "metric": spec.metric,
                "reward": spec.reward,
                "policy": spec.policy.overrides(),
            },
        )
        s.flush()
        return exp

    def start(self, experiment_id: int, *, actor: str = "api") -> ExperimentView:
        """Start a draft experiment."""
        with self.ctx.tx() as s:
            exp = self.row(s, experiment_id, lock=True)
            self.start_row(s, exp, actor=actor)
        return self.get(experiment_id)

    @staticmethod
    def require_eval(s: Session, exp: ExperimentRow, eval_name: str, *, auto_start: bool) -> None:
        """Hold the experiment until its arms pass an eval; `auto_start`: start it when they do."""
        s.add(ExperimentGateRow(experiment_id=exp.id, eval_name=eval_name, auto_start=auto_start))
        s.flush()

    def gate(self, s: Session, exp: ExperimentRow) -> GateStatus | None:
        """None when the experiment may start; else its eval gate's status (what blocks it)."""
        row = gate_of(s, exp.id)
        if row is None:
            return None
        status = gate_status(s, exp, row.eval_name, self.catalog)
        return None if status.passed else status

    def start_row(self, s: Session, exp: ExperimentRow, *, actor: str) -> None:
        """Start a draft experiment inside a transaction (one running per prompt; its eval
        gate, if it has one, passed)."""
        if exp.status != ExperimentStatus.DRAFT:
            raise ExperimentStateError(f"experiment {exp.id} is {exp.status}, not draft", status=exp.status)
        blocked = self.gate(s, exp)
        if blocked is not None:
            raise ExperimentStateError(
                f"experiment {exp.id} cannot start: {blocked.message}", status=exp.status
            )
        arms = self.arms(s, exp.id)
        # The control is the first arm, whatever holds production: a file that edited `main`
        # tests the new main against its variants. What production was is kept for the reader.
        control = 0
        prod = s.scalar(
            select(VersionRow.number)
            .join(LabelRow, LabelRow.version_id == VersionRow.id)
            .where(LabelRow.prompt_id == exp.prompt_id, LabelRow.name == PRODUCTION)
        )
        now = self.ctx.now()
        w = stats.initial_weights(len(arms), strategy=exp.strategy, fixed_weights=exp.fixed_weights or None)
        exp.status, exp.running_prompt_id = ExperimentStatus.RUNNING, exp.prompt_id
        exp.control_arm, exp.started_at, exp.epoch, exp.epoch_started_at = control, now, 0, now
        exp.production_version_at_start = prod
        exp.weights = [float(x) for x in w]
        exp.policy_state = stats.PolicyState().to_dict()
        try:
            s.flush()
        except IntegrityError:
            raise ExperimentStateError(
                "this prompt already has a running experiment; stop it first"
            ) from None
        s.add(
            EpochRow(
                experiment_id=exp.id,
                idx=0,
                started_at=now,
                weights=exp.weights,
                matured_at_start=0,
                summary={},
            )
        )
        write_audit(
            s,
            at=now,
            actor=actor,
            action="experiment.start",
            prompt_id=exp.prompt_id,
            experiment_id=exp.id,
            message=f"experiment {exp.id} started",
            details={"control_version": self.number(s, arms[control].version_id), "production_version": prod},
        )
        bump_change_seq(s)

    # -- ending ----------------------------------------------------------------------------
    def stop(self, experiment_id: int, *, actor: str = "api") -> ExperimentView:
        """Stop a running or draft experiment; production stays where it is."""
        with self.ctx.tx() as s:
            exp = self.row(s, experiment_id, lock=True)
            if exp.status in ENDED_STATUSES:
                raise ExperimentStateError(
                    f"experiment {exp.id} has already ended ({exp.status})", status=exp.status
                )
            self.finish(
                s, exp, status=ExperimentStatus.STOPPED, winner=None, actor=actor, reason="stopped by hand"
            )
        return self.get(experiment_id)

    def promote(
        self, experiment_id: int, *, version: int | None = None, actor: str = "api"
    ) -> ExperimentView:
        """End a running experiment with a winner chosen by hand (the leader by default)."""
        with self.ctx.tx() as s:
            exp = self.row(s, experiment_id, lock=True)
            if exp.status != ExperimentStatus.RUNNING:
                raise ExperimentStateError(
                    f"experiment {exp.id} is not running ({exp.status})", status=exp.status
                )
            arms = self.arms(s, exp.id)
            if version is None:
                winner = self.leader(exp)
            else:
                numbers = {self.number(s, a.version_id): a.idx for a in arms}
                if version not in numbers:
                    raise InvalidInput(
                        f"version {version} is not an arm of experiment {exp.id}", field="version"
                    )
                winner = numbers[version]
            self.finish(
                s,
                exp,
                status=ExperimentStatus.COMPLETED,
                winner=winner,
                actor=actor,
                reason="promoted by hand",
            )
        return self.get(experiment_id)

    def enter_holdout(
        self,
        s: Session,
        exp: ExperimentRow,
        *,
        winner: int,
        old: int,
        weights: Sequence[float],
        actor: str,
        reason: str,
        evidence: dict[str, Any],
    ) -> None:
        """Promote a challenger into the guarded rollout once: production moves to it, the
        previous production keeps its holdout share, and the experiment keeps routing."""
        now = self.ctx.now()
        arms = self.arms(s, exp.id)
        holdout = {
            "new": winner,
            "old": old,
            "started_at": now,
            "decisions_at_start": sum(a.decisions for a in arms),
        }
        res = s.execute(
            update(ExperimentRow)
            .where(ExperimentRow.id == exp.id, ExperimentRow.status == ExperimentStatus.RUNNING)
            .values(status=ExperimentStatus.HOLDOUT, winner_arm=winner, holdout=holdout, end_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) != 1:
            raise ExperimentStateError(f"experiment {exp.id} is no longer running")
        s.refresh(exp)
        p = s.get(PromptRow, exp.prompt_id)
        version = s.get(VersionRow, arms[winner].version_id)
        assert p is not None and version is not None
        write_audit(
            s,
            at=now,
            actor=actor,
            action="experiment.holdout",
            prompt_id=p.id,
            experiment_id=exp.id,
            message=(
                f"experiment {exp.id} promoted v{version.number}: {reason}; "
                f"v{self.number(s, arms[old].version_id)} keeps a holdout share"
            ),
            details={
                "reason": reason,
                "winner_version": version.number,
                "evidence": evidence,
                "holdout": holdout,
            },
        )
        self.registry.set_label(
            s,
            p,
            version,
            PRODUCTION,
            actor=actor,
            reason=f"experiment {exp.id}: {reason}",
            experiment_id=exp.id,
            details={"evidence": evidence},
        )
        exp.epoch += 1
        exp.epoch_started_at = now
        exp.weights = [float(x) for x in weights]
        s.add(
            EpochRow(
                experiment_id=exp.id,
                idx=exp.epoch,
                started_at=now,
                weights=exp.weights,
                matured_at_start=exp.matured_total,
                summary={"holdout": True},
            )
        )
        bump_change_seq(s)

    @staticmethod
    def leader(exp: ExperimentRow) -> int:
        """The arm with the least expected loss in the snapshot (the control without one)."""
        arms = Snapshot.from_dict(exp.snapshot).arms
        losses = [(a.expected_loss, i) for i, a in enumerate(arms) if a.expected_loss is not None]
        return min(losses)[1] if losses else exp.control_arm

    def finish(
        self,
        s: Session,
        exp: ExperimentRow,
        *,
        status: str,
        winner: int | None,
        actor: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
        production: int | None = -1,
    ) -> None:
        """End an experiment once; with a winner, production moves to it unless it holds it.

        The winner's move applies even when production was moved by hand while the experiment
        ran (the experiment routed all traffic meanwhile, so its verdict is the newer evidence);
        the audited label move names the version it replaces. Stopping the experiment is how a
        hand-picked production version is kept. `production` names another arm to hold
        production at the end (a rollback), or None to leave it.
        """
        target = winner if production == -1 else production
        now = self.ctx.now()
        # Conditional on the status we read: of two servers ending the same experiment, one wins.
        res = s.execute(
            update(ExperimentRow)
            .where(ExperimentRow.id == exp.id, ExperimentRow.status == exp.status)
            .values(status=status, running_prompt_id=None, ended_at=now, winner_arm=winner, end_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) != 1:
            raise ExperimentStateError(f"experiment {exp.id} has already ended")
        s.refresh(exp)
        arms = self.arms(s, exp.id)
        p = s.get(PromptRow, exp.prompt_id)
        assert p is not None
        ev = dict(evidence or exp.snapshot or {})
        winner_version = self.number(s, arms[winner].version_id) if winner is not None else None
        write_audit(
            s,
            at=now,
            actor=actor,
            action=f"experiment.{status}",
            prompt_id=p.id,
            experiment_id=exp.id,
            message=f"experiment {exp.id} {status}: {reason}"
            + (f"; winner version {winner_version}" if winner_version else ""),
            details={"reason": reason, "winner_version": winner_version, "evidence": ev},
        )
        if target is not None:
            version = s.get(VersionRow, arms[target].version_id)
            assert version is not None
            label_reason = f"experiment {exp.id}: {reason}"
            current = s.scalar(
                select(VersionRow.number)
                .join(LabelRow, LabelRow.version_id == VersionRow.id)
                .where(LabelRow.prompt_id == p.id, LabelRow.name == PRODUCTION)
            )
            if exp.production_version_at_start is not None and current not in (
                None,
                exp.production_version_at_start,
                version.number,
            ):
                label_reason += f"; replaces v{current}, set while the experiment ran"
            self.registry.set_label(
                s,
                p,
                version,
                PRODUCTION,
                actor=actor,
                reason=label_reason,
                experiment_id=exp.id,
                details={"evidence": ev},
            )
        bump_change_seq(s)

    # -- reads -----------------------------------------------------------------------------
    def row(self, s: Session, experiment_id: int, *, lock: bool = False) -> ExperimentRow:
        """An experiment's row, locked when asked (ExperimentNotFound if absent)."""
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
    def arms(s: Session, experiment_id: int) -> list[ArmRow]:
        """An experiment's arm rows in arm order."""
        return list(
            s.scalars(select(ArmRow).where(ArmRow.experiment_id == experiment_id).order_by(ArmRow.idx))
        )

    def get(self, experiment_id: int) -> ExperimentView:
        """An experiment with its per-arm figures (the API's shape)."""
        with self.ctx.tx() as s:
            return self._public(s, self.row(s, experiment_id))

    def list_experiments(
        self, *, prompt: str | None = None, status: str | None = None, limit: int = 200
    ) -> list[ExperimentView]:
        """Experiments, newest first."""
        with self.ctx.tx() as s:
            q = select(ExperimentRow).order_by(ExperimentRow.id.desc()).limit(limit)
            if prompt is not None:
                q = q.where(ExperimentRow.prompt_id == self.registry.prompt_row(s, prompt).id)
            if status is not None:
                q = q.where(ExperimentRow.status == status)
            return [self._public(s, e) for e in s.scalars(q).all()]

    def _public(self, s: Session, exp: ExperimentRow) -> ExperimentView:
        name = s.scalar(select(PromptRow.name).where(PromptRow.id == exp.prompt_id))
        arms = self.arms(s, exp.id)
        versions = {
            v.id: v
            for v in s.scalars(select(VersionRow).where(VersionRow.id.in_([a.version_id for a in arms])))
        }
        n_by_arm: dict[int, int] = {}
        for arm, total in s.execute(
            select(ArmEpochRow.arm, func.sum(ArmEpochRow.n))
            .where(ArmEpochRow.experiment_id == exp.id)
            .group_by(ArmEpochRow.arm)
        ):
            n_by_arm[arm] = int(total or 0)
        snapshot = Snapshot.from_dict(exp.snapshot)
        raw = exp.snapshot or {}
        snap_arms = raw.get("arms") or []
        snap_metrics: dict[str, list[dict[str, Any]]] = raw.get("metrics") or {}
        verdicts: list[dict[str, Any]] = raw.get("guardrails") or []
        usage = arm_usage(s, exp.id, len(arms))
        out_arms = []
        for a in arms:
            v = versions[a.version_id]
            snap = snapshot.arm(a.idx)
            out_arms.append(
                ArmView(
                    version=v.number,
                    variant=v.variant,
                    decisions=a.decisions,
                    feedback=a.feedback,
                    reward_sum=a.reward_sum,
                    n=n_by_arm.get(a.idx, 0),
                    mean=snap.mean,
                    sd=snap.sd,
                    ci_low=snap.ci_low,
                    ci_high=snap.ci_high,
                    p_best=snap.p_best,
                    expected_loss=snap.expected_loss,
                    p_beats_control=snap.p_beats_control,
                    weight=(
                        exp.weights[a.idx]
                        if exp.status in LIVE_STATUSES and a.idx < len(exp.weights)
                        else 0.0
                    ),
                    is_control=a.idx == exp.control_arm,
                    **usage[a.idx].as_dict(),
                    units=int((snap_arms[a.idx] if a.idx < len(snap_arms) else {}).get("units", 0)),
                    new_units=int((snap_arms[a.idx] if a.idx < len(snap_arms) else {}).get("new_units", 0)),
                    metrics={
                        m: per_arm[a.idx] for m, per_arm in snap_metrics.items() if a.idx < len(per_arm)
                    },
                    guardrails=[
                        {
                            k: g[k]
                            for k in (
                                "metric",
                                "state",
                                "diff",
                                "diff_low",
                                "diff_high",
                                "relative",
                                "sentence",
                            )
                        }
                        for g in verdicts
                        if g.get("arm") == a.idx
                    ],
                )
            )
        winner = None
        if exp.winner_arm is not None and exp.winner_arm < len(arms):
            winner = versions[arms[exp.winner_arm].version_id].number
        policy = parse_policy(exp.policy)
        control_version = out_arms[exp.control_arm].version if out_arms else None
        gate_row = gate_of(s, exp.id)
        gate = None
        if gate_row is not None:
            status = gate_status(s, exp, gate_row.eval_name, self.catalog)
            gate = EvalGateView(
                eval=status.eval,
                passed=status.passed,
                waiting=status.waiting,
                reasons=status.reasons,
                message=status.message,
            )
        waiting = (
            gate.message
            if gate is not None and not gate.passed and exp.status == ExperimentStatus.DRAFT
            else None
        )
        return ExperimentView(
            id=exp.id,
            prompt=name or "",
            status=ExperimentStatus(exp.status),
            winner=winner,
            metric=exp.metric,
            reward=RewardKind(exp.reward),
            strategy=Strategy(exp.strategy),
            auto_promote=exp.auto_promote,
            source=exp.source,
            control_version=control_version,
            production_at_start=exp.production_version_at_start,
            control_is_production=(
                None
                if exp.production_version_at_start is None
                else control_version == exp.production_version_at_start
            ),
            created_at=exp.created_at,
            started_at=exp.started_at,
            ended_at=exp.ended_at,
            end_reason=exp.end_reason,
            epoch=exp.epoch,
            matured=exp.matured_total,
            last_update_at=exp.last_update_at,
            policy=policy.to_dict(),
            missing_feedback=policy.missing_feedback_for(exp.reward),
            reason=waiting or snapshot.reason or self._waiting(exp, policy),
            srm_alarm=snapshot.srm_alarm,
            srm_p=snapshot.srm_p,
            value_remaining=snapshot.value_remaining,
            checks_done=snapshot.checks_done,
            requires_eval=gate_row.eval_name if gate_row is not None else None,
            gate=gate,
            metrics=list(exp.metrics or []),
            flags=[f["flag"] for f in raw.get("flags") or []],
            safety=list(raw.get("flags") or []),
            stop_reason=raw.get("stop_reason"),
            holdout=self._holdout_public(exp, versions, arms),
            arms=tuple(out_arms),
        )

    @staticmethod
    def _holdout_public(
        exp: ExperimentRow, versions: dict[int, VersionRow], arms: Sequence[ArmRow]
    ) -> dict[str, Any] | None:
        """The guarded rollout: new and old versions, its start and the latest rollback test."""
        hold = exp.holdout
        if not hold:
            return None
        latest = (exp.snapshot or {}).get("holdout") or {}
        return {
            "new_version": versions[arms[int(hold["new"])].version_id].number,
            "old_version": versions[arms[int(hold["old"])].version_id].number,
            "started_at": hold.get("started_at"),
            "p_old_better": latest.get("p_old_better"),
            "reason": latest.get("reason"),
        }

    @staticmethod
    def _waiting(exp: ExperimentRow, policy: Policy) -> str | None:
        if exp.status != ExperimentStatus.RUNNING:
            return None
        return (
            f"collecting outcomes: each counts {policy.attribution_window_hours:g} h after "
            f"its decision; burn-in needs {policy.min_samples_per_arm:,} per arm and "
            f"{policy.min_hours:g} h"
        )

    def history(self, experiment_id: int) -> list[EpochView]:
        """Per-epoch weights, P(best) and means, oldest first (for charts)."""
        with self.ctx.tx() as s:
            self.row(s, experiment_id)
            eps = s.scalars(
                select(EpochRow).where(EpochRow.experiment_id == experiment_id).order_by(EpochRow.idx)
            ).all()
            assigned: dict[int, list[int]] = {}
            for r in s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == experiment_id)):
                row = assigned.setdefault(r.epoch, [])
                while len(row) <= r.arm:
                    row.append(0)
                row[r.arm] = r.assigned
            return [
                EpochView(
                    epoch=e.idx,
                    started_at=e.started_at,
                    weights=e.weights,
                    matured_at_start=e.matured_at_start,
                    p_best=(e.summary or {}).get("p_best"),
                    mean=(e.summary or {}).get("mean"),
                    checked=(e.summary or {}).get("checked", False),
                    holdout=bool((e.summary or {}).get("holdout", False)),
                    assigned=assigned.get(e.idx, []),
                )
                for e in eps
            ]
