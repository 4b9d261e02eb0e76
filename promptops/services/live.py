"""The live cache: what serving reads on the hot path, loaded from the database.

`LiveState` keeps every prompt's production version and its running experiment (arms, the current
epoch's weights and those of earlier epochs) in memory, rebuilt only when the database's change
counter moves; serving picks arms from it without touching the database or running statistics.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from promptops.db.models import ArmRow, EpochRow, ExperimentRow, LabelRow, PromptRow, VersionRow
from promptops.db.queries import RETENTION_CUTOFF, get_meta, read_change_seq
from promptops.domain import (
    BUILTIN_METRICS,
    LIVE_STATUSES,
    PRODUCTION,
    ExperimentStatus,
    PromptContent,
    parse_policy,
)
from promptops.errors import PromptNotFound
from promptops.rendering import PreparedContent
from promptops.services.context import Context


@dataclass(frozen=True)
class LiveVersion:
    """A version ready to render."""

    id: int
    number: int
    variant: str
    content: PromptContent
    prepared: PreparedContent | None = None  # the content compiled once (`Renderer.prepare`)

    @property
    def may_loop(self) -> bool:
        """Whether its render can repeat work (`PreparedContent.may_loop`): the server renders
        such a version off its event loop once the inline budget runs out."""
        return self.prepared is not None and self.prepared.may_loop


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
class ExperimentInfo:
    """The immutable facts about an experiment that feedback validation needs."""

    id: int
    metric: str
    reward: str
    # Every metric its feedback may name: the primary one first, then the built-ins (secondary
    # and guardrail metrics join here when experiments declare them).
    metrics: tuple[str, ...] = ()
    window: float = math.inf  # the attribution window in seconds: primary feedback after it is late

    @classmethod
    def of(cls, row: ExperimentRow) -> ExperimentInfo:
        """The facts of an experiment's row."""
        window = parse_policy(row.policy or {}).attribution_window_hours * 3600
        return cls(row.id, row.metric, row.reward, experiment_metrics(row), window)


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
                    v.id, v.number, v.variant, content, self.ctx.renderer.prepare(content)
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
