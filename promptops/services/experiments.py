"""Experiment lifecycle: create, start, stop, promote, finish, and the reads.

Every end of an experiment is a conditional update from the status read, so promotion happens
exactly once even when several servers share one database (the epoch update is in `epochs`, the
guarded rollout in `rollout`, the reads' shapes in `experimentview`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import (
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
    PRODUCTION,
    ExperimentSpec,
    ExperimentStatus,
    RewardKind,
    Strategy,
    arm_count_problem,
    metric_name_problem,
    parse_policy,
)
from promptops.errors import ExperimentNotFound, ExperimentStateError, InvalidInput
from promptops.services.context import Context
from promptops.services.evalgate import EvalCatalog, GateStatus, gate_of, gate_status
from promptops.services.experimentview import arm_rows, epoch_history, experiment_view
from promptops.services.registry import Registry, write_audit
from promptops.services.views import EpochView, ExperimentView, Snapshot


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
        bad_count = arm_count_problem(len(arms))
        if bad_count:
            raise InvalidInput(bad_count, field="versions")
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
        """Insert a draft experiment with its arms, audited (every way of creating one ends here,
        so the bounds on its arms hold for the API, the CLI and prompt files alike)."""
        if len(set(vids)) != len(vids):
            raise InvalidInput("two arms are the same version")
        bad_count = arm_count_problem(len(vids))
        if bad_count:
            raise InvalidInput(bad_count, field="versions")
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

    def require_eval(self, s: Session, exp: ExperimentRow, eval_name: str, *, auto_start: bool) -> None:
        """Hold the experiment until its arms pass an eval; `auto_start`: start it when they do.
        An eval the evals folder does not define is refused: the draft would wait for ever."""
        unknown = self.catalog.unknown(eval_name)
        if unknown:
            raise InvalidInput(f"requires_eval: {unknown}", field="requires_eval")
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
        return arm_rows(s, experiment_id)

    def get(self, experiment_id: int) -> ExperimentView:
        """An experiment with its per-arm figures (the API's shape)."""
        with self.ctx.tx() as s:
            return experiment_view(s, self.row(s, experiment_id), self.catalog)

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
            return [experiment_view(s, e, self.catalog) for e in s.scalars(q).all()]

    def history(self, experiment_id: int) -> list[EpochView]:
        """Per-epoch weights, P(best) and means, oldest first (for charts)."""
        with self.ctx.tx() as s:
            self.row(s, experiment_id)
            return epoch_history(s, experiment_id)


def open_epoch(s: Session, exp: ExperimentRow, now: float, weights: Any, summary: dict[str, Any]) -> None:
    """Start the experiment's next epoch with these weights (constant until it closes)."""
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
            summary=summary,
        )
    )
    bump_change_seq(s)
