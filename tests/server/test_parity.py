"""The fast path and the FastAPI routes answer serve and feedback alike: same status, same body,
same metrics, for ordinary and unusual requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from promptops.server.app import create_app
from promptops.server.runtime import server_ops
from tests.samples import PLAIN, TRIAGE

LIMIT = 4000
SERVE = "/v1/prompts/plain/serve"
TRIAGE_SERVE = "/v1/prompts/triage/serve"
FEEDBACK = "/v1/feedback"
JSON_TYPE = {"Content-Type": "application/json"}


def raw(text: str) -> bytes:
    return text.encode()


def js(value: Any) -> bytes:
    return json.dumps(value).encode()  # \u escapes, as a client would send them


def chunked(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 7):
        yield body[i : i + 7]


# (id, path, body (bytes, or a function of the decision id), key, extra headers)
CASES: list[tuple[str, str, Any, str | None, dict[str, str]]] = [
    ("serve", SERVE, js({"variables": {"topic": "x"}}), "serve", JSON_TYPE),
    ("serve-admin-key", SERVE, js({"variables": {"topic": "x"}}), "admin", JSON_TYPE),
    ("serve-unit", TRIAGE_SERVE, js({"variables": {"message": "m"}, "unit_id": "u1"}), "serve", JSON_TYPE),
    ("serve-no-unit", TRIAGE_SERVE, js({"variables": {"message": "m"}}), "serve", JSON_TYPE),
    (
        "serve-charset",
        SERVE,
        js({"variables": {"topic": "x"}}),
        "serve",
        {"Content-Type": "application/json; charset=utf-8"},
    ),
    ("serve-text-plain", SERVE, js({"variables": {"topic": "x"}}), "serve", {"Content-Type": "text/plain"}),
    ("serve-empty-object", SERVE, js({}), "serve", JSON_TYPE),
    ("serve-empty-body", SERVE, b"", "serve", JSON_TYPE),
    ("serve-null", SERVE, raw("null"), "serve", JSON_TYPE),
    ("serve-list", SERVE, raw("[]"), "serve", JSON_TYPE),
    ("serve-malformed", SERVE, raw('{"variables": '), "serve", JSON_TYPE),
    ("serve-nan", SERVE, raw('{"variables": {"topic": NaN}}'), "serve", JSON_TYPE),
    (
        "serve-huge-int",
        SERVE,
        raw('{"variables": {"topic": 123456789012345678901234567890}}'),
        "serve",
        JSON_TYPE,
    ),
    ("serve-variables-null", SERVE, js({"variables": None}), "serve", JSON_TYPE),
    ("serve-variables-list", SERVE, js({"variables": []}), "serve", JSON_TYPE),
    ("serve-unit-int", SERVE, js({"variables": {"topic": "x"}, "unit_id": 5}), "serve", JSON_TYPE),
    ("serve-unit-long", SERVE, js({"variables": {"topic": "x"}, "unit_id": "u" * 257}), "serve", JSON_TYPE),
    ("serve-extra-field", SERVE, js({"variables": {"topic": "x"}, "x": 1}), "serve", JSON_TYPE),
    ("serve-missing-variable", SERVE, js({"variables": {}}), "serve", JSON_TYPE),
    ("serve-wrong-variable-type", SERVE, js({"variables": {"topic": 3}}), "serve", JSON_TYPE),
    ("serve-unknown-variable", SERVE, js({"variables": {"topic": "x", "y": 1}}), "serve", JSON_TYPE),
    ("serve-variable-too-long", TRIAGE_SERVE, js({"variables": {"message": "m" * 101}}), "serve", JSON_TYPE),
    ("serve-unknown-prompt", "/v1/prompts/nope/serve", js({"variables": {}}), "serve", JSON_TYPE),
    ("serve-nul", SERVE, js({"variables": {"topic": "a\x00b"}}), "serve", JSON_TYPE),
    ("serve-surrogate", SERVE, js({"variables": {"topic": "a\ud800b"}}), "serve", JSON_TYPE),
    ("serve-surrogate-key", SERVE, js({"variables": {"topic": "x", "\udc00": 1}}), "serve", JSON_TYPE),
    ("serve-nul-unit", SERVE, js({"variables": {"topic": "x"}, "unit_id": "\x00"}), "serve", JSON_TYPE),
    ("serve-no-key", SERVE, js({"variables": {"topic": "x"}}), None, JSON_TYPE),
    ("serve-bad-key", SERVE, js({"variables": {"topic": "x"}}), "bad", JSON_TYPE),
    ("serve-basic-auth", SERVE, js({"variables": {"topic": "x"}}), "basic", JSON_TYPE),
    ("serve-no-key-malformed", SERVE, raw("{"), None, JSON_TYPE),
    ("serve-big-body", SERVE, js({"variables": {"topic": "x" * LIMIT}}), "serve", JSON_TYPE),
    ("serve-just-under-limit", SERVE, js({"variables": {"topic": "x" * (LIMIT - 40)}}), "serve", JSON_TYPE),
    ("serve-chunked", SERVE, "chunked:" + json.dumps({"variables": {"topic": "x"}}), "serve", JSON_TYPE),
    (
        "serve-chunked-big",
        SERVE,
        "chunked:" + json.dumps({"variables": {"topic": "x" * LIMIT}}),
        "serve",
        JSON_TYPE,
    ),
    ("feedback", FEEDBACK, lambda d: js({"decision_id": d, "reward": 1}), "serve", JSON_TYPE),
    ("feedback-duplicate", FEEDBACK, lambda d: js({"decision_id": d, "reward": 0}), "serve", JSON_TYPE),
    (
        "feedback-builtin-metric",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 12.5, "metric": "latency_ms"}),
        "serve",
        JSON_TYPE,
    ),
    (
        "feedback-bool",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": True, "metric": "error"}),
        "serve",
        JSON_TYPE,
    ),
    (
        "feedback-chunked",
        FEEDBACK,
        lambda d: "chunked:" + json.dumps({"decision_id": d, "reward": 1, "metric": "cost_usd"}),
        "serve",
        JSON_TYPE,
    ),
    (
        "feedback-unknown-metric",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 1, "metric": "nope"}),
        "serve",
        JSON_TYPE,
    ),
    (
        "feedback-bad-metric-name",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 1, "metric": "a b"}),
        "serve",
        JSON_TYPE,
    ),
    (
        "feedback-empty-metric",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 1, "metric": ""}),
        "serve",
        JSON_TYPE,
    ),
    (
        "feedback-long-metric",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 1, "metric": "m" * 65}),
        "serve",
        JSON_TYPE,
    ),
    ("feedback-not-binary", FEEDBACK, lambda d: js({"decision_id": d, "reward": 0.5}), "serve", JSON_TYPE),
    ("feedback-string-reward", FEEDBACK, lambda d: js({"decision_id": d, "reward": "1"}), "serve", JSON_TYPE),
    ("feedback-null-reward", FEEDBACK, lambda d: js({"decision_id": d, "reward": None}), "serve", JSON_TYPE),
    ("feedback-missing-reward", FEEDBACK, lambda d: js({"decision_id": d}), "serve", JSON_TYPE),
    (
        "feedback-extra-field",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 1, "x": 1}),
        "serve",
        JSON_TYPE,
    ),
    ("feedback-forged-id", FEEDBACK, js({"decision_id": "x", "reward": 1}), "serve", JSON_TYPE),
    ("feedback-empty-id", FEEDBACK, js({"decision_id": "", "reward": 1}), "serve", JSON_TYPE),
    ("feedback-long-id", FEEDBACK, js({"decision_id": "d" * 257, "reward": 1}), "serve", JSON_TYPE),
    ("feedback-nul-id", FEEDBACK, js({"decision_id": "a\x00", "reward": 1}), "serve", JSON_TYPE),
    (
        "feedback-surrogate-metric",
        FEEDBACK,
        lambda d: js({"decision_id": d, "reward": 1, "metric": "\ud800"}),
        "serve",
        JSON_TYPE,
    ),
    ("feedback-no-key", FEEDBACK, lambda d: js({"decision_id": d, "reward": 1}), None, JSON_TYPE),
    ("feedback-bad-key", FEEDBACK, lambda d: js({"decision_id": d, "reward": 1}), "bad", JSON_TYPE),
    ("feedback-big-body", FEEDBACK, js({"decision_id": "x" * LIMIT, "reward": 1}), "serve", JSON_TYPE),
]


class Side:
    """One app (fast path on or off) over its own services on the shared database."""

    def __init__(self, settings, clock, *, fast_path: bool) -> None:  # type: ignore[no-untyped-def]
        self.ops = server_ops(settings, clock=clock)
        self.ops.ctx.rng.seed(7)
        self.app = create_app(settings, ops=self.ops, clock=clock, background=False, fast_path=fast_path)
        self.client = TestClient(self.app)
        self.client.__enter__()
        self.decision_id = ""

    def send(
        self, path: str, body: Any, key: str | None, headers: dict[str, str], keys: dict[str, str]
    ) -> tuple[int, Any]:
        if callable(body):
            body = body(self.decision_id)
        content: Any = body
        if isinstance(body, str) and body.startswith("chunked:"):
            content = chunked(body[len("chunked:") :].encode())
        sent = dict(headers)
        if key == "basic":
            sent["Authorization"] = "Basic dXNlcjpwYXNz"
        elif key is not None:
            sent["Authorization"] = f"Bearer {keys[key]}"
        r = self.client.post(path, content=content, headers=sent)
        try:
            answer = r.json()
        except ValueError:
            answer = r.text
        if isinstance(answer, dict) and "decision_id" in answer:
            if path == TRIAGE_SERVE:
                self.decision_id = answer["decision_id"]
            answer = {**answer, "decision_id": "<decision id>"}
        return r.status_code, answer

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(self.app.state.runtime.metrics.registry).decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in (
                    "promptops_decisions_total",
                    "promptops_feedback_total",
                    "promptops_request_seconds_count",
                ):
                    found[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return found

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.ops.close()


@pytest.fixture
def sides(ops, settings, clock, prompts_dir):  # type: ignore[no-untyped-def]
    (prompts_dir / "triage.yaml").write_text(TRIAGE)
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    ops.sync()
    keys = {
        "serve": ops.keys.create("serve"),
        "admin": ops.keys.create("admin"),
        "bad": "po_serve_" + "x" * 43,
    }
    bounded = replace(settings, max_body_bytes=LIMIT)
    pair = (Side(bounded, clock, fast_path=False), Side(bounded, clock, fast_path=True))
    yield pair, keys
    for side in pair:
        side.close()


def test_the_fast_path_answers_as_the_routes_do(sides):
    (routes, fast), keys = sides
    for case, path, body, key, headers in CASES:
        expected = routes.send(path, body, key, headers, keys)
        got = fast.send(path, body, key, headers, keys)
        assert got == expected, case
    for side in (routes, fast):
        side.app.state.runtime.writer.flush()
    assert fast.samples() == routes.samples()
    # The table reaches every kind of answer, so the comparison above covers them all.
    samples = routes.samples()
    statuses = {
        dict(labels)["status"] for name, labels in samples if name == "promptops_request_seconds_count"
    }
    assert {"200", "401", "404", "413", "422"} <= statuses, statuses
    results = {dict(labels)["status"] for name, labels in samples if name == "promptops_feedback_total"}
    assert results == {"recorded", "duplicate"}, results
