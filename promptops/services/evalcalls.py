"""The calls of an eval run: a version's rendered prompt or a judge's rubric sent to a provider.

An eval run depends only on two coroutines, `complete(version, variables, *, cache_slot)` for the
version under test and `judge(messages, provider, model)` for `judge` assertions, so the runner does
not care where an answer comes from. `ProviderCalls` makes both over the provider layer (retries
live there), at most each provider's `max_concurrency` at once, with a response cache in front:
the key is the provider, the exact upstream request and the cache slot, so the repetitions of a
case (slots 0, 1, ...) are distinct samples and a second run of the same eval makes no upstream
call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from promptops.assertions import Output
from promptops.domain import PromptVersion
from promptops.errors import ConfigError, UpstreamError
from promptops.providers import ChatRequest, Providers, build_chat_request
from promptops.rendering import Renderer


class CompleteVersion(Protocol):
    """Calls a version with a case's variables; raises a PromptOpsError when the call fails."""

    def __call__(
        self, version: PromptVersion, variables: Mapping[str, Any], *, cache_slot: int
    ) -> Awaitable[Output]: ...


Judge = Callable[[list[dict[str, str]], str, str], Awaitable[str]]
"""The judge's call: (messages, provider, model) -> the verdict's text."""


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


class AnswerCache(Protocol):
    """Where answers are kept between calls (and runs): keyed by `cache_key`."""

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under the key, or None."""
        ...

    async def put(self, key: str, answer: CachedAnswer) -> None:
        """Store an answer under the key."""
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


def cache_key(request: ChatRequest, slot: int) -> str:
    """The cache key of a request in a slot: the provider, the canonical body and the slot."""
    digest = hashlib.sha256()
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
        rendered = self.renderer.render(version.content, variables, prompt=version.prompt,
                                        version=version.number, variant=version.variant)
        if rendered.messages is not None:
            messages: list[dict[str, str]] = [{"role": m.role, "content": m.content}
                                              for m in rendered.messages]
        else:
            messages = [{"role": "user", "content": rendered.text or ""}]
        try:
            return build_chat_request(messages, rendered.model)
        except ValueError as exc:
            raise ConfigError(f"{version.prompt} v{version.number}: {exc}") from None

    def check_provider(self, name: str | None) -> None:
        """Raise ProviderNotConfigured (or ConfigError) unless the provider can be called."""
        self.providers.get(name).config.api_key()

    async def complete(
        self, version: PromptVersion, variables: Mapping[str, Any], *, cache_slot: int
    ) -> Output:
        """Call a version; a cached answer of the same request and slot is reused."""
        request = self.request_for(version, variables)
        return await self._call(request, cache_slot)

    async def judge(self, messages: list[dict[str, str]], provider: str, model: str) -> str:
        """The judge's answer to its rubric prompt (cached like any call)."""
        request = build_chat_request(messages, {"provider": provider, "name": model, "temperature": 0})
        return (await self._call(request, 0)).text

    async def _call(self, request: ChatRequest, slot: int) -> Output:
        key = cache_key(request, slot) if self.cache is not None else ""
        if self.cache is not None and self.read_cache:
            hit = await self.cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return Output(hit.text, hit.cost_usd, hit.latency_ms)
        self.upstream_calls += 1
        async with self._slot(request.provider):
            result = await self.providers.chat(request)
        text = result.content
        if text is None:
            raise UpstreamError(f"provider {result.provider!r}, model {result.model!r}: the answer has "
                                "no text content", provider=result.provider, model=result.model)
        if self.cache is not None:
            usage = result.usage
            await self.cache.put(key, CachedAnswer(
                text, result.cost_usd, result.latency_ms, result.provider, result.model,
                usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None))
        return Output(text, result.cost_usd, result.latency_ms)
