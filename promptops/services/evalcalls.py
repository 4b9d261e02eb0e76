"""The calls of an eval run: a version's rendered prompt or a judge's rubric sent to a provider.

An eval run depends only on two coroutines, `complete(version, variables, *, cache_slot)` for the
version under test and `judge(messages, provider, model, *, max_tokens)` for `judge` assertions,
so the runner does not care where an answer comes from. `ProviderCalls` makes both over the
provider layer (retries live there), at most each provider's `max_concurrency` at once, with a
response cache in front: the key is the provider, the exact upstream request and the cache slot,
so the repetitions of a case (slots 0, 1, ...) are distinct samples and a second run of the same
eval makes no upstream call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from promptops.assertions import Complete, Output
from promptops.domain import PromptVersion
from promptops.errors import ConfigError, PromptOpsError, UpstreamError
from promptops.judging import DEFAULT_MAX_TOKENS, VerdictError, parse_verdict
from promptops.providers import ChatRequest, Providers, build_chat_request
from promptops.rendering import Renderer
from promptops.services.cache import CacheEntry, ResponseCache

PREFETCH_CHUNK = 256
"""How many calls' answers `ProviderCalls.prefetch_ahead` looks up at once, at most."""

PREFETCH_FIRST_CHUNK = 32  # the calls that wait before anything starts; the next chunks double

WRITE_EVERY = 256
"""How many new answers `SharedAnswers` collects before it writes them (in the background)."""


class CompleteVersion(Protocol):
    """Calls a version with a case's variables; raises a PromptOpsError when the call fails."""

    def __call__(
        self, version: PromptVersion, variables: Mapping[str, Any], *, cache_slot: int
    ) -> Awaitable[Output]: ...


Judge = Complete
"""The judge's call: (messages, provider, model, max_tokens=N) -> the verdict's text."""


@dataclass(frozen=True)
class CachedAnswer:
    """What the cache keeps of a successful call: the text, its cost and latency when first made."""

    text: str
    cost_usd: float | None
    latency_ms: float | None
    provider: str = ""
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt: str | None = None  # the prompt the answer is for (None: a judge's verdict)
    finish_reason: str | None = None


class AnswerCache(Protocol):
    """Where answers are kept between calls (and runs): keyed by `cache_key`."""

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under the key, or None."""
        ...

    async def put(self, key: str, answer: CachedAnswer) -> None:
        """Store an answer under the key."""
        ...

    async def prefetch(self, keys: Sequence[str]) -> None:
        """Load the answers of many keys at once, before a run asks for them one by one."""
        ...

    async def flush(self) -> None:
        """Write the answers stored since the last flush where they last."""
        ...


class MemoryAnswers:
    """An in-process answer cache: a dict, shared by the runs of one process."""

    def __init__(self) -> None:
        self.answers: dict[str, CachedAnswer] = {}

    def __len__(self) -> int:
        return len(self.answers)

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under the key, or None."""
        return self.answers.get(key)

    async def put(self, key: str, answer: CachedAnswer) -> None:
        """Store an answer under the key."""
        self.answers[key] = answer

    async def prefetch(self, keys: Sequence[str]) -> None:
        """Nothing to load: every answer is in memory."""

    async def flush(self) -> None:
        """Nothing to write: the answers live in memory only."""


class SharedAnswers:
    """The gateway's response cache (in process, then the database or Redis) as an answer cache.

    Eval answers live under keys of their own (`cache_key`), never the gateway's, so a serve never
    replays an eval's sample; the entry's message carries the original call's cost and latency
    in fields of its own (`_KEPT`), which only evals read.
    """

    def __init__(
        self, cache: ResponseCache, *, clock: Callable[[], float], write_every: int = WRITE_EVERY
    ) -> None:
        self.cache = cache
        self.clock = clock
        self.write_every = write_every
        self._loaded: dict[str, CacheEntry] = {}
        self._known: set[str] = set()  # keys looked up by `prefetch`: absent means a miss
        self._pending: dict[str, CacheEntry] = {}
        self._writes: list[asyncio.Task[None]] = []

    async def prefetch(self, keys: Sequence[str]) -> None:
        """Load the entries of many keys in one query (per call, a lookup costs more than a run's
        own work)."""
        self._loaded.update(await self.cache.get_many(keys))
        self._known.update(keys)

    async def flush(self) -> None:
        """Write the answers not written yet (one transaction), and wait for the writes that
        `put` started; raises what a write raised."""
        pending, self._pending = self._pending, {}
        writes, self._writes = self._writes, []
        if pending:
            writes.append(asyncio.ensure_future(self.cache.put_many(pending)))
        ended = await asyncio.gather(*writes, return_exceptions=True)
        failed = [e for e in ended if isinstance(e, BaseException)]
        if failed:
            raise failed[0]

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under the key, or None."""
        entry = self._loaded.get(key)
        if entry is None and key not in self._known:
            entry = await self.cache.get(key)
        text = entry.message.get("content") if entry is not None else None
        if entry is None or not isinstance(text, str):
            return None
        kept = entry.message.get(_KEPT)
        kept = kept if isinstance(kept, Mapping) else {}
        return CachedAnswer(
            text,
            _number(kept.get("cost_usd")),
            _number(kept.get("latency_ms")),
            entry.provider,
            entry.model,
            entry.prompt_tokens,
            entry.completion_tokens,
            entry.prompt,
            entry.finish_reason,
        )

    async def put(self, key: str, answer: CachedAnswer) -> None:
        """Store an answer under the key (the shared tier is written by `flush`)."""
        message = {
            "role": "assistant",
            "content": answer.text,
            _KEPT: {"cost_usd": answer.cost_usd, "latency_ms": answer.latency_ms},
        }
        entry = CacheEntry(
            provider=answer.provider,
            model=answer.model,
            message=message,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            created_at=self.clock(),
            prompt=answer.prompt,
        )
        self._loaded[key] = self._pending[key] = entry
        if len(self._pending) >= self.write_every:
            # Written while the run goes on (in a worker thread, for the database tier), so the
            # run's end only writes the last answers.
            batch, self._pending = self._pending, {}
            self._writes.append(asyncio.create_task(self.cache.put_many(batch)))


_KEPT = "promptops_eval"


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def cache_key(request: ChatRequest, slot: int) -> str:
    """The cache key of an eval's request in a slot: the provider, the canonical body, the slot."""
    digest = hashlib.sha256(b"eval\0")
    digest.update((request.provider or "").encode())
    digest.update(b"\0")
    digest.update(request.canonical())
    digest.update(b"\0%d" % slot)
    return digest.hexdigest()


class ProviderCalls:
    """`complete` and `judge` over the provider layer, with a response cache (None: no cache)."""

    def __init__(
        self,
        providers: Providers,
        *,
        renderer: Renderer | None = None,
        cache: AnswerCache | None = None,
        read_cache: bool = True,
    ) -> None:
        self.providers = providers
        self.renderer = renderer or Renderer()
        self.cache = cache
        self.read_cache = read_cache
        self.upstream_calls = 0
        self.cache_hits = 0
        self._slots: dict[str, asyncio.Semaphore] = {}
        # Requests rendered by `prefetch`, by (prompt, version, the variables' identity), with
        # their cache keys by slot.
        self._requests: dict[tuple[str, int, int], tuple[Mapping[str, Any], ChatRequest, dict[int, str]]] = {}
        # Calls whose answers `prefetch_ahead` is still loading: the future of their chunk.
        self._loading: dict[tuple[str, int, int, int], tuple[Mapping[str, Any], asyncio.Future[None]]] = {}

    def _slot(self, provider: str | None) -> asyncio.Semaphore:
        # Calls wait here rather than in the provider's own bound, which gives up after the
        # provider's timeout: a long eval queues any number of calls without timing them out.
        config = self.providers.get(provider).config
        slot = self._slots.get(config.name)
        if slot is None:
            slot = self._slots[config.name] = asyncio.Semaphore(config.max_concurrency)
        return slot

    def request_for(self, version: PromptVersion, variables: Mapping[str, Any]) -> ChatRequest:
        """The upstream request of a version rendered with the variables."""
        rendered = self.renderer.render(
            version.content, variables, prompt=version.prompt, version=version.number, variant=version.variant
        )
        if rendered.messages is not None:
            messages: list[dict[str, str]] = [
                {"role": m.role, "content": m.content} for m in rendered.messages
            ]
        else:
            messages = [{"role": "user", "content": rendered.text or ""}]
        try:
            return build_chat_request(messages, rendered.model)
        except ValueError as exc:
            raise ConfigError(f"{version.prompt} v{version.number}: {exc}") from None

    def check_provider(self, name: str | None) -> None:
        """Raise ProviderNotConfigured (or ConfigError) unless the provider can be called."""
        self.providers.get(name).config.api_key()

    def _request(
        self, version: PromptVersion, variables: Mapping[str, Any], slot: int
    ) -> tuple[ChatRequest, str]:
        """The request of a version with the variables, its provider resolved, and its cache key in
        the slot; rendered and keyed once per run (`prefetch` does it before the calls)."""
        memo = self._requests.get((version.prompt, version.number, id(variables)))
        if memo is None or memo[0] is not variables:
            request = self._resolved(self.request_for(version, variables))
            memo = self._requests[version.prompt, version.number, id(variables)] = (variables, request, {})
        keys = memo[2]
        key = keys.get(slot)
        if key is None:
            key = keys[slot] = cache_key(memo[1], slot) if self.cache is not None else ""
        return memo[1], key

    def _resolved(self, request: ChatRequest) -> ChatRequest:
        # Keyed on the provider's resolved name: "the default provider" may change meaning.
        name = self.providers.get(request.provider).name
        return request if request.provider == name else replace(request, provider=name)

    async def prefetch(self, calls: Iterable[tuple[PromptVersion, Mapping[str, Any], int]]) -> None:
        """Render the calls of a run, (version, variables, slot) each, and load their cached
        answers at once."""
        if self.cache is None or not self.read_cache:
            return
        keys = []
        for version, variables, slot in calls:
            try:
                keys.append(self._request(version, variables, slot)[1])
            except PromptOpsError:
                continue  # the call itself reports it, as that case's error
        await self.cache.prefetch(keys)

    def prefetch_ahead(
        self, calls: Iterable[tuple[PromptVersion, Mapping[str, Any], int]], *, chunk: int = PREFETCH_CHUNK
    ) -> asyncio.Task[None]:
        """`prefetch` the calls in the background, chunk after chunk in their order (the first
        chunks small, so the first calls start soon); a call whose chunk is not loaded yet waits
        for it. Rendering and lookups then overlap the calls' own waiting instead of preceding
        them. Await the task after the run: it raises what a chunk's lookup raised."""
        calls = list(calls)
        loop = asyncio.get_running_loop()
        parts: list[tuple[list[tuple[PromptVersion, Mapping[str, Any], int]], asyncio.Future[None]]] = []
        start, size = 0, max(1, min(chunk, PREFETCH_FIRST_CHUNK))
        while start < len(calls) and self.cache is not None and self.read_cache:
            part = calls[start : start + size]
            future: asyncio.Future[None] = loop.create_future()
            for version, variables, slot in part:
                self._loading[version.prompt, version.number, id(variables), slot] = (variables, future)
            parts.append((part, future))
            start, size = start + size, min(chunk, 2 * size)

        async def load() -> None:
            failure: BaseException | None = None
            for part, future in parts:
                try:
                    if failure is None:
                        await self.prefetch(part)
                except BaseException as exc:  # later calls must not wait for chunks never loaded
                    failure = exc
                if failure is None:
                    future.set_result(None)
                else:
                    future.set_exception(failure)
                    future.exception()  # retrieved here: only the calls that wait on it raise it
                for version, variables, slot in part:
                    self._loading.pop((version.prompt, version.number, id(variables), slot), None)
            if failure is not None:
                raise failure

        task = asyncio.create_task(load())
        # A failed lookup reaches the calls that wait on it; the task need not be awaited then.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def flush(self) -> None:
        """Write the answers of the calls made so far to the cache."""
        if self.cache is not None:
            await self.cache.flush()

    async def complete(
        self, version: PromptVersion, variables: Mapping[str, Any], *, cache_slot: int
    ) -> Output:
        """Call a version; a cached answer of the same request and slot is reused."""
        if self._loading:
            waiting = self._loading.get((version.prompt, version.number, id(variables), cache_slot))
            if waiting is not None and waiting[0] is variables:
                await waiting[1]
        request, key = self._request(version, variables, cache_slot)
        return (await self._call(request, key, prompt=version.prompt))[0]

    async def judge(
        self,
        messages: list[dict[str, str]],
        provider: str,
        model: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> str:
        """The judge's answer to its rubric prompt, in at most max_tokens (cached like any call)."""
        settings = {"provider": provider, "name": model, "temperature": 0, "max_tokens": max_tokens}
        request = self._resolved(build_chat_request(messages, settings))
        key = cache_key(request, 0) if self.cache is not None else ""
        output, finish_reason = await self._call(request, key, prompt=None)
        if finish_reason == "length":
            try:
                parse_verdict(output.text)
            except VerdictError:
                raise PromptOpsError(
                    f"the answer reached max_tokens {max_tokens} before its verdict "
                    "(raise the assertion's max_tokens)"
                ) from None
        return output.text

    async def _call(self, request: ChatRequest, key: str, *, prompt: str | None) -> tuple[Output, str | None]:
        """The answer to a request (cached, or from the provider) and why it ended."""
        if self.cache is not None and self.read_cache:
            hit = await self.cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return Output(hit.text, hit.cost_usd, hit.latency_ms), hit.finish_reason
        self.upstream_calls += 1
        async with self._slot(request.provider):
            result = await self.providers.chat(request)
        text = result.content
        if text is None:
            raise UpstreamError(
                f"provider {result.provider!r}, model {result.model!r}: the answer has no text content",
                provider=result.provider,
                model=result.model,
            )
        if self.cache is not None:
            usage = result.usage
            await self.cache.put(
                key,
                CachedAnswer(
                    text,
                    result.cost_usd,
                    result.latency_ms,
                    result.provider,
                    result.model,
                    usage.prompt_tokens if usage else None,
                    usage.completion_tokens if usage else None,
                    prompt,
                    result.finish_reason,
                ),
            )
        return Output(text, result.cost_usd, result.latency_ms), result.finish_reason
