"""Serving and feedback: arm choice and rendering over the live cache, and feedback validation.

The hot path reads prompts and the current epoch's weights from `LiveState` (`services/live.py`);
it never runs statistics. Decisions are written by a `Recorder` (`services/recorder.py`), inline or
batched by `BatchWriter` in the server; feedback is always durable before it is acknowledged.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from promptops.db.models import DecisionRow, UnitRow
from promptops.db.queries import set_meta_if_absent
from promptops.domain import (
    BINARY_METRICS,
    BUILTIN_METRICS,
    DEFAULT_METRIC,
    Rendered,
    RewardKind,
    metric_name_problem,
    text_problem,
)
from promptops.errors import DecisionNotFound, InvalidInput, PromptNotFound, UnknownMetric
from promptops.rendering import PreparedContent, RenderTooSlow
from promptops.services.context import Context
from promptops.services.decisions import DecisionToken, TokenCodec
from promptops.services.live import ExperimentInfo, LiveExperiment, LivePrompt, LiveState, LiveVersion
from promptops.services.recorder import NEW_UNIT, DecisionSink, FeedbackItem, Recorder, decision_row
from promptops.services.views import ServeView

PRODUCTION_METRICS: tuple[str, ...] = (DEFAULT_METRIC, *BUILTIN_METRICS)
"""Metrics a decision served outside any experiment accepts: `reward` (within [0, 1]) and the
built-ins; nothing counts them towards a statistic, they are stored for reports."""
UNIT_CACHE_SIZE = 100_000
"""How many (experiment, unit) first epochs a replica remembers before it starts over."""


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

    def view(self) -> ServeView:
        """What a serve answers: the rendering, the decision id and the experiment."""
        return ServeView.of(self.rendered, decision_id=self.id, experiment_id=self.token.experiment_id)


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
        return self.render(self.choose(name, variables, unit_id=unit_id, pin=pin), inline=inline)

    def finish(self, deferred: RenderDeferred) -> Decision:
        """Render a deferred decision with the full budget (off the event loop)."""
        return self._render(deferred.choice, inline=False)

    def render(self, choice: Choice, *, inline: bool = False) -> Decision:
        """The decision of a choice, rendered (`inline`: see `decide`)."""
        try:
            return self._render(choice, inline=inline)
        except RenderTooSlow:
            raise RenderDeferred(choice) from None

    def choose(
        self,
        name: str,
        variables: dict[str, Any],
        *,
        unit_id: str | None = None,
        pin: LiveVersion | None = None,
    ) -> Choice:
        """Pick the version of a decision (an arm when an experiment runs, or `pin`), before it
        is rendered: the first half of `decide`, for a caller that may already know the rendering
        (`decided`)."""
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
        rendered = self._prepared(c.version).render(
            c.variables,
            prompt=c.prompt.name,
            version=c.version.number,
            variant=c.version.variant,
            inline=inline,
        )
        return self.decided(c, rendered)

    def decided(self, c: Choice, rendered: Rendered) -> Decision:
        """The decision of a choice and its rendering. A caller that passes a rendering it kept
        must know it is the one `render` would make: the same version and variables, and a
        version whose rendering depends on nothing else (`PreparedContent.pure`)."""
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
    ) -> ServeView:
        """Pick a version (an arm when an experiment runs), render it, record the decision
        (`inline`: see `decide`)."""
        decision = self.decide(name, variables, unit_id=unit_id, inline=inline)
        self.record(decision)
        return decision.view()

    def serve_deferred(self, deferred: RenderDeferred) -> ServeView:
        """Finish a serve whose inline render was deferred, and record it."""
        decision = self.finish(deferred)
        self.record(decision)
        return decision.view()

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
    ) -> Rendered | None:
        """Render the cached production version (no database), or None if there is none;
        `inline=True` raises RenderTooSlow past the inline budget (render it again off the loop)."""
        self._fresh()
        v = self.live.prompt(name).production
        if v is None:
            return None
        return self._prepared(v).render(
            variables, prompt=name, version=v.number, variant=v.variant, inline=inline
        )

    def _prepared(self, version: LiveVersion) -> PreparedContent:
        return version.prepared or self.ctx.renderer.prepare(version.content)

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
        now = self.ctx.now()
        return FeedbackItem(
            decision_id=decision_id,
            token=token,
            metric=metric,
            reward=value,
            received_at=now,
            counts_for=counts,
            late=info is not None
            and counts is not None
            and token.arm is not None
            and now > token.decided_at + info.window,
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
