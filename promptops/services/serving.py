"""Serving and feedback: an in-memory cache of what to serve, arm choice, and durable recording.

The hot path reads prompts and the current epoch's weights from `LiveState`, a snapshot rebuilt
only when the database's change counter moves; it never runs statistics. Decisions are written by a
`Recorder` (inline, or batched by `BatchWriter` in the server); feedback is always durable before it
is acknowledged.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from promptops.db.models import (
    ArmRow,
    DecisionRow,
    EpochRow,
    ExperimentRow,
    FeedbackRow,
    LabelRow,
    PromptRow,
    UnitRow,
    VersionRow,
)
from promptops.db.queries import RETENTION_CUTOFF, get_meta, read_change_seq, set_meta_if_absent
from promptops.domain import (
    BINARY_METRICS,
    BUILTIN_METRICS,
    DEFAULT_METRIC,
    LIVE_STATUSES,
    PRODUCTION,
    ExperimentStatus,
    PromptContent,
    Rendered,
    RewardKind,
    metric_name_problem,
    text_problem,
)
from promptops.errors import DecisionNotFound, InvalidInput, PromptNotFound, UnknownMetric
from promptops.rendering import RenderTooSlow
from promptops.services.context import Context
from promptops.services.decisions import DecisionToken, TokenCodec


@dataclass(frozen=True)
class LiveVersion:
    """A version ready to render."""

    id: int
    number: int
    variant: str
    content: PromptContent
    may_loop: bool = False  # `Renderer.may_loop`: the server renders it off its event loop


def _cumulative(weights: tuple[float, ...]) -> tuple[float, ...]:
    cum, total = [], 0.0
    for w in weights:
        total += max(w, 0.0)
        cum.append(total)
    return tuple(cum)


def _draw(cumulative: tuple[float, ...], u: float) -> int:
    i = bisect.bisect_right(cumulative, u * cumulative[-1])
    return min(i, len(cumulative) - 1)


def unit_hash(experiment_id: int, unit_id: str) -> float:
    """A unit's uniform draw in [0, 1) for an experiment: the same on every replica."""
    h = hashlib.blake2b(f"{experiment_id}:{unit_id}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") / 2.0**64


@dataclass(frozen=True)
class LiveExperiment:
    """A running experiment as serving sees it: arms, the current epoch's weights and the weights
    of every earlier epoch (a unit's arm is drawn from those of its first exposure)."""

    id: int
    metric: str
    reward: str
    epoch: int
    arms: tuple[LiveVersion, ...]
    weights: tuple[float, ...]
    cumulative: tuple[float, ...]
    history: tuple[tuple[float, ...], ...] = ()  # cumulative weights per epoch index
    keep: tuple[int, ...] = ()  # during a holdout: the arms a returning unit may keep

    def pick(self, unit_id: str | None, rng: random.Random, first_epoch: int | None = None) -> int:
        """An arm index from the weights. A unit gets the arm its hash draws from the weights of
        its first-exposure epoch (default: the current one), so every replica computes the same
        arm from (unit, first epoch) alone; in a holdout, a unit whose arm no longer serves is
        drawn again from the current weights. A request without a unit draws from `rng`."""
        if unit_id is None:
            return _draw(self.cumulative, rng.random())
        u = unit_hash(self.id, unit_id)
        e = self.epoch if first_epoch is None else first_epoch
        cum = self.history[e] if 0 <= e < len(self.history) and self.history[e] else (self.cumulative)
        arm = _draw(cum, u)
        if self.keep and arm not in self.keep:
            arm = _draw(self.cumulative, u)
        return arm


@dataclass(frozen=True)
class LivePrompt:
    """A prompt as serving sees it."""

    id: int
    name: str
    production: LiveVersion | None
    experiment: LiveExperiment | None


PRODUCTION_METRICS: tuple[str, ...] = (DEFAULT_METRIC, *BUILTIN_METRICS)
"""Metrics a decision served outside any experiment accepts: `reward` (within [0, 1]) and the
built-ins; nothing counts them towards a statistic, they are stored for reports."""


def experiment_metrics(row: ExperimentRow) -> tuple[str, ...]:
    """Every metric an experiment accepts: the primary one, its secondary metrics, its guardrail
    metrics, then the built-ins; each once, in that order."""
    names = [
        row.metric,
        *(row.metrics or []),
        *(g.get("metric") for g in (row.policy or {}).get("guardrails") or [] if isinstance(g, dict)),
        *BUILTIN_METRICS,
    ]
    return tuple(dict.fromkeys(str(n) for n in names if n))


@dataclass(frozen=True)
class Choice:
    """A picked version, before it is rendered."""

    prompt: LivePrompt
    exp: LiveExperiment | None
    arm: int | None
    version: LiveVersion
    unit_id: str | None
    variables: dict[str, Any]
    new_unit: tuple[int, int] | None


class RenderDeferred(Exception):
    """The inline render of a decision ran out of its budget; `Serving.finish` completes it.

    Not a PromptOpsError: it never reaches a caller of the server, only the code that moves the
    render off the event loop."""

    def __init__(self, choice: Choice) -> None:
        super().__init__("render deferred")
        self.choice = choice


@dataclass(frozen=True)
class Decision:
    """A served version and its rendering, with the signed id of the decision."""

    id: str
    token: DecisionToken
    version: LiveVersion
    rendered: Rendered
    unit_id: str | None
    variables: dict[str, Any]
    new_unit: tuple[int, int] | None = None  # (arm, first epoch) of a unit seen for the first time

    def payload(self) -> dict[str, Any]:
        """The JSON answer of a serve."""
        out = self.rendered.payload()
        out["decision_id"] = self.id
        out["experiment_id"] = self.token.experiment_id
        return out


@dataclass(frozen=True)
class ExperimentInfo:
    """The immutable facts about an experiment that feedback validation needs."""

    id: int
    metric: str
    reward: str
    # Every metric its feedback may name: the primary one first, then the built-ins (secondary
    # and guardrail metrics join here when experiments declare them).
    metrics: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: ExperimentRow) -> ExperimentInfo:
        """The facts of an experiment's row."""
        return cls(row.id, row.metric, row.reward, experiment_metrics(row))


@dataclass
class FeedbackItem:
    """A validated feedback waiting to be stored."""

    decision_id: str
    token: DecisionToken
    metric: str
    reward: float
    received_at: float
    counts_for: int | None  # experiment whose arm counters it updates (its metric matches)


class LiveState:
    """The cache of what to serve, rebuilt when the change counter moves."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self.seq = -1
        self.prompts: dict[str, LivePrompt] = {}
        self.experiments: dict[int, ExperimentInfo] = {}
        self.retention_cutoff = 0.0
        self.loaded_at = 0.0

    def refresh(self, *, force: bool = False) -> bool:
        """Reload if the database changed since the last load; returns whether it reloaded."""
        with self.ctx.tx() as s:
            seq = read_change_seq(s)
            if seq == self.seq and not force:
                self.loaded_at = self.ctx.now()
                return False
            prompts = self._load(s)
            self.retention_cutoff = float(get_meta(s, RETENTION_CUTOFF) or 0.0)
        with self._lock:
            self.prompts, self.seq, self.loaded_at = prompts, seq, self.ctx.now()
        return True

    def _load(self, s: Session) -> dict[str, LivePrompt]:
        versions: dict[int, LiveVersion] = {}

        def live(v: VersionRow) -> LiveVersion:
            if v.id not in versions:
                content = PromptContent.from_dict(v.content)
                versions[v.id] = LiveVersion(
                    v.id, v.number, v.variant, content, self.ctx.renderer.may_loop(content)
                )
            return versions[v.id]

        prod = {
            pid: live(v)
            for pid, v in s.execute(
                select(LabelRow.prompt_id, VersionRow)
                .join(VersionRow, VersionRow.id == LabelRow.version_id)
                .where(LabelRow.name == PRODUCTION)
            ).all()
        }
        exps: dict[int, LiveExperiment] = {}
        for e in s.scalars(select(ExperimentRow).where(ExperimentRow.status.in_(LIVE_STATUSES))):
            arms = s.execute(
                select(ArmRow.idx, VersionRow)
                .join(VersionRow, VersionRow.id == ArmRow.version_id)
                .where(ArmRow.experiment_id == e.id)
                .order_by(ArmRow.idx)
            ).all()
            weights = tuple(float(w) for w in e.weights) or tuple(1.0 for _ in arms)
            history: list[tuple[float, ...]] = [()] * (e.epoch + 1)
            for idx, ws in s.execute(
                select(EpochRow.idx, EpochRow.weights).where(EpochRow.experiment_id == e.id)
            ):
                if 0 <= idx <= e.epoch and ws:
                    history[idx] = _cumulative(tuple(float(w) for w in ws))
            hold = e.holdout or {}
            holding = e.status == ExperimentStatus.HOLDOUT and hold
            keep = (int(hold["new"]), int(hold["old"])) if holding else ()
            exps[e.prompt_id] = LiveExperiment(
                id=e.id,
                metric=e.metric,
                reward=e.reward,
                epoch=e.epoch,
                arms=tuple(live(v) for _, v in arms),
                weights=weights,
                cumulative=_cumulative(weights),
                history=tuple(history),
                keep=keep,
            )
            self.experiments[e.id] = ExperimentInfo.of(e)
        return {
            p.name: LivePrompt(p.id, p.name, prod.get(p.id), exps.get(p.id))
            for p in s.scalars(select(PromptRow))
        }

    def prompt(self, name: str) -> LivePrompt:
        """The cached prompt, or PromptNotFound."""
        p = self.prompts.get(name)
        if p is None:
            raise PromptNotFound(name)
        return p

    def experiment_info(self, experiment_id: int) -> ExperimentInfo | None:
        """Metric and reward kind of an experiment (ended ones are looked up once)."""
        info = self.experiments.get(experiment_id)
        if info is None:
            with self.ctx.tx() as s:
                row = s.get(ExperimentRow, experiment_id)
                if row is None:
                    return None
                info = ExperimentInfo.of(row)
            self.experiments[experiment_id] = info
        return info


_ARMS: Any = ArmRow.__table__
# Statements are built once: building and compiling them per batch cost more than storing the
# rows (bench/http.py).
_BUMP_ARMS = (
    update(_ARMS)
    .where(_ARMS.c.experiment_id == bindparam("exp"), _ARMS.c.idx == bindparam("arm_idx"))
    .values(
        decisions=_ARMS.c.decisions + bindparam("n_decisions"),
        feedback=_ARMS.c.feedback + bindparam("n_feedback"),
        reward_sum=_ARMS.c.reward_sum + bindparam("n_reward"),
    )
)
_INSERTS: dict[tuple[str, str], Any] = {}
_DECISION_COLUMNS = tuple(c.name for c in DecisionRow.__table__.columns)
NEW_UNIT = "new_unit"
"""The key of a decision row that carries (arm, first epoch) of a unit seen for the first time."""
UNIT_CACHE_SIZE = 100_000


class Recorder:
    """Writes decisions and feedback; every method is one transaction."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _insert_returning(self, s: Session, table: Any, rows: list[dict[str, Any]], *keys: Any) -> list[Any]:
        """Insert rows, skipping conflicts; the `keys` of the rows actually inserted."""
        if not rows:
            return []
        dialect = s.get_bind().dialect.name
        stmt = _INSERTS.get((dialect, table.name))
        if stmt is None:
            mod = postgresql if dialect == "postgresql" else sqlite
            stmt = _INSERTS[(dialect, table.name)] = (
                mod.insert(table).on_conflict_do_nothing().returning(*keys)
            )
        return list(s.connection().execute(stmt, rows).all())

    def record_decisions(self, rows: list[dict[str, Any]]) -> int:
        """Store decisions (skipping any already stored) and count them per arm."""
        if not rows:
            return 0
        with self.ctx.tx() as s:
            return self.store_decisions(s, rows)

    def store_decisions(self, s: Session, rows: list[dict[str, Any]]) -> int:
        """`record_decisions` inside the caller's transaction (the batched writer stores a batch's
        decisions and their gateway calls in one)."""
        counts: dict[tuple[int, int], list[float]] = {}
        stored = self._store_decisions(s, rows, counts)
        self._bump_arms(s, counts)
        return stored

    # Every transaction here takes its row locks in one order: decisions by id, then feedback by
    # decision id, then arm counters by experiment and arm. Replicas writing the same decisions
    # and arms at once therefore wait for each other but never deadlock.
    def _store_decisions(
        self, s: Session, rows: list[dict[str, Any]], counts: dict[tuple[int, int], list[float]]
    ) -> int:
        by_id = {r["id"]: r for r in rows}
        inserted = self._insert_returning(
            s,
            DecisionRow.__table__,
            [{c: by_id[k][c] for c in _DECISION_COLUMNS} for k in sorted(by_id)],
            DecisionRow.__table__.c.id,
        )
        # A unit first seen under this serve: its first epoch is stored so that any replica
        # recomputes its arm; of two replicas racing on one unit the first row stays.
        units = {(r["experiment_id"], r["unit_id"]): r[NEW_UNIT] for r in rows if r.get(NEW_UNIT) is not None}
        if units:
            self._insert_returning(
                s,
                UnitRow.__table__,
                [
                    {
                        "experiment_id": e,
                        "unit_id": u,
                        "arm": arm,
                        "first_epoch": epoch,
                        "decisions": 0,
                        "count": 0,
                        "total": 0.0,
                    }
                    for (e, u), (arm, epoch) in sorted(units.items())
                ],
                UnitRow.__table__.c.unit_id,
            )
        for (did,) in inserted:
            r = by_id[did]
            if r["experiment_id"] is not None:
                counts.setdefault((r["experiment_id"], r["arm"]), [0, 0, 0.0])[0] += 1
        return len(inserted)

    @staticmethod
    def _bump_arms(s: Session, counts: dict[tuple[int, int], list[float]]) -> None:
        if counts:
            s.connection().execute(
                _BUMP_ARMS,
                [
                    {
                        "exp": exp_id,
                        "arm_idx": arm,
                        "n_decisions": int(decisions),
                        "n_feedback": int(feedback),
                        "n_reward": reward,
                    }
                    for (exp_id, arm), (decisions, feedback, reward) in sorted(counts.items())
                ],
            )

    def record_feedback(self, items: list[FeedbackItem]) -> list[str]:
        """Store feedback durably; each result is "recorded" or "duplicate"."""
        if not items:
            return []
        out = ["duplicate"] * len(items)
        with self.ctx.tx() as s:
            counts: dict[tuple[int, int], list[float]] = {}
            self._store_decisions(s, [decision_row(i.decision_id, i.token) for i in items], counts)
            order = sorted(range(len(items)), key=lambda k: (items[k].decision_id, items[k].metric, k))
            # One statement for the batch; a repeat within it loses to its first occurrence.
            fb = FeedbackRow.__table__
            inserted = set(
                self._insert_returning(
                    s,
                    fb,
                    [
                        {
                            "decision_id": items[k].decision_id,
                            "metric": items[k].metric,
                            "reward": items[k].reward,
                            "received_at": items[k].received_at,
                        }
                        for k in order
                    ],
                    fb.c.decision_id,
                    fb.c.metric,
                )
            )
            for pos in order:
                item = items[pos]
                if (item.decision_id, item.metric) in inserted:
                    inserted.discard((item.decision_id, item.metric))
                    out[pos] = "recorded"
                    if item.counts_for is not None:
                        c = counts.setdefault(
                            (item.counts_for, item.token.arm),  # type: ignore[arg-type]
                            [0, 0, 0.0],
                        )
                        c[1] += 1
                        c[2] += item.reward
            self._bump_arms(s, counts)
        return out


def decision_row(decision_id: str, t: DecisionToken, unit_id: str | None = None) -> dict[str, Any]:
    """The table row of a decision."""
    return {
        "id": decision_id,
        "prompt_id": t.prompt_id,
        "version_id": t.version_id,
        "experiment_id": t.experiment_id,
        "arm": t.arm,
        "epoch": t.epoch,
        "unit_id": unit_id,
        "decided_at": t.decided_at,
        "counted_in": 0,
    }


class DecisionSink(Protocol):
    """Where a serve puts its decision, and the gateway its call record, when they are not
    written inline (`BatchWriter`)."""

    def add_decision(self, row: dict[str, Any]) -> None:
        """Queue a decision row to be stored."""

    def add_call(self, row: dict[str, Any]) -> None:
        """Queue a gateway call row to be stored after its decision."""


class Serving:
    """Serve prompts (choosing arms) and take feedback."""

    def __init__(
        self,
        ctx: Context,
        *,
        recorder: Recorder | None = None,
        writer: DecisionSink | None = None,
        auto_refresh: bool = True,
    ) -> None:
        self.ctx = ctx
        self.live = LiveState(ctx)
        self.recorder = recorder or Recorder(ctx)
        self.writer = writer  # a BatchWriter in the server; None writes inline
        self.codec = TokenCodec(self._secret())
        # The server turns this off and refreshes in the background.
        self.auto_refresh = auto_refresh
        self._units: dict[tuple[int, str], int] = {}  # (experiment, unit) -> first epoch

    def _secret(self) -> bytes:
        if self.ctx.settings.secret_key:
            return self.ctx.settings.secret_key.encode()
        with self.ctx.tx() as s:
            return set_meta_if_absent(s, "signing_secret", secrets.token_hex(32)).encode()

    def _fresh(self) -> None:
        if self.auto_refresh or self.live.seq < 0:
            self.live.refresh()

    def may_loop(self, name: str) -> bool:
        """Whether a serve of the prompt may render a template that can repeat work (see
        `Renderer.may_loop`); False for a prompt not in the cache."""
        p = self.live.prompts.get(name)
        if p is None:
            return False
        if p.production is not None and p.production.may_loop:
            return True
        return p.experiment is not None and any(v.may_loop for v in p.experiment.arms)

    def decide(
        self,
        name: str,
        variables: dict[str, Any],
        *,
        unit_id: str | None = None,
        pin: LiveVersion | None = None,
        inline: bool = False,
    ) -> Decision:
        """Pick a version (an arm when an experiment runs, or `pin`) and render it; the decision
        is not recorded yet (`record`). With `inline=True` (on an event loop) a render that needs
        more than the inline budget raises `RenderDeferred`, to be finished in a worker thread
        with `finish(deferred)`: the arm it picked stays the same."""
        choice = self._choose(name, variables, unit_id=unit_id, pin=pin)
        try:
            return self._render(choice, inline=inline)
        except RenderTooSlow:
            raise RenderDeferred(choice) from None

    def finish(self, deferred: RenderDeferred) -> Decision:
        """Render a deferred decision with the full budget (off the event loop)."""
        return self._render(deferred.choice, inline=False)

    def _choose(
        self, name: str, variables: dict[str, Any], *, unit_id: str | None, pin: LiveVersion | None
    ) -> Choice:
        self._fresh()
        p = self.live.prompt(name)
        if unit_id is not None and (not isinstance(unit_id, str) or len(unit_id) > 256):
            raise InvalidInput("unit_id must be a string of at most 256 characters", field="unit_id")
        if unit_id is not None:
            check_text(unit_id, field="unit_id")
        check_text(variables, field="variables")
        exp = p.experiment if pin is None else None
        new_unit: tuple[int, int] | None = None
        if exp is not None:
            first = None if unit_id is None else self._first_epoch(exp, unit_id)
            arm: int | None = exp.pick(unit_id, self.ctx.rng, first)
            if unit_id is not None and first is None:
                new_unit = (arm, exp.epoch)  # type: ignore[assignment]
                self._remember((exp.id, unit_id), exp.epoch)
            version = exp.arms[arm]  # type: ignore[index]
        elif pin is not None:
            arm, version = None, pin
        elif p.production is not None:
            arm, version = None, p.production
        else:
            raise PromptNotFound(name)
        return Choice(p, exp, arm, version, unit_id, variables, new_unit)

    def _render(self, c: Choice, *, inline: bool) -> Decision:
        rendered = self.ctx.renderer.render(
            c.version.content,
            c.variables,
            prompt=c.prompt.name,
            version=c.version.number,
            variant=c.version.variant,
            inline=inline,
        )
        token = DecisionToken(
            prompt_id=c.prompt.id,
            version_id=c.version.id,
            experiment_id=c.exp.id if c.exp else None,
            arm=c.arm,
            epoch=c.exp.epoch if c.exp else None,
            decided_at=self.ctx.now(),
        )
        return Decision(
            self.codec.issue(token), token, c.version, rendered, c.unit_id, c.variables, c.new_unit
        )

    def record(self, decision: Decision) -> None:
        """Record a decision (batched in the server)."""
        row = decision_row(decision.id, decision.token, decision.unit_id)
        if decision.new_unit is not None:
            row[NEW_UNIT] = decision.new_unit
        if self.writer is not None:
            self.writer.add_decision(row)
        else:
            self.recorder.record_decisions([row])

    def serve(
        self,
        name: str,
        variables: dict[str, Any],
        *,
        unit_id: str | None = None,
        inline: bool = False,
    ) -> dict[str, Any]:
        """Pick a version (an arm when an experiment runs), render it, record the decision
        (`inline`: see `decide`)."""
        decision = self.decide(name, variables, unit_id=unit_id, inline=inline)
        self.record(decision)
        return decision.payload()

    def serve_deferred(self, deferred: RenderDeferred) -> dict[str, Any]:
        """Finish a serve whose inline render was deferred, and record it."""
        decision = self.finish(deferred)
        self.record(decision)
        return decision.payload()

    def _first_epoch(self, exp: LiveExperiment, unit_id: str) -> int | None:
        """The epoch of a unit's first exposure (None for a unit never seen): this replica's
        memory, else the units table (one primary-key read per unit and replica)."""
        key = (exp.id, unit_id)
        first = self._units.get(key)
        if first is not None:
            return first
        try:
            with self.ctx.tx() as s:
                first = s.scalar(
                    select(UnitRow.first_epoch).where(
                        UnitRow.experiment_id == exp.id, UnitRow.unit_id == unit_id
                    )
                )
        except SQLAlchemyError:
            # Unreachable database: the unit is served as new; once its stored row is readable
            # again every later serve follows that row.
            return None
        if first is not None:
            self._remember(key, first)
        return first

    def _remember(self, key: tuple[int, str], first_epoch: int) -> None:
        if len(self._units) >= UNIT_CACHE_SIZE:
            self._units.clear()  # a miss only costs one read, so a crude bound is enough
        self._units[key] = first_epoch

    def render_production(
        self, name: str, variables: dict[str, Any], *, inline: bool = False
    ) -> dict[str, Any] | None:
        """Render the cached production version (no database), or None if there is none;
        `inline=True` raises RenderTooSlow past the inline budget (render it again off the loop)."""
        self._fresh()
        v = self.live.prompt(name).production
        if v is None:
            return None
        return self.ctx.renderer.render(
            v.content, variables, prompt=name, version=v.number, variant=v.variant, inline=inline
        ).payload()

    def prepare_feedback(self, decision_id: Any, reward: Any, metric: str | None = None) -> FeedbackItem:
        """Validate a feedback (unknown id, unknown metric, bad reward) without touching the
        database; `accepted_metrics` says which metrics a decision takes."""
        if not isinstance(decision_id, str) or not decision_id:
            raise InvalidInput("decision_id must be a non-empty string", field="decision_id")
        check_text(decision_id, field="decision_id")
        if metric is not None:
            problem = metric_name_problem(metric)  # the name rule also excludes NUL and the like
            if problem:
                raise InvalidInput(f"metric {problem}", field="metric")
        token = self.codec.verify(decision_id)
        if token is None:
            raise DecisionNotFound(decision_id)
        info = self.live.experiment_info(token.experiment_id) if token.experiment_id is not None else None
        if token.experiment_id is not None and info is None:
            raise DecisionNotFound(decision_id)
        if token.decided_at <= self.live.retention_cutoff and not self._stored(decision_id):
            # Removed by `promptops gc`: its feedback was already counted or can no longer be.
            raise DecisionNotFound(decision_id)
        metric = metric or (info.metric if info else DEFAULT_METRIC)
        accepted = accepted_metrics(info)
        if metric not in accepted:
            raise UnknownMetric(metric, accepted)
        primary = info.metric if info is not None else DEFAULT_METRIC
        if metric == primary:
            value = check_reward(reward, binary=info is not None and info.reward == RewardKind.BINARY)
        else:
            value = check_reward(reward, binary=metric in BINARY_METRICS, bounded=False)
        counts = info.id if info is not None and metric == info.metric else None
        return FeedbackItem(
            decision_id=decision_id,
            token=token,
            metric=metric,
            reward=value,
            received_at=self.ctx.now(),
            counts_for=counts,
        )

    def _stored(self, decision_id: str) -> bool:
        with self.ctx.tx() as s:
            return s.get(DecisionRow, decision_id) is not None

    def feedback(self, decision_id: Any, reward: Any, metric: str | None = None) -> str:
        """Record a reward for a decision; "recorded", or "duplicate" for a repeat."""
        self._fresh()
        item = self.prepare_feedback(decision_id, reward, metric)
        return self.recorder.record_feedback([item])[0]


def accepted_metrics(info: ExperimentInfo | None) -> tuple[str, ...]:
    """The metrics feedback on a decision may name: its experiment's, or `PRODUCTION_METRICS`
    for a decision served outside any experiment."""
    return info.metrics if info is not None else PRODUCTION_METRICS


def check_reward(reward: Any, *, binary: bool, bounded: bool = True) -> float:
    """A reward as a float, or InvalidInput: 0 or 1 for binary metrics, else within [0, 1] when
    `bounded` (a primary metric) and any finite number otherwise."""
    if isinstance(reward, bool):
        reward = float(reward)
    if not isinstance(reward, int | float) or not math.isfinite(reward):
        raise InvalidInput("reward must be a finite number", field="reward")
    value = float(reward)
    if binary and value not in (0.0, 1.0):
        raise InvalidInput("reward must be 0 or 1 for a binary metric", field="reward")
    if bounded and not 0.0 <= value <= 1.0:
        raise InvalidInput("reward must be within [0, 1]", field="reward")
    return value


def check_text(value: Any, *, field: str) -> None:
    """InvalidInput if any string in `value` (nested keys and items included) holds a NUL or a
    lone surrogate: the database refuses such text, and one such row must not reach a batch."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            problem = text_problem(v)
            if problem:
                raise InvalidInput(f"{field} {problem}", field=field)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
