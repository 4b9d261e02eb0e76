"""The OpenAI wire format, the retry arithmetic and the sanitizing of upstream text (no network)."""

from __future__ import annotations

import email.utils
import random

import pytest

from promptops.domain import Message
from promptops.providers import (
    RetryPolicy,
    build_chat_request,
    estimate_prompt_tokens,
    estimate_tokens,
    parse_chat_response,
    parse_event,
    parse_retry_after,
    sanitize,
)
from promptops.providers.retry import error_excerpt
from promptops.providers.wire import SSEParser, WireError, parse_embeddings_response


def test_version_settings_win_over_the_callers_fields():
    request = build_chat_request(
        [Message("system", "Be short."), {"role": "user", "content": "hi"}],
        {"provider": "local", "name": "small", "temperature": 0, "max_tokens": 5},
        extra={"temperature": 0.9, "seed": 7, "model": "other", "messages": [], "tools": [{"x": 1}]},
    )
    assert request.provider == "local"
    assert request.model == "small"
    assert dict(request.body) == {
        "temperature": 0,
        "seed": 7,
        "tools": [{"x": 1}],
        "max_tokens": 5,
        "model": "small",
        "messages": [{"role": "system", "content": "Be short."}, {"role": "user", "content": "hi"}],
    }
    assert not request.stream


def test_a_stream_always_asks_for_usage():
    request = build_chat_request([], {"name": "m"}, extra={"stream_options": {"x": 1}}, stream=True)
    assert request.stream and request.provider is None
    assert request.body["stream_options"] == {"x": 1, "include_usage": True}
    assert b'"stream":true' in request.canonical()


def test_model_settings_need_a_name():
    with pytest.raises(ValueError, match="no model name"):
        build_chat_request([], {"temperature": 0})


def test_parse_chat_response():
    parsed = parse_chat_response(
        b'{"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],'
        b' "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,'
        b' "prompt_tokens_details": {"cached_tokens": 2}}}'
    )
    assert parsed.message == {"role": "assistant", "content": "ok"}
    assert parsed.finish_reason == "stop"
    assert parsed.usage is not None
    assert (
        parsed.usage.prompt_tokens,
        parsed.usage.completion_tokens,
        parsed.usage.total_tokens,
        parsed.usage.cached_tokens,
        parsed.usage.estimated,
    ) == (3, 1, 4, 2, False)
    assert parsed.usage.as_openai() == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


@pytest.mark.parametrize(
    "body", [b"{nope", b"[]", b'{"choices": []}', b'{"choices": [{"text": "x"}]}', b"\xff\xfe"]
)
def test_malformed_chat_responses(body):
    with pytest.raises(WireError):
        parse_chat_response(body)


def test_embeddings_are_put_in_input_order():
    vectors, usage = parse_embeddings_response(
        b'{"data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1.5, 0]}],'
        b' "usage": {"prompt_tokens": 4, "total_tokens": 4}}',
        2,
    )
    assert vectors == ((1.5, 0.0), (0.0, 1.0))
    assert usage is not None and usage.prompt_tokens == 4
    with pytest.raises(WireError):
        parse_embeddings_response(b'{"data": [{"index": 0, "embedding": [1]}]}', 2)


def test_sse_events_split_across_reads():
    parser = SSEParser()
    stream = (
        b'data: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\n: keep-alive\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
        b"data: [DONE]\n\n"
    )
    events = [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])]
    assert len(events) == 4 and parser.pending == b""
    parsed = [parse_event(e) for e in events]
    assert parsed[0] is not None and parsed[0].content == "a" and not parsed[0].usage_only
    assert parsed[1] is None
    assert parsed[2] is not None and parsed[2].usage_only and parsed[2].usage is not None
    assert parsed[3] is not None and parsed[3].done


def test_sse_bad_events():
    with pytest.raises(WireError):
        parse_event(b"data: {broken\n\n")
    with pytest.raises(WireError, match="error in the stream"):
        parse_event(b'data: {"error": {"message": "boom"}}\n\n')
    with pytest.raises(WireError, match="larger than"):
        SSEParser(max_event_bytes=10).feed(b"data: " + b"x" * 20)


def test_token_estimate_is_characters_over_four():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcde") == 2
    assert estimate_prompt_tokens([{"role": "user", "content": "abcd"}]) == 1 + 4


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    when = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(when, now=1_000_000.0) == 30.0
    for bad in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2020 00:00:00"):
        assert parse_retry_after(bad) is None


class MaxRng(random.Random):
    """Always draws the top of the range, so the cap is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_is_full_jitter_under_an_exponential_cap():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    assert [policy.backoff(r, MaxRng()) for r in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    rng = random.Random(1)
    draws = [policy.backoff(2, rng) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in draws) and min(draws) < 0.5 < 1.5 < max(draws)


def test_sanitize_redacts_keys_and_cuts():
    text = "Incorrect API key provided: sk-proj-abcdefgh1234. Authorization: Bearer xyz123\n\x00" + "y" * 500
    clean = sanitize(text, secrets=["my-secret-key"])
    assert "sk-proj" not in clean and "xyz123" not in clean and "\x00" not in clean
    assert len(clean) == 200 and clean.endswith("...")
    assert sanitize("the key is my-secret-key", secrets=["my-secret-key"]) == "the key is [redacted]"
    # What providers answer to a wrong key, with their own masking of it.
    for said in (
        "Incorrect API key provided: sk-proj-************************wxyz.",
        "Incorrect API key provided: sk-...wxyz.",
        "Invalid API Key: gsk_abc1****************************Q2xy",
        "Incorrect API key provided: xai-Ab12••••••••••••xy9z.",
        "API key not valid: AIzaSyA-**********-7Q. Please pass a valid API key.",
    ):
        clean = sanitize(said)
        assert "[redacted]" in clean and not any(part in clean for part in ("wxyz", "Q2xy", "xy9z", "7Q")), (
            clean
        )
    assert error_excerpt(b'{"error": {"message": "bad model"}}') == "bad model"


@pytest.mark.parametrize(
    "said",
    [
        "Unsupported api_version: use 2024-02-01.",
        "Error code: token_limit_exceeded",
        "Invalid value for key-value.metadata.user",
        "See https://api-docs.example.com/quick_start/error_codes for details.",
        "api_key_invalid: check the key.",
    ],
)
def test_sanitize_leaves_ordinary_words_alone(said):
    """Words that start like a key (`api_`, `token_`, `key-`) but hold no digit and no mask are
    a provider's words, not a key."""
    assert sanitize(said) == said


def test_sanitize_keeps_the_full_stop_after_a_key():
    assert sanitize("Incorrect API key provided: sk-...wxyz. Try again.") == (
        "Incorrect API key provided: [redacted]. Try again."
    )
    assert sanitize("Bad key api-key-9f8e7d6c5b4a.") == "Bad key [redacted]."
    assert error_excerpt(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"


def test_answers_orjson_refuses_still_parse_and_garbage_does_not() -> None:
    body = b'{"choices": [{"message": {"content": "x"}}], "seed": 123456789012345678901234, "p": NaN}'
    assert parse_chat_response(body).message == {"content": "x"}
    with pytest.raises(WireError):
        parse_chat_response(b'{"choices": "\xff\xfe"}')


def test_json_nested_deeper_than_the_parsers_go_is_unreadable_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(WireError, match="nested too deeply"):
        parse_chat_response(deep)
    with pytest.raises(WireError):
        parse_event(b"data: " + deep)
    with pytest.raises(WireError):
        parse_embeddings_response(deep, 1)
    assert error_excerpt(b'{"error": ' + b"[" * 30_000 + b"]" * 30_000 + b"}").startswith('{"error": [[[')


def test_lone_surrogates_in_an_answer_become_replacement_characters() -> None:
    """orjson refuses a lone \\ud800 escape and the standard parser reads it: such text could be
    neither answered (UTF-8) nor stored, so it reads as U+FFFD, keys and nested values included."""
    body = b'{"choices": [{"message": {"content": "a\\ud800b \\ud83d\\ude00", "\\udc00k": ["\\udbff"]}}]}'
    assert parse_chat_response(body).message == {"content": "a\ufffdb \U0001f600", "\ufffdk": ["\ufffd"]}
    event = parse_event(b'data: {"choices": [{"delta": {"content": "x\\ud800"}}]}')
    assert event is not None and event.content == "x\ufffd"
