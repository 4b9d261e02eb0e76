"""When a failed provider call is tried again, how long to wait, and what an error may show.

Retried: connection failures before the request reached the server, 408, 429, 502, 503 and 504.
Not retried: 500 (servers such as llama.cpp answer a malformed request with it, so it repeats) and
other 4xx. A read timeout or a connection dropped after the request was sent may mean the provider
ran (and billed) the request: it is not retried, and the error says `may_have_been_processed`.
A 504 is retried, but it may come from a proxy that gave up on a request the model still ran, so
the result says so. Waits use exponential backoff with full jitter, or the provider's Retry-After
(seconds or an HTTP date); a Retry-After longer than `max_retry_after` ends the retries at once.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
"""HTTP statuses worth another attempt."""
MAYBE_PROCESSED_STATUSES = frozenset({500, 504})
"""Statuses after which the provider may have run the request anyway."""
EXCERPT_CHARS = 200
_KEY_CHARS = r"[A-Za-z0-9_\-*.\u2022\u2026]"  # a key's characters, and those that mask one
_SECRET_PATTERNS = (
    # Key-shaped words, masked ones included (OpenAI's 401 shows `sk-proj-****...wxyz`; Groq's
    # keys start `gsk_`, xAI's `xai-`, Google's `AIza`), without the full stop that may follow.
    re.compile(rf"\b(sk|pk|rk|gsk|xai)[-_]{_KEY_CHARS}{{6,}}(?<!\.)", re.IGNORECASE),
    re.compile(rf"\bAIza{_KEY_CHARS}{{6,}}(?<!\.)"),
    re.compile(r"\bBearer\s+\S+", re.IGNORECASE),
)
_WORD_KEY = re.compile(rf"\b(key|api|token)[-_]{_KEY_CHARS}{{6,}}(?<!\.)", re.IGNORECASE)
_KEY_MARK = re.compile(r"[0-9*\u2022\u2026]|\.\.")


def _word_key(match: re.Match[str]) -> str:
    """`key-`, `api_` and `token_` also start ordinary words (`api_version`,
    `token_limit_exceeded`): a key among them holds a digit or a mask. (Checked on the whole
    word once it matched, not by a lookahead: that rescanned the rest of the text at each start.)"""
    word = match.group(0)
    return "[redacted]" if _KEY_MARK.search(word, len(match.group(1)) + 1) else word


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff settings shared by the providers (the attempt count is each provider's own)."""

    base_delay: float = 0.5  # seconds before the first retry, at most
    max_delay: float = 8.0  # cap of the exponential backoff
    max_retry_after: float = 30.0  # a longer Retry-After gives up instead of waiting

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: a uniform wait between 0 and min(max_delay, base_delay * 2**retry)."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2**retry)))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite
        return None
    return max(0.0, seconds)


def sanitize(text: str, *, secrets: Iterable[str] = ()) -> str:
    """A short excerpt safe for messages and logs: no key, no control characters, one line."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    text = _WORD_KEY.sub(_word_key, text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def error_excerpt(body: bytes, *, secrets: Iterable[str] = ()) -> str:
    """The upstream error's message (OpenAI's `error.message` when present), sanitized."""
    text = body[:4096].decode("utf-8", errors="replace")
    try:
        data = json.loads(body[:65536])
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str):
            text = message
    return sanitize(text, secrets=secrets)
