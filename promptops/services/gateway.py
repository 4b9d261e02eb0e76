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
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import func, select

from promptops.config import Settings
from promptops.db.models import CallRow, LabelRow, PromptRow, VersionRow
from promptops.domain import PromptContent
from promptops.errors import (
    InvalidInput,
    LabelNotFound,
    ModelNotFound,
    PromptNotFound,
    PromptOpsError,
    ProviderNotConfigured,
    RenderError,
    UpstreamError,
    VersionNotFound,
)
from promptops.promptfiles import ROLES
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
from promptops.services.serving import Decision, LiveVersion, Serving

log = logging.getLogger("promptops.gateway")

MODEL_PREFIX = "promptops/"
_PIN = re.compile(r"^v([0-9]{1,9})$")
CACHE_CHOICES = ("refresh", "bypass")
"""What a caller may ask of the cache: skip the read and rewrite, or neither read nor write."""


@dataclass(frozen=True)
class CompletionRequest:
    """One call through the gateway: which prompt, its variables, the conversation and options."""

    name: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    unit_id: str | None = None
    messages: Sequence[Mapping[str, Any]] = ()
    cache: str | None = None  # None, "refresh" or "bypass"
    version: int | None = None  # pins a version: no experiment routing
    label: str | None = None  # pins the version holding a label
    extra: Mapping[str, Any] = field(default_factory=dict)  # caller's fields for the upstream body
    include_usage: bool = False  # streams: send the final usage chunk


def parse_model(model: Any) -> tuple[str, int | None, str | None]:
    """(prompt name, pinned version, pinned label) of a `promptops/NAME[@vN|@LABEL]` model name."""
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIX) or len(model) > 200:
        raise ModelNotFound(model if isinstance(model, str) else repr(model))
    name, _, pin = model[len(MODEL_PREFIX) :].partition("@")
    if not name or (_ and not pin):
        raise ModelNotFound(model)
    if not pin:
        return name, None, None
    number = _PIN.match(pin)
    return (name, int(number.group(1)), None) if number else (name, None, pin)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The caller's messages as a list of chat messages, or InvalidInput."""
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise InvalidInput("messages must be a list of chat messages", field="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InvalidInput(
                f"messages[{i}] must be an object with a role among {', '.join(ROLES)}", field="messages"
            )
        # Checked here so a malformed message is the caller's 422, not the provider's 502.
        if not isinstance(m.get("content"), str | list | None):
            raise InvalidInput(
                f"messages[{i}].content must be a string, a list of parts or null", field="messages"
            )
        out.append(m)
    return out


@dataclass(frozen=True)
class Completion:
    """The answer of a non-stream call, with its decision and the facts of the call."""

    decision: Decision
    provider: str
    model: str
    message: Mapping[str, Any]
    finish_reason: str | None
    usage: Usage | None
    cost_usd: float | None
    latency_ms: float
    cache: CacheResult
    response: Mapping[str, Any] | None = None  # the upstream body, passed through on a miss

    def payload(self) -> dict[str, Any]:
        """The JSON answer of `POST /v1/prompts/{name}/complete`."""
        r = self.decision.rendered
        content = self.message.get("content")
        return {
            "decision_id": self.decision.id,
            "prompt": r.prompt,
            "version": r.version,
            "variant": r.variant,
            "experiment_id": self.decision.token.experiment_id,
            "model": self.model,
            "output": {"role": self.message.get("role", "assistant"), "content": content},
            "finish_reason": self.finish_reason,
            "usage": self.usage.as_openai() if self.usage else None,
            "cost_usd": self.cost_usd,
            "latency_ms": round(self.latency_ms, 3),
            "cache": str(self.cache),
        }

    def openai(self) -> dict[str, Any]:
        """The OpenAI chat.completion body, its id the decision id."""
        if self.response is not None:
            return {**self.response, "id": self.decision.id}
        body: dict[str, Any] = {
            "id": self.decision.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": dict(self.message), "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            body["usage"] = self.usage.as_openai()
        return body


def _entry_usage(entry: CacheEntry) -> Usage | None:
    if entry.prompt_tokens is None:
        return None
    return Usage(entry.prompt_tokens, entry.completion_tokens or 0)


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

    def recent_requests(self, name: str, *, limit: int, days: float = 7.0) -> list[dict[str, Any]]:
        """The variables of a prompt's most frequent distinct requests of the last days (calls
        stored with their variables only), most frequent first."""
        since = self.serving.ctx.now() - days * 86400.0
        with self.serving.ctx.tx() as s:
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

    async def warm_production(self, name: str, version: int) -> WarmReport:
        """Warm a new production version's cache from the prompt's most frequent recent
        requests (`cache.warm_on_promote` of them)."""
        cases = await asyncio.to_thread(self.recent_requests, name, limit=self.warm_on_promote)
        report = await warm(self, name, cases, version=version)
        log.info(
            "warmed %s v%d after production moved: %d new, %d cached, %d failed",
            name,
            version,
            report.misses,
            report.hits,
            report.errors,
        )
        return report

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
            version = LiveVersion(row.id, row.number, row.variant, PromptContent.from_dict(row.content))
        self._pins[(name, number, label)] = (seq, version)
        return version

    def _prepare(
        self, req: CompletionRequest, *, stream: bool
    ) -> tuple[Decision, ChatRequest | None, PromptOpsError | None]:
        """Decide and record the decision, then build the upstream request (or the error that
        prevents it: the decision stays recorded with the failure)."""
        if req.cache is not None and req.cache not in CACHE_CHOICES:
            raise InvalidInput('cache must be "refresh" or "bypass"', field="cache")
        caller = check_messages(list(req.messages) if req.messages else None)
        pin = (
            self._pinned(req.name, req.version, req.label)
            if req.version is not None or req.label is not None
            else None
        )
        decision = self.serving.decide(req.name, dict(req.variables), unit_id=req.unit_id, pin=pin)
        self.serving.record(decision)
        rendered = decision.rendered
        if rendered.messages is not None:
            messages: list[Any] = [{"role": m.role, "content": m.content} for m in rendered.messages]
        else:
            messages = [{"role": "user", "content": rendered.text}]
        try:
            upstream = build_chat_request(
                messages + caller, decision.version.content.model, extra=req.extra, stream=stream
            )
            self.providers.get(upstream.provider)
        except ValueError as exc:
            return (
                decision,
                None,
                ProviderNotConfigured(
                    f"prompt {rendered.prompt!r} version {rendered.version}: {exc}", provider=None
                ),
            )
        except ProviderNotConfigured as exc:
            return decision, None, exc
        return decision, upstream, None

    def _mode(self, req: CompletionRequest, decision: Decision) -> tuple[CacheResult, CachePolicy]:
        content = decision.version.content
        policy = CachePolicy.of(content.cache, content.model)
        if not policy.enabled or req.cache == "bypass":
            return CacheResult.BYPASS, policy
        if req.cache == "refresh":
            return CacheResult.REFRESH, policy
        return CacheResult.MISS, policy

    async def _lookup(self, key: str, policy: CachePolicy, refresh: Callable[[], Any]) -> CacheEntry | None:
        """A servable entry (fresh, or stale while one background call refreshes it)."""
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

    def _entry(self, result: CallResult, decision: Decision) -> CacheEntry | None:
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

    async def complete(self, req: CompletionRequest) -> Completion:
        """Call the model for a prompt (or answer from the cache); errors raise after recording."""
        start = time.perf_counter()
        decision, upstream, problem = self._prepare(req, stream=False)
        if problem is not None or upstream is None:
            self._record_failure(decision, upstream, problem, start, stream=False)
            raise problem  # type: ignore[misc]
        mode, policy = self._mode(req, decision)
        provider = self.providers.get(upstream.provider)
        key = cache_key(provider.name, upstream.body)

        async def call() -> CacheEntry | None:
            return self._entry(await self.providers.chat(upstream), decision)

        if mode is CacheResult.MISS:
            entry = await self._lookup(key, policy, call)
            if entry is not None:
                completion = Completion(
                    decision,
                    entry.provider,
                    entry.model,
                    entry.message,
                    entry.finish_reason,
                    _entry_usage(entry),
                    0.0,
                    _ms(start),
                    CacheResult.HIT,
                )
                self._record(decision, upstream, key, start, hit=entry, stream=False)
                return completion
        flight = self.cache.lead(key) if mode is CacheResult.MISS else None
        try:
            result = await self.providers.chat(upstream)
        except UpstreamError as exc:
            if flight is not None:
                flight.done(None)
            self._record(decision, upstream, key, start, result=exc.result, mode=mode, stream=False)
            raise
        except BaseException:
            if flight is not None:
                flight.done(None)
            raise
        entry = self._entry(result, decision)
        if flight is not None:
            flight.done(entry)
        if entry is not None and mode is not CacheResult.BYPASS:
            self.cache.put_soon(key, entry)
        self._record(decision, upstream, key, start, result=result, mode=mode, stream=False)
        return Completion(
            decision,
            result.provider,
            result.model,
            result.message or {},
            result.finish_reason,
            result.usage,
            result.cost_usd,
            _ms(start),
            mode,
            response=result.response,
        )

    # --- streams ------------------------------------------------------------------------------

    async def open_stream(self, req: CompletionRequest) -> CompletionStream:
        """Start a streaming call: the cache answers, or the provider's stream is open (its
        refusal raises here, before any byte is sent)."""
        start = time.perf_counter()
        decision, upstream, problem = self._prepare(req, stream=True)
        if problem is not None or upstream is None:
            self._record_failure(decision, upstream, problem, start, stream=True)
            raise problem  # type: ignore[misc]
        mode, policy = self._mode(req, decision)
        provider = self.providers.get(upstream.provider)
        key = cache_key(provider.name, upstream.body)

        async def call() -> CacheEntry | None:
            plain = ChatRequest(
                upstream.provider,
                {k: v for k, v in upstream.body.items() if k not in ("stream", "stream_options")},
            )
            return self._entry(await self.providers.chat(plain), decision)

        if mode is CacheResult.MISS:
            entry = await self._lookup(key, policy, call)
            if entry is not None:
                return CompletionStream(self, req, decision, upstream, key, start, CacheResult.HIT, hit=entry)
        flight = self.cache.lead(key) if mode is CacheResult.MISS else None
        chat = self.providers.stream(upstream)
        try:
            await chat.open()
        except UpstreamError as exc:
            if flight is not None:
                flight.done(None)
            self._record(decision, upstream, key, start, result=exc.result, mode=mode, stream=True)
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

    def _record(
        self,
        decision: Decision,
        upstream: ChatRequest,
        key: str,
        start: float,
        *,
        stream: bool,
        result: CallResult | None = None,
        mode: CacheResult | None = None,
        hit: CacheEntry | None = None,
    ) -> None:
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
                usage=_entry_usage(hit),
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


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class CompletionStream:
    """A streaming completion on its way to the caller: OpenAI SSE bytes with `id` = decision id."""

    def __init__(
        self,
        gateway: Gateway,
        req: CompletionRequest,
        decision: Decision,
        upstream: ChatRequest,
        key: str,
        start: float,
        cache: CacheResult,
        *,
        hit: CacheEntry | None = None,
        chat: Any = None,
        flight: Any = None,
    ) -> None:
        self.gateway = gateway
        self.req = req
        self.decision = decision
        self.upstream = upstream
        self.key = key
        self.start = start
        self.cache = cache
        self._hit = hit
        self._chat = chat
        self._flight = flight
        self._recorded = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._hit_chunks() if self._hit is not None else self._upstream_chunks()

    async def _hit_chunks(self) -> AsyncIterator[bytes]:
        entry = self._hit
        assert entry is not None
        base = {
            "id": self.decision.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": entry.model,
        }
        delta: dict[str, Any] = {k: v for k, v in entry.message.items()}
        delta.setdefault("role", "assistant")
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(delta["tool_calls"])]
        yield sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": entry.finish_reason}]})
        usage = _entry_usage(entry)
        if self.req.include_usage and usage is not None:
            yield sse({**base, "choices": [], "usage": usage.as_openai()})
        yield DONE
        self._finish_hit()

    def _finish_hit(self) -> None:
        if not self._recorded:
            self._recorded = True
            self.gateway._record(
                self.decision, self.upstream, self.key, self.start, hit=self._hit, stream=True
            )

    async def _upstream_chunks(self) -> AsyncIterator[bytes]:
        chat = self._chat
        new_id = self.decision.id
        include_usage = self.req.include_usage
        # Events that arrived together leave together: one write to the caller, not one each.
        out: list[bytes] = []
        try:
            async for event in chat:
                if event.done:
                    out.append(DONE)
                elif not event.usage_only or include_usage:
                    data = event.data
                    out.append(
                        sse({**data, "id": new_id})
                        if data is not None and data.get("id") != new_id
                        else event.raw
                    )
                if out and not chat.buffered:
                    yield out[0] if len(out) == 1 else b"".join(out)
                    out = []
        except UpstreamError as exc:
            out.append(
                sse({"error": {"message": exc.message, "type": "api_error", "param": None, "code": exc.code}})
            )
            yield b"".join(out)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """End the call: close the upstream (a caller that left cancels it), then record it."""
        if self._recorded:
            return
        if self._hit is not None:
            self._finish_hit()
            return
        self._recorded = True
        chat = self._chat
        await chat.aclose()
        result: CallResult = chat.result
        entry = self.gateway._entry(result, self.decision) if result is not None else None
        if self._flight is not None:
            self._flight.done(entry)
        if entry is not None and self.cache is not CacheResult.BYPASS:
            self.gateway.cache.put_soon(self.key, entry)
        if result is not None:
            self.gateway._record(
                self.decision,
                self.upstream,
                self.key,
                self.start,
                result=result,
                mode=self.cache,
                stream=True,
            )


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
                counts["errors"] += 1
                failures[exc.message] = failures.get(exc.message, 0) + 1
            else:
                counts["hits" if out.cache is CacheResult.HIT else "misses"] += 1
            if progress is not None:
                progress(1)

    await asyncio.gather(*(one(case) for case in cases))
    await gateway.cache.drain()
    ranked = sorted(failures.items(), key=lambda item: -item[1])  # stable: first seen first on ties
    return WarmReport(**counts, failures=tuple(ranked))
