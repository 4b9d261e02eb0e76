"""The gateway: serve's pick and render, then the response cache or the provider, then the record.

    completion = await gateway.complete(request)        # a Completion, or a PromptOpsError
    stream = await gateway.open_stream(request)          # errors before the first byte raise here
    async for chunk in stream: ...                       # OpenAI SSE bytes, `id` = the decision id
    await stream.aclose()                                # a caller that left: upstream cancelled

Every call made after a decision is recorded with it, failed or not (status, tokens, cost, unit
prices, latency, time to first token, cache result), through the batched writer; the variables
and output are stored unless `store_io` is off. A cached answer is still a decision of its arm.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import select

from promptops.config import Settings
from promptops.db.models import LabelRow, PromptRow, VersionRow
from promptops.domain import PromptContent, Rendered
from promptops.errors import (
    LabelNotFound,
    PromptNotFound,
    PromptOpsError,
    ProviderNotConfigured,
    UpstreamError,
    VersionNotFound,
)
from promptops.providers import (
    CallResult,
    CallStatus,
    ChatRequest,
    Providers,
    Usage,
    build_chat_request,
    load_providers_config,
)
from promptops.providers.config import DEFAULT_WARM_ON_PROMOTE
from promptops.services.cache import CacheEntry, CachePolicy, ResponseCache, cache_key
from promptops.services.calls import CacheResult, CallRecorder
from promptops.services.completions import (
    Completion,
    CompletionRequest,
    check_cache,
    check_messages,
    check_openai_fields,
    entry_usage,
)
from promptops.services.completionstream import CompletionStream
from promptops.services.live import LiveVersion
from promptops.services.serving import Choice, Decision, RenderDeferred, Serving

log = logging.getLogger("promptops.gateway")
KEY_MEMO_SIZE = 1024
"""How many cache keys of short renderings a gateway remembers before it starts over."""
KEY_MEMO_TEXT = 2048
"""Renderings of this many characters or more are hashed every time (bounds the memo's memory)."""


InputMemo = tuple[int, tuple[tuple[str, str], ...]]
"""A version id and a request's variables (all strings), in the caller's order."""


class Gateway:
    """Calls models through promptops: decisions, cache, providers and the call record."""

    def __init__(
        self,
        serving: Serving,
        providers: Providers,
        cache: ResponseCache,
        *,
        store_io: bool = True,
        on_call: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.serving = serving
        self.providers = providers
        self.cache = cache
        self.store_io = store_io
        self.on_call = on_call  # the server's metrics
        self.calls = CallRecorder(serving.ctx)
        self.warm_on_promote = 0
        self._pins: dict[tuple[str, int | None, str | None], tuple[int, LiveVersion]] = {}
        self._policies: dict[int, CachePolicy] = {}
        self._keys: dict[tuple[int, tuple[tuple[str, str], ...] | str], str] = {}
        self._inputs: dict[InputMemo, tuple[Rendered, str]] = {}
        self._models: dict[int, dict[str, Any]] = {}  # per version: the settings `_inputs` share

    @classmethod
    def create(
        cls,
        serving: Serving,
        settings: Settings,
        *,
        on_call: Callable[[dict[str, Any]], None] | None = None,
        **provider_options: Any,
    ) -> Gateway:
        """The gateway of a process: promptops.yaml's providers and cache settings."""
        config = load_providers_config(settings.config_path)
        cache = ResponseCache(serving.ctx, max_entries=config.cache.max_entries, redis_url=settings.redis_url)
        gateway = cls(
            serving, Providers(config, **provider_options), cache, store_io=settings.store_io, on_call=on_call
        )
        warm_n = config.cache.warm_on_promote
        gateway.warm_on_promote = DEFAULT_WARM_ON_PROMOTE if warm_n is True else int(warm_n or 0)
        return gateway

    # --- deciding -----------------------------------------------------------------------------

    def _pinned(self, name: str, number: int | None, label: str | None) -> LiveVersion:
        """The version a pinned model names (versions are immutable; labels move, so their
        lookups live only until the registry changes)."""
        seq = self.serving.live.seq
        found = self._pins.get((name, number, label))
        if found is not None and (number is not None or found[0] == seq):
            return found[1]
        with self.serving.ctx.tx() as s:
            prompt = s.scalar(select(PromptRow).where(PromptRow.name == name))
            if prompt is None:
                raise PromptNotFound(name)
            if number is not None:
                row = s.scalar(
                    select(VersionRow).where(VersionRow.prompt_id == prompt.id, VersionRow.number == number)
                )
                if row is None:
                    raise VersionNotFound(name, number)
            else:
                row = s.scalar(
                    select(VersionRow)
                    .join(LabelRow, LabelRow.version_id == VersionRow.id)
                    .where(LabelRow.prompt_id == prompt.id, LabelRow.name == label)
                )
                if row is None:
                    raise LabelNotFound(name, str(label))
            content = PromptContent.from_dict(row.content)
            prepared = self.serving.ctx.renderer.prepare(content)
            version = LiveVersion(row.id, row.number, row.variant, content, prepared)
        self._pins[(name, number, label)] = (seq, version)
        return version

    async def _decide(self, req: CompletionRequest) -> tuple[Decision, InputMemo | None, str | None]:
        """Decide and record the decision. Bad input raises before any decision. Also the
        memo key of the request's inputs (None when they are not remembered, see `_inputs_of`),
        and the cache key remembered for them (None when none is): for inputs seen before, the
        rendering is the one kept then, not made again."""
        # Checked again for callers other than the HTTP routes (warming, eval); free when empty.
        if req.cache is not None:
            check_cache(req.cache)
        if req.messages:
            check_messages(req.messages)
        if req.extra:
            check_openai_fields(req.extra)
        pin = (
            self._pinned(req.name, req.version, req.label)
            if req.version is not None or req.label is not None
            else None
        )
        serving = self.serving
        choice = serving.choose(req.name, dict(req.variables), unit_id=req.unit_id, pin=pin)
        inputs = self._inputs_of(req, choice)
        known = self._inputs.get(inputs) if inputs is not None else None
        if known is not None:
            decision = serving.decided(choice, known[0])
        else:
            try:
                decision = serving.render(choice, inline=True)
            except RenderDeferred as slow:  # a template that needs more than the inline budget
                decision = await asyncio.to_thread(serving.finish, slow)
        serving.record(decision)
        return decision, inputs, known[1] if known is not None else None

    @staticmethod
    def _inputs_of(req: CompletionRequest, choice: Choice) -> InputMemo | None:
        """What the rendering and cache key of a request are remembered by: the version and the
        variables, when the version renders by substitution alone (`PreparedContent.pure`), every
        variable is a short string and the caller adds no messages or fields (else None).
        Repeated inputs are what cache hits are made of: this spares a hit the render."""
        if req.messages or req.extra:
            return None
        version = choice.version
        prepared = version.prepared
        if prepared is None or not prepared.pure:
            return None
        items = tuple(choice.variables.items())
        size = 0
        for _, value in items:
            if type(value) is not str:  # 1, 1.0 and True are equal keys but render apart
                return None
            size += len(value)
        if size >= KEY_MEMO_TEXT:
            return None
        return (version.id, items)

    def _build(
        self, req: CompletionRequest, decision: Decision, *, stream: bool
    ) -> tuple[ChatRequest | None, PromptOpsError | None]:
        """The upstream request of a decision, or the error that prevents it (the decision stays
        recorded with the failure)."""
        rendered = decision.rendered
        if rendered.messages is not None:
            messages: list[Any] = [{"role": m.role, "content": m.content} for m in rendered.messages]
        else:
            messages = [{"role": "user", "content": rendered.text}]
        try:
            upstream = build_chat_request(
                [*messages, *req.messages],
                decision.version.content.model,
                extra=req.extra,
                stream=stream,
            )
            self.providers.get(upstream.provider)
        except ValueError as exc:
            return (
                None,
                ProviderNotConfigured(
                    f"prompt {rendered.prompt!r} version {rendered.version}: {exc}", provider=None
                ),
            )
        except ProviderNotConfigured as exc:
            return None, exc
        return upstream, None

    def _upstream(
        self, req: CompletionRequest, decision: Decision, *, stream: bool, start: float | None = None
    ) -> ChatRequest:
        """`_build`'s request, or its error raised: recorded as the decision's failed call when
        `start` is given (the call itself), not for a refresh in the background."""
        upstream, problem = self._build(req, decision, stream=stream)
        if upstream is None:
            if start is not None:
                self._record_failure(decision, None, problem, start, stream=stream)
            raise problem  # type: ignore[misc]
        return upstream

    async def _prepare(
        self, req: CompletionRequest, start: float, *, stream: bool
    ) -> tuple[Decision, ChatRequest | None, str, CacheResult, CachePolicy]:
        """Decide and record the decision, then the cache key, mode and policy. The upstream
        request is built only when the key is not remembered (a remembered key means it was
        built for this version and rendering before, so it would be built again): a cache hit
        then never builds it. A request that cannot be built is recorded as a failure and raises."""
        decision, inputs, key = await self._decide(req)
        if key is not None:
            mode, policy = self._mode(req, decision)
            return decision, None, key, mode, policy
        memo = self._memo(req, decision)
        key = self._keys.get(memo) if memo is not None else None
        if key is not None:
            self._remember(inputs, decision, key)
            mode, policy = self._mode(req, decision)
            return decision, None, key, mode, policy
        upstream, problem = self._build(req, decision, stream=stream)
        if problem is not None or upstream is None:
            self._record_failure(decision, upstream, problem, start, stream=stream)
            raise problem  # type: ignore[misc]
        mode, policy = self._mode(req, decision)
        key = cache_key(self.providers.get(upstream.provider).name, upstream.body)
        if memo is not None:
            if len(self._keys) >= KEY_MEMO_SIZE:
                self._keys.clear()  # a miss costs one hash: a crude bound is enough
            self._keys[memo] = key
            self._remember(inputs, decision, key)
        return decision, upstream, key, mode, policy

    def _remember(self, inputs: InputMemo | None, decision: Decision, key: str) -> None:
        """Keep the rendering and cache key of a request's inputs (short renderings only: the
        cache-key memo took them, so the memo's memory stays bounded). The renderings kept of a
        version share one copy of its model settings (each render makes its own, a deep one when
        they nest, as a tools list does), or the memo would hold as many copies as inputs."""
        if inputs is None:
            return
        if len(self._inputs) >= KEY_MEMO_SIZE:
            self._inputs.clear()
        rendered = decision.rendered
        model = self._models.setdefault(inputs[0], rendered.model)
        if model is not rendered.model:
            rendered = dataclasses.replace(rendered, model=model)
        self._inputs[inputs] = (rendered, key)

    def _mode(self, req: CompletionRequest, decision: Decision) -> tuple[CacheResult, CachePolicy]:
        version = decision.version
        policy = self._policies.get(version.id)
        if policy is None:  # versions are immutable: their policy is worked out once
            policy = self._policies[version.id] = CachePolicy.of(version.content.cache, version.content.model)
        if not policy.enabled or req.cache == "bypass":
            return CacheResult.BYPASS, policy
        if req.cache == "refresh":
            return CacheResult.REFRESH, policy
        return CacheResult.MISS, policy

    async def _lookup(self, key: str, policy: CachePolicy, refresh: Callable[[], Any]) -> CacheEntry | None:
        """A servable entry (fresh, or stale while one background call refreshes it)."""
        entry = self.cache.get_local(key)
        if entry is None:
            entry = await self.cache.get(key)
        if entry is not None:
            state = policy.state(self.serving.ctx.now() - entry.created_at)
            if state == "stale":
                self.cache.refresh_in_background(key, refresh)
            elif state == "expired":
                entry = None
        if entry is None:
            flight = self.cache.in_flight(key)
            if flight is not None:
                entry = await asyncio.shield(flight)
        if entry is None:
            self.cache.misses += 1
        else:
            self.cache.hits += 1
        return entry

    def _memo(
        self, req: CompletionRequest, decision: Decision
    ) -> tuple[int, tuple[tuple[str, str], ...] | str] | None:
        """What a remembered cache key is found by: for short renderings without caller messages
        or fields, the upstream body (and so its key) is a function of the version (immutable, as
        are the process's providers) and the rendered text; None when it is not."""
        if req.messages or req.extra:
            return None
        rendered = decision.rendered
        text: tuple[tuple[str, str], ...] | str
        if rendered.messages is not None:
            text = tuple((m.role, m.content) for m in rendered.messages)
            size = sum(len(c) if type(c) is str else KEY_MEMO_TEXT for _, c in text)
        elif isinstance(rendered.text, str):
            text = rendered.text
            size = len(text)
        else:
            return None
        if size >= KEY_MEMO_TEXT:
            return None
        return (decision.version.id, text)

    def cache_entry(self, result: CallResult, decision: Decision) -> CacheEntry | None:
        """The cache entry of a successful call (None for a failed one)."""
        if result.status is not CallStatus.OK or result.message is None:
            return None
        usage = result.usage
        return CacheEntry(
            provider=result.provider,
            model=result.model,
            message=dict(result.message),
            finish_reason=result.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            created_at=self.serving.ctx.now(),
            prompt=decision.rendered.prompt,
        )

    # --- non-stream ---------------------------------------------------------------------------

    async def complete(
        self, req: CompletionRequest, *, after: list[Callable[[], None]] | None = None
    ) -> Completion:
        """Call the model for a prompt (or answer from the cache); errors raise after recording.

        With `after`, the record of a call that succeeded (a hit, or the provider's answer) is
        appended to it instead of written at once, for the caller to run once the answer is on
        its way: the row is the same (its latency taken here), only the caller's answer no longer
        waits for it. The caller must run `after`, whatever happens to the answer."""
        start = time.perf_counter()
        decision, upstream, key, mode, policy = await self._prepare(req, start, stream=False)

        async def call() -> CacheEntry | None:
            plain = upstream or self._upstream(req, decision, stream=False)
            return self.cache_entry(await self.providers.chat(plain), decision)

        if mode is CacheResult.MISS:
            entry = await self._lookup(key, policy, call)
            if entry is not None:
                elapsed = _ms(start)
                completion = Completion(
                    decision,
                    entry.provider,
                    entry.model,
                    entry.message,
                    entry.finish_reason,
                    entry_usage(entry),
                    0.0,
                    elapsed,
                    CacheResult.HIT,
                )
                self._record_after(after, decision, upstream, key, start, elapsed, hit=entry)
                return completion
        if upstream is None:
            upstream = self._upstream(req, decision, stream=False, start=start)
        flight = self.cache.lead(key) if mode is CacheResult.MISS else None
        try:
            result = await self.providers.chat(upstream)
        except UpstreamError as exc:
            if flight is not None:
                flight.done(None)
            self.record_call(decision, upstream, key, start, result=exc.result, mode=mode, stream=False)
            raise
        except ProviderNotConfigured as exc:  # its key is read now: an environment variable unset
            if flight is not None:
                flight.done(None)
            self._record_failure(decision, upstream, exc, start, stream=False)
            raise
        except BaseException:
            if flight is not None:
                flight.done(None)
            raise
        entry = self.cache_entry(result, decision)
        if flight is not None:
            flight.done(entry)
        if entry is not None and mode is not CacheResult.BYPASS:
            self.cache.put_soon(key, entry)
        elapsed = _ms(start)
        self._record_after(after, decision, upstream, key, start, elapsed, result=result, mode=mode)
        return Completion(
            decision,
            result.provider,
            result.model,
            result.message or {},
            result.finish_reason,
            result.usage,
            result.cost_usd,
            elapsed,
            mode,
            response=result.response,
        )

    def _record_after(
        self,
        after: list[Callable[[], None]] | None,
        decision: Decision,
        upstream: ChatRequest | None,
        key: str,
        start: float,
        elapsed: float,
        **outcome: Any,
    ) -> None:
        """`record_call` of a non-stream call now, or appended to `after` (see `complete`)."""
        record = partial(
            self.record_call, decision, upstream, key, start, stream=False, elapsed=elapsed, **outcome
        )
        if after is None:
            record()
        else:
            after.append(record)

    # --- streams ------------------------------------------------------------------------------

    async def open_stream(self, req: CompletionRequest) -> CompletionStream:
        """Start a streaming call: the cache answers, or the provider's stream is open (its
        refusal raises here, before any byte is sent)."""
        start = time.perf_counter()
        decision, upstream, key, mode, policy = await self._prepare(req, start, stream=True)

        async def call() -> CacheEntry | None:
            streamed = upstream or self._upstream(req, decision, stream=True)
            plain = ChatRequest(
                streamed.provider,
                {k: v for k, v in streamed.body.items() if k not in ("stream", "stream_options")},
            )
            return self.cache_entry(await self.providers.chat(plain), decision)

        if mode is CacheResult.MISS:
            entry = await self._lookup(key, policy, call)
            if entry is not None:
                return CompletionStream(self, req, decision, upstream, key, start, CacheResult.HIT, hit=entry)
        if upstream is None:
            upstream = self._upstream(req, decision, stream=True, start=start)
        flight = self.cache.lead(key) if mode is CacheResult.MISS else None
        chat = self.providers.stream(upstream)
        try:
            await chat.open()
        except UpstreamError as exc:
            if flight is not None:
                flight.done(None)
            self.record_call(decision, upstream, key, start, result=exc.result, mode=mode, stream=True)
            raise
        except ProviderNotConfigured as exc:  # its key is read now: an environment variable unset
            if flight is not None:
                flight.done(None)
            await chat.aclose()
            self._record_failure(decision, upstream, exc, start, stream=True)
            raise
        except BaseException:
            if flight is not None:
                flight.done(None)
            await chat.aclose()
            raise
        return CompletionStream(self, req, decision, upstream, key, start, mode, chat=chat, flight=flight)

    # --- the record ---------------------------------------------------------------------------

    def _record_failure(
        self,
        decision: Decision,
        upstream: ChatRequest | None,
        problem: PromptOpsError | None,
        start: float,
        *,
        stream: bool,
    ) -> None:
        provider = getattr(problem, "provider", None) or (upstream.provider if upstream else None)
        self._write(
            decision,
            status="error",
            provider=provider or "",
            model=str((decision.version.content.model or {}).get("name") or ""),
            cache=CacheResult.BYPASS,
            latency_ms=_ms(start),
            stream=stream,
            error=str(problem)[:500] if problem else None,
            http_status=None,
        )

    def record_call(
        self,
        decision: Decision,
        upstream: ChatRequest | None,
        key: str,
        start: float,
        *,
        stream: bool,
        result: CallResult | None = None,
        mode: CacheResult | None = None,
        hit: CacheEntry | None = None,
        elapsed: float | None = None,
    ) -> None:
        """Record the call of a decision: a cache hit, or the provider's result in `mode`
        (`upstream`, None for a hit answered without building it, is not part of the record);
        its latency `elapsed` ms, else the time since `start`."""
        if elapsed is None:
            elapsed = _ms(start)
        if hit is not None:
            self._write(
                decision,
                status="ok",
                provider=hit.provider,
                model=hit.model,
                cache=CacheResult.HIT,
                latency_ms=elapsed,
                ttft_ms=elapsed,
                usage=entry_usage(hit),
                cost_usd=0.0,
                stream=stream,
                request_key=key,
                output=dict(hit.message),
                http_status=None,
            )
            return
        assert result is not None and mode is not None
        price = result.price
        self._write(
            decision,
            status=str(result.status),
            provider=result.provider,
            model=result.model,
            cache=mode,
            latency_ms=elapsed,
            ttft_ms=result.ttft_ms,
            usage=result.usage,
            cost_usd=result.cost_usd,
            stream=stream,
            input_per_mtok=price.input_per_mtok if price else None,
            output_per_mtok=price.output_per_mtok if price else None,
            error=result.error,
            request_key=key,
            http_status=result.http_status,
            output=dict(result.message) if result.message is not None else None,
        )

    def _write(
        self,
        decision: Decision,
        *,
        status: str,
        provider: str,
        model: str,
        cache: CacheResult,
        latency_ms: float,
        stream: bool,
        http_status: int | None,
        ttft_ms: float | None = None,
        usage: Usage | None = None,
        cost_usd: float | None = None,
        input_per_mtok: float | None = None,
        output_per_mtok: float | None = None,
        error: str | None = None,
        request_key: str | None = None,
        output: dict[str, Any] | None = None,
    ) -> None:
        t = decision.token
        row = {
            "decision_id": decision.id,
            "prompt_id": t.prompt_id,
            "version_id": t.version_id,
            "experiment_id": t.experiment_id,
            "arm": t.arm,
            "epoch": t.epoch,
            "unit_id": decision.unit_id,
            "created_at": t.decided_at,
            "status": status,
            "http_status": http_status,
            "provider": provider[:64],
            "model": model[:256],
            "cache": str(cache),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "tokens_estimated": bool(usage and usage.estimated),
            "cost_usd": cost_usd,
            "input_per_mtok": input_per_mtok,
            "output_per_mtok": output_per_mtok,
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "stream": stream,
            "error": error,
            "request_key": request_key,
            "variables": dict(decision.variables) if self.store_io else None,
            "output": output if self.store_io else None,
        }
        writer = self.serving.writer
        if writer is not None:
            writer.add_call(row)
        else:
            self.calls.record_calls([row])
        if self.on_call is not None:
            self.on_call(row)

    async def aclose(self) -> None:
        """Finish background cache work and close provider connections."""
        await self.cache.aclose()
        await self.providers.aclose()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
