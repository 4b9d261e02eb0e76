"""Cache warming: answers of a version computed ahead of the traffic that will ask for them.

`promptops cache warm` replays a dataset's variables; after a promotion or a rollback, the server
replays a prompt's most frequent recent requests against its new production version
(`cache.warm_on_promote` of them). Each warm call is a recorded decision of that version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from promptops.db.models import CallRow, PromptRow
from promptops.errors import InvalidInput, ProviderNotConfigured, RenderError, UpstreamError
from promptops.services.calls import CacheResult
from promptops.services.completions import CompletionRequest
from promptops.services.context import Context

if TYPE_CHECKING:
    from promptops.services.gateway import Gateway

log = logging.getLogger("promptops.gateway")


@dataclass(frozen=True)
class WarmReport:
    """What a cache warm-up did: calls answered from the cache, made upstream, and failed, with
    each distinct failure's message and how many calls failed so (most frequent first)."""

    hits: int
    misses: int
    errors: int
    failures: tuple[tuple[str, int], ...] = ()


async def warm(
    gateway: Gateway,
    name: str,
    cases: Sequence[Mapping[str, Any]],
    *,
    version: int | None = None,
    label: str | None = None,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
) -> WarmReport:
    """Fill the cache with the answers of a version (production by default) for these variables,
    at most `concurrency` calls at a time; each call is a recorded decision of that version."""
    slots = asyncio.Semaphore(max(1, concurrency))
    counts = {"hits": 0, "misses": 0, "errors": 0}
    failures: dict[str, int] = {}
    pinned = (version, label) if version is not None or label is not None else (None, "production")

    async def one(variables: Mapping[str, Any]) -> None:
        async with slots:
            try:
                out = await gateway.complete(
                    CompletionRequest(name=name, variables=variables, version=pinned[0], label=pinned[1])
                )
            except (UpstreamError, ProviderNotConfigured, InvalidInput, RenderError) as exc:
                failures[exc.message] = failures.get(exc.message, 0) + 1
                counts["errors"] += 1
            else:
                counts["hits" if out.cache is CacheResult.HIT else "misses"] += 1
            if progress is not None:
                progress(1)

    await asyncio.gather(*(one(case) for case in cases))
    await gateway.cache.drain()
    ranked = sorted(failures.items(), key=lambda item: -item[1])  # stable: first seen first on ties
    return WarmReport(**counts, failures=tuple(ranked))


def recent_requests(ctx: Context, name: str, *, limit: int, days: float = 7.0) -> list[dict[str, Any]]:
    """The variables of a prompt's most frequent distinct requests of the last days (calls
    stored with their variables only), most frequent first."""
    since = ctx.now() - days * 86400.0
    with ctx.tx() as s:
        prompt_id = s.scalar(select(PromptRow.id).where(PromptRow.name == name))
        if prompt_id is None:
            return []
        top = s.execute(
            select(CallRow.request_key, func.count().label("n"))
            .where(
                CallRow.prompt_id == prompt_id,
                CallRow.created_at >= since,
                CallRow.request_key.is_not(None),
                CallRow.variables.is_not(None),
            )
            .group_by(CallRow.request_key)
            .order_by(func.count().desc(), CallRow.request_key)
            .limit(limit)
        ).all()
        out = []
        for key, _ in top:
            variables = s.scalar(select(CallRow.variables).where(CallRow.request_key == key).limit(1))
            if isinstance(variables, dict):
                out.append(variables)
        return out


async def warm_production(gateway: Gateway, name: str, version: int) -> WarmReport:
    """Warm a new production version's cache from the prompt's most frequent recent
    requests (`cache.warm_on_promote` of them)."""
    cases = await asyncio.to_thread(recent_requests, gateway.serving.ctx, name, limit=gateway.warm_on_promote)
    report = await warm(gateway, name, cases, version=version)
    log.info(
        "warmed %s v%d after production moved: %d new, %d cached, %d failed",
        name,
        version,
        report.misses,
        report.hits,
        report.errors,
    )
    return report
