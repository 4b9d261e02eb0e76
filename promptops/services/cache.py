"""The response cache: exact keys, an in-process LRU in front of a shared tier, single flight, SWR.

A key is the SHA-256 of the provider's name and the upstream request in canonical JSON (model,
rendered messages, parameters; never `stream`), so a streamed and a plain call share an entry.
The shared tier is the `response_cache` table, or Redis when a URL is configured; an in-process
LRU answers repeated hits without leaving the process. An entry never expires unless the prompt
sets `ttl_hours`; for `stale_hours` after that it is still served while one background call per
key refreshes it. Concurrent identical misses in one process wait for the first one's call.

Hot-path reads and writes of the database tier run in worker threads (the driver blocks); the
LRU's "last used" times reach the shared tier in batches (`flush_touches`), which is what
`evict` (run by `promptops gc`) orders on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson
from sqlalchemy import Text, cast, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from promptops.db.models import ResponseCacheRow
from promptops.providers.results import Usage
from promptops.providers.wire import without_lone_surrogates
from promptops.services.context import Context

log = logging.getLogger("promptops.cache")

EXACT = "exact"
OFF = "off"
_NOT_KEYED = ("stream", "stream_options")
_LRU_LIMIT = 10_000
_MAX_TOKENS = 2**31 - 1  # the calls table's token columns are 32-bit on PostgreSQL


@dataclass(frozen=True)
class CachePolicy:
    """A version's cache settings: mode, and how long entries stay fresh and then stale."""

    mode: str = OFF
    ttl_seconds: float | None = None
    stale_seconds: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether answers of this version are cached."""
        return self.mode == EXACT

    @classmethod
    def of(cls, cache: Mapping[str, Any] | None, model: Mapping[str, Any]) -> CachePolicy:
        """The policy of a version: its `cache:` settings, else exact when temperature is 0."""
        cache = cache or {}
        mode = cache.get("mode")
        if mode is None:
            temperature = model.get("temperature")
            mode = EXACT if temperature is not None and temperature == 0 else OFF
        ttl = cache.get("ttl_hours")
        return cls(
            mode=EXACT if mode == EXACT else OFF,
            ttl_seconds=None if ttl is None else float(ttl) * 3600.0,
            stale_seconds=float(cache.get("stale_hours") or 0.0) * 3600.0,
        )

    def state(self, age_seconds: float) -> str:
        """ "fresh", "stale" (serve and refresh) or "expired" for an entry of that age."""
        if self.ttl_seconds is None or age_seconds < self.ttl_seconds:
            return "fresh"
        if age_seconds < self.ttl_seconds + self.stale_seconds:
            return "stale"
        return "expired"


def cache_key(provider: str, body: Mapping[str, Any]) -> str:
    """The cache key of an upstream request at a provider."""
    keyed = {k: v for k, v in body.items() if k not in _NOT_KEYED}
    blob = json.dumps(
        [provider, keyed], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """A cached answer: the assistant message, finish reason and token usage of the original call."""

    provider: str
    model: str
    message: Mapping[str, Any]
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    created_at: float
    prompt: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def usage(self) -> Usage | None:
        """The token usage of the call that made the entry (None when it reported none); made
        once per entry, as every hit on it answers with it."""
        if self.prompt_tokens is None:
            return None
        return Usage(self.prompt_tokens, self.completion_tokens or 0)

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "provider": self.provider,
            "model": self.model,
            "message": dict(self.message),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "created_at": self.created_at,
            "prompt": self.prompt,
        }

    @classmethod
    def from_json(cls, data: Any) -> CacheEntry | None:
        """An entry from its stored form; None for one that is not (a shared tier another version
        or a person wrote, a damaged row): a miss, which the next answer overwrites. Lone
        surrogates that entries stored before they were cleaned may hold read as U+FFFD."""
        if not isinstance(data, Mapping):
            return None
        provider, model, message = data.get("provider"), data.get("model"), data.get("message")
        created = data.get("created_at")
        tokens = data.get("prompt_tokens"), data.get("completion_tokens")
        if (
            not isinstance(provider, str)
            or not isinstance(model, str)
            or not isinstance(message, Mapping)
            or not isinstance(message.get("content"), str | None)
            or not isinstance(created, int | float)
            or isinstance(created, bool)
            or not all(t is None or (type(t) is int and 0 <= t <= _MAX_TOKENS) for t in tokens)
            or not isinstance(data.get("finish_reason"), str | None)
            or not isinstance(data.get("prompt"), str | None)
        ):
            return None
        try:
            created = float(created)
        except OverflowError:
            return None
        if not math.isfinite(created):
            return None
        cleaned = without_lone_surrogates(
            [provider, model, dict(message), data.get("finish_reason"), data.get("prompt")]
        )
        try:
            # The message as deep as an answer holds it (`choices[0].message`): one the answer's
            # encoder refuses (nested past its limit, an integer past 64 bits) would fail every hit.
            orjson.dumps({"choices": [{"message": cleaned[2]}]})
        except orjson.JSONEncodeError:
            return None
        return cls(
            provider=cleaned[0],
            model=cleaned[1],
            message=cleaned[2],
            finish_reason=cleaned[3],
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            created_at=created,
            prompt=cleaned[4],
        )


def _loaded(raw: str | bytes | None) -> Any:
    """A stored JSON text parsed (None when there is none or it does not parse): the cache
    parses what it reads itself, so a damaged entry is a miss, not a failed call."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
        return None


def _stored(raw: str | bytes | None) -> CacheEntry | None:
    """The entry of a stored JSON text, or None (see `CacheEntry.from_json`)."""
    data = _loaded(raw)
    return CacheEntry.from_json(data) if data is not None else None


@dataclass(frozen=True)
class CacheStats:
    """What the shared tier holds, per prompt, and this process's hit counts."""

    entries: int
    by_prompt: Mapping[str, int]
    hits: int
    misses: int


_ENTRY_TEXT = cast(ResponseCacheRow.entry, Text)
"""The stored entry as its JSON text (parsed by `_stored`, not by the driver)."""


class ResponseCache:
    """The tiers of the response cache, single flight and background refreshes."""

    def __init__(
        self,
        ctx: Context,
        *,
        max_entries: int,
        redis_url: str | None = None,
        redis_prefix: str = "promptops:",
    ) -> None:
        self.ctx = ctx
        self.max_entries = max_entries
        self.lru_limit = max(1, min(max_entries or _LRU_LIMIT, _LRU_LIMIT))
        self._lru: OrderedDict[str, CacheEntry] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._flights: dict[str, asyncio.Future[CacheEntry | None]] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hits = 0
        self.misses = 0
        self.redis_url = redis_url
        self.prefix = redis_prefix
        self._redis: Any = None
        self._redis_sync: Any = None

    # --- the tiers -----------------------------------------------------------------------------

    def get_local(self, key: str) -> CacheEntry | None:
        """The entry of a key if this process holds it (any age), else None: `get` without its
        slower tiers, and without an await."""
        entry = self._lru.get(key)
        if entry is not None:
            self._lru.move_to_end(key)
            self._touched[key] = self.ctx.now()
        return entry

    async def get(self, key: str) -> CacheEntry | None:
        """The entry of a key from the nearest tier that has it (any age), or None."""
        entry = self._lru.get(key)
        if entry is not None:
            self._lru.move_to_end(key)
        else:
            entry = await (self._redis_get(key) if self.redis_url else asyncio.to_thread(self._db_get, key))
            if entry is not None:
                self._remember(key, entry)
        if entry is not None:
            self._touched[key] = self.ctx.now()
        return entry

    async def put(self, key: str, entry: CacheEntry) -> None:
        """Store an entry in every tier."""
        self._remember(key, entry)
        if self.redis_url:
            await self._redis_put(key, entry)
        else:
            await asyncio.to_thread(self._db_put, key, entry)

    async def get_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        """The entries of many keys at once (one database query for those not in process)."""
        found = {k: self._lru[k] for k in keys if k in self._lru}
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing and self.redis_url:
            for key in missing:
                entry = await self._redis_get(key)
                if entry is not None:
                    found[key] = entry
        elif missing:
            found.update(await asyncio.to_thread(self._db_get_many, missing))
        now = self.ctx.now()
        for key, entry in found.items():
            self._remember(key, entry)
            self._touched[key] = now
        return found

    async def put_many(self, entries: Mapping[str, CacheEntry]) -> None:
        """Store many entries (in one database transaction)."""
        for key, entry in entries.items():
            self._remember(key, entry)
        if self.redis_url:
            for key, entry in entries.items():
                await self._redis_put(key, entry)
        elif entries:
            await asyncio.to_thread(self._db_put_many, dict(entries))

    def put_soon(self, key: str, entry: CacheEntry) -> None:
        """Store an entry: at once in process, in the shared tier in the background."""
        self._remember(key, entry)
        self.spawn(self._put_quietly(key, entry))

    async def _put_quietly(self, key: str, entry: CacheEntry) -> None:
        try:
            await self.put(key, entry)
        except Exception as exc:  # the answer went out; a cache write failure must not surface
            log.warning("could not store a cache entry: %s", type(exc).__name__)

    def _remember(self, key: str, entry: CacheEntry) -> None:
        self._lru[key] = entry
        self._lru.move_to_end(key)
        while len(self._lru) > self.lru_limit:
            self._lru.popitem(last=False)

    def forget_local(self) -> None:
        """Empty the in-process tier (after a clear, or in tests)."""
        self._lru.clear()

    def _db_get(self, key: str) -> CacheEntry | None:
        with self.ctx.tx() as s:
            raw = s.scalar(select(_ENTRY_TEXT).where(ResponseCacheRow.key == key))
        return _stored(raw)

    def _db_get_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        found: dict[str, CacheEntry] = {}
        with self.ctx.tx() as s:
            for start in range(0, len(keys), 500):  # bound the statement's parameters
                rows = s.execute(
                    select(ResponseCacheRow.key, _ENTRY_TEXT).where(
                        ResponseCacheRow.key.in_(keys[start : start + 500])
                    )
                )
                for key, raw in rows:
                    entry = _stored(raw)
                    if entry is not None:
                        found[key] = entry
        return found

    def _db_put(self, key: str, entry: CacheEntry) -> None:
        self._db_put_many({key: entry})

    def _db_put_many(self, entries: Mapping[str, CacheEntry]) -> None:
        now = self.ctx.now()
        rows = [
            {
                "key": key,
                "prompt": entry.prompt,
                "provider": entry.provider,
                "model": entry.model[:256],
                "entry": entry.to_json(),
                "created_at": entry.created_at,
                "used_at": now,
                "hits": 0,
            }
            for key, entry in entries.items()
        ]
        with self.ctx.tx() as s:
            mod: Any = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
            stmt = mod.insert(ResponseCacheRow.__table__)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key"],
                    set_={
                        "entry": stmt.excluded.entry,
                        "created_at": stmt.excluded.created_at,
                        "used_at": stmt.excluded.used_at,
                        "prompt": stmt.excluded.prompt,
                    },
                ),
                rows,
            )

    def _redis_client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(str(self.redis_url))
        return self._redis

    def _redis_sync_client(self) -> Any:
        if self._redis_sync is None:
            import redis

            self._redis_sync = redis.Redis.from_url(str(self.redis_url))
        return self._redis_sync

    async def _redis_get(self, key: str) -> CacheEntry | None:
        return _stored(await self._redis_client().get(self.prefix + "rc:" + key))

    async def _redis_put(self, key: str, entry: CacheEntry) -> None:
        pipe = self._redis_client().pipeline(transaction=False)
        pipe.set(self.prefix + "rc:" + key, json.dumps(entry.to_json()))
        pipe.zadd(self.prefix + "rcu", {key: self.ctx.now()})
        if entry.prompt:
            pipe.sadd(self.prefix + "rcp:" + entry.prompt, key)
        await pipe.execute()

    # --- single flight and refreshes ---------------------------------------------------------------

    def in_flight(self, key: str) -> asyncio.Future[CacheEntry | None] | None:
        """The pending call of another request for this key, if one is under way."""
        return self._flights.get(key)

    def lead(self, key: str) -> Flight:
        """Register this request as the one calling upstream for the key."""
        fut: asyncio.Future[CacheEntry | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = fut
        return Flight(self, key, fut)

    def refresh_in_background(self, key: str, call: Callable[[], Awaitable[CacheEntry | None]]) -> bool:
        """Start one background refresh of a stale key (none if one runs); whether it started."""
        if key in self._refreshing:
            return False
        self._refreshing.add(key)

        async def run() -> None:
            try:
                entry = await call()
                if entry is not None:
                    await self.put(key, entry)
            except Exception as exc:  # the stale answer stays; the next hit tries again
                log.warning("cache refresh failed: %s", type(exc).__name__)
            finally:
                self._refreshing.discard(key)

        self.spawn(run())
        return True

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run a coroutine in the background, holding a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for background writes and refreshes (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Finish background work and close the Redis connections."""
        await self.drain()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._redis_sync is not None:
            self._redis_sync.close()
            self._redis_sync = None

    # --- maintenance (sync: CLI, background loop, gc) ---------------------------------------------

    def flush_touches(self) -> int:
        """Write the in-process "last used" times to the shared tier; how many were written."""
        touched, self._touched = self._touched, {}
        if not touched:
            return 0
        if self.redis_url:
            self._redis_sync_client().zadd(self.prefix + "rcu", touched, xx=True)
            return len(touched)
        table: Any = ResponseCacheRow.__table__
        from sqlalchemy import bindparam

        stmt = (
            update(table)
            .where(table.c.key == bindparam("k"))
            .values(used_at=bindparam("t"), hits=table.c.hits + 1)
        )
        with self.ctx.tx() as s:
            s.connection().execute(stmt, [{"k": k, "t": t} for k, t in sorted(touched.items())])
        return len(touched)

    def stats(self) -> CacheStats:
        """Entries in the shared tier, per prompt."""
        if self.redis_url:
            r = self._redis_sync_client()
            by_prompt = {}
            for name in r.scan_iter(match=self.prefix + "rcp:*"):
                prompt = name.decode()[len(self.prefix) + 4 :]
                by_prompt[prompt] = int(r.scard(name))
            return CacheStats(int(r.zcard(self.prefix + "rcu")), by_prompt, self.hits, self.misses)
        with self.ctx.tx() as s:
            rows = s.execute(
                select(ResponseCacheRow.prompt, func.count()).group_by(ResponseCacheRow.prompt)
            ).all()
        by = {p or "": int(n) for p, n in rows}
        return CacheStats(sum(by.values()), by, self.hits, self.misses)

    def clear(self, prompt: str | None = None) -> int:
        """Remove every entry (or a prompt's); how many were removed."""
        self.forget_local()
        if self.redis_url:
            r = self._redis_sync_client()
            if prompt is None:
                names = list(r.scan_iter(match=self.prefix + "rc*"))
                count = int(r.zcard(self.prefix + "rcu"))
                if names:
                    r.delete(*names)
                return count
            keys = [k.decode() for k in r.smembers(self.prefix + "rcp:" + prompt)]
            removed = 0
            if keys:
                removed = int(r.delete(*[self.prefix + "rc:" + k for k in keys]))
                r.zrem(self.prefix + "rcu", *keys)
            r.delete(self.prefix + "rcp:" + prompt)
            return removed
        with self.ctx.tx() as s:
            stmt = delete(ResponseCacheRow)
            if prompt is not None:
                stmt = stmt.where(ResponseCacheRow.prompt == prompt)
            return int(s.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]

    def evict(self, max_entries: int | None = None) -> int:
        """Remove the least recently used entries beyond `max_entries`; how many were removed."""
        limit = self.max_entries if max_entries is None else max_entries
        self.flush_touches()
        if self.redis_url:
            r = self._redis_sync_client()
            extra = int(r.zcard(self.prefix + "rcu")) - limit
            if extra <= 0:
                return 0
            keys = [k.decode() for k in r.zrange(self.prefix + "rcu", 0, extra - 1)]
            names = [self.prefix + "rc:" + k for k in keys]
            for key, raw in zip(keys, r.mget(names), strict=True):
                data = _loaded(raw)
                prompt = data.get("prompt") if isinstance(data, dict) else None
                if prompt and isinstance(prompt, str):
                    r.srem(self.prefix + "rcp:" + prompt, key)
            r.delete(*names)
            r.zrem(self.prefix + "rcu", *keys)
            for key in keys:
                self._lru.pop(key, None)
            return len(keys)
        with self.ctx.tx() as s:
            total = int(s.scalar(select(func.count()).select_from(ResponseCacheRow)) or 0)
            extra = total - limit
            if extra <= 0:
                return 0
            oldest = (
                select(ResponseCacheRow.key)
                .order_by(ResponseCacheRow.used_at, ResponseCacheRow.key)
                .limit(extra)
            )
            keys = list(s.scalars(oldest))
            s.execute(delete(ResponseCacheRow).where(ResponseCacheRow.key.in_(keys)))
        for key in keys:
            self._lru.pop(key, None)
        return len(keys)


class Flight:
    """This request's upstream call for a key: followers wait for `done`."""

    def __init__(self, cache: ResponseCache, key: str, fut: asyncio.Future[CacheEntry | None]) -> None:
        self.cache = cache
        self.key = key
        self.fut = fut

    def done(self, entry: CacheEntry | None) -> None:
        """Hand the answer (None: the call failed) to the followers and end the flight."""
        if self.cache._flights.get(self.key) is self.fut:
            del self.cache._flights[self.key]
        if not self.fut.done():
            self.fut.set_result(entry)


def random_prefix() -> str:
    """A fresh Redis key prefix (tests and isolated runs)."""
    return f"promptops-{secrets.token_hex(4)}:"


def monotonic_ms(start: float) -> float:
    """Milliseconds since a `time.perf_counter()` reading."""
    return (time.perf_counter() - start) * 1000.0
