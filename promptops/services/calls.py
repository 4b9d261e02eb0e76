"""The call log and its per-arm usage: each gateway call is stored with its decision, and the
arm's running sums (calls, errors, cache hits, cost, latency histogram, tokens) are bumped in the
same transaction, per experiment, arm and epoch. Reading an arm's usage sums a handful of rows,
never the call log. These sums are usage only: the built-in metrics `cost_usd`, `latency_ms` and
`error` that guardrails read come from the call log when each decision matures, capped like
feedback values (`metricsums`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from promptops.db.models import CallRow, CallStatsRow
from promptops.services.context import Context
from promptops.stats import latency

_INSERTS: dict[str, Any] = {}  # the call insert statement per dialect, built once

ERROR_STATUSES = frozenset(("error", "timeout", "rate_limited"))
"""Call statuses that count as `error` = 1 (a cancelled call is not the provider's failure)."""


class CacheResult(StrEnum):
    """How the response cache took part in a call."""

    HIT = "hit"
    MISS = "miss"
    REFRESH = "refresh"
    BYPASS = "bypass"


@dataclass(frozen=True)
class ArmUsage:
    """What an arm's calls cost and how they went; None where the arm made no call."""

    calls: int
    error_rate: float | None
    cache_hit_rate: float | None
    cost_usd_mean: float | None
    cost_usd_total: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON fields of an arm."""
        return dict(self.__dict__)


NO_USAGE = ArmUsage(0, None, None, None, None, None, None, None, None)


class _Sums:
    """The delta of one (experiment, arm, epoch) row within a batch."""

    __slots__ = (
        "calls",
        "errors",
        "hits",
        "cost_n",
        "cost_sum",
        "cost_ss",
        "lat_sum",
        "lat_ss",
        "tokens_n",
        "prompt_sum",
        "completion_sum",
        "latencies",
    )

    def __init__(self) -> None:
        self.calls = self.errors = self.hits = self.cost_n = self.tokens_n = 0
        self.cost_sum = self.cost_ss = self.lat_sum = self.lat_ss = 0.0
        self.prompt_sum = self.completion_sum = 0.0
        self.latencies: list[float] = []

    def add(self, row: dict[str, Any]) -> None:
        self.calls += 1
        self.errors += row["status"] in ERROR_STATUSES
        self.hits += row["cache"] == CacheResult.HIT
        cost = row.get("cost_usd")
        if cost is not None:
            self.cost_n += 1
            self.cost_sum += cost
            self.cost_ss += cost * cost
        ms = float(row["latency_ms"])
        self.lat_sum += ms
        self.lat_ss += ms * ms
        self.latencies.append(ms)
        if row.get("prompt_tokens") is not None:
            self.tokens_n += 1
            self.prompt_sum += row["prompt_tokens"]
            self.completion_sum += row.get("completion_tokens") or 0


class CallRecorder:
    """Stores call rows and bumps their arms' sums; every method is one transaction."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def record_calls(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store calls (a repeat of a decision's call is skipped); the number stored."""
        if not rows:
            return 0
        with self.ctx.tx() as s:
            return self.store_calls(s, rows)

    def store_calls(self, s: Session, rows: Sequence[dict[str, Any]]) -> int:
        """`record_calls` inside the caller's transaction, which has stored their decisions."""
        if not rows:
            return 0
        dialect = s.get_bind().dialect.name
        mod: Any = postgresql if dialect == "postgresql" else sqlite
        stmt = _INSERTS.get(dialect)
        if stmt is None:
            table: Any = CallRow.__table__
            stmt = _INSERTS[dialect] = (
                mod.insert(table).on_conflict_do_nothing().returning(table.c.decision_id)
            )
        by_id = {r["decision_id"]: r for r in rows}
        inserted = s.connection().execute(stmt, [by_id[k] for k in sorted(by_id)]).all()
        sums: dict[tuple[int, int, int, bool], _Sums] = {}
        for (decision_id,) in inserted:
            r = by_id[decision_id]
            if r["experiment_id"] is not None and r["arm"] is not None:
                key = (r["experiment_id"], r["arm"], r["epoch"] or 0, r.get("unit_id") is not None)
                sums.setdefault(key, _Sums()).add(r)
        self._bump(s, mod, sums)
        return len(inserted)

    @staticmethod
    def _bump(s: Session, mod: Any, sums: dict[tuple[int, int, int, bool], _Sums]) -> None:
        if not sums:
            return
        table: Any = CallStatsRow.__table__
        # Sorted keys: replicas bumping the same arms take the row locks in one order.
        keys = sorted(sums)
        s.connection().execute(
            mod.insert(table).on_conflict_do_nothing(),
            [
                {"experiment_id": e, "arm": a, "epoch": p, "with_unit": u, "latency_hist": []}
                for e, a, p, u in keys
            ],
        )
        for exp_id, arm, epoch, with_unit in keys:
            d = sums[(exp_id, arm, epoch, with_unit)]
            where = (
                (table.c.experiment_id == exp_id)
                & (table.c.arm == arm)
                & (table.c.epoch == epoch)
                & (table.c.with_unit == with_unit)
            )
            # The histogram is a JSON list: read it under the row lock, add, write back.
            hist = s.execute(select(table.c.latency_hist).where(where).with_for_update()).scalar()
            s.execute(
                update(table)
                .where(where)
                .values(
                    calls=table.c.calls + d.calls,
                    errors=table.c.errors + d.errors,
                    cache_hits=table.c.cache_hits + d.hits,
                    cost_n=table.c.cost_n + d.cost_n,
                    cost_sum=table.c.cost_sum + d.cost_sum,
                    cost_ss=table.c.cost_ss + d.cost_ss,
                    latency_sum=table.c.latency_sum + d.lat_sum,
                    latency_ss=table.c.latency_ss + d.lat_ss,
                    tokens_n=table.c.tokens_n + d.tokens_n,
                    prompt_tokens_sum=table.c.prompt_tokens_sum + d.prompt_sum,
                    completion_tokens_sum=table.c.completion_tokens_sum + d.completion_sum,
                    latency_hist=latency.add(list(hist or []), latency.histogram(d.latencies)),
                )
            )


def arm_usage(s: Session, experiment_id: int, arms: int) -> list[ArmUsage]:
    """The usage of each arm of an experiment, from the per-epoch sums."""
    rows = s.scalars(select(CallStatsRow).where(CallStatsRow.experiment_id == experiment_id)).all()
    out = []
    for arm in range(arms):
        mine = [r for r in rows if r.arm == arm]
        calls = sum(r.calls for r in mine)
        if calls == 0:
            out.append(NO_USAGE)
            continue
        cost_n = sum(r.cost_n for r in mine)
        cost = sum(r.cost_sum for r in mine)
        tokens_n = sum(r.tokens_n for r in mine)
        hist: list[int] = []
        for r in mine:
            hist = latency.add(hist, r.latency_hist or [])
        out.append(
            ArmUsage(
                calls=calls,
                error_rate=sum(r.errors for r in mine) / calls,
                cache_hit_rate=sum(r.cache_hits for r in mine) / calls,
                cost_usd_mean=cost / cost_n if cost_n else None,
                cost_usd_total=cost if cost_n else None,
                latency_ms_p50=latency.quantile(hist, 0.5),
                latency_ms_p95=latency.quantile(hist, 0.95),
                prompt_tokens_mean=sum(r.prompt_tokens_sum for r in mine) / tokens_n if tokens_n else None,
                completion_tokens_mean=(
                    sum(r.completion_tokens_sum for r in mine) / tokens_n if tokens_n else None
                ),
            )
        )
    return out
