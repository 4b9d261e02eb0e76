"""Against a real local model (opt-in, PROMPTOPS_TEST_LLM_URL): the official SDK streams a
completion of a promptops prompt; the answer is cached and replayed, also as a stream."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

URL = os.environ.get("PROMPTOPS_TEST_LLM_URL")
pytestmark = pytest.mark.skipif(not URL, reason="PROMPTOPS_TEST_LLM_URL is not set")

PROMPT = """\
name: hello
model: {name: smollm2-135m, temperature: 0, max_tokens: 12}
variables:
  who: {type: string, required: true}
messages:
  - {role: user, content: "Say hello to {{ who }}."}
"""


def test_stream_cache_and_replay(tmp_path: Path, settings, clock):  # type: ignore[no-untyped-def]
    from promptops.server.app import create_app

    (tmp_path / "prompts" / "hello.yaml").write_text(PROMPT)
    config = tmp_path / "promptops.yaml"
    config.write_text(
        f'default_provider: local\nproviders:\n  local: {{base_url: "{URL}", timeout_seconds: 120}}\n'
    )
    # The app builds its own services (batched writer, refreshed by the server) over the config.
    app = create_app(dataclasses.replace(settings, config_path=config), clock=clock, background=False)
    with TestClient(app) as http:
        app.state.runtime.ops.sync()
        app.state.runtime.refresh(force=True)
        sdk = openai.OpenAI(
            base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0
        )
        body = {"variables": {"who": "Ada"}}
        first = sdk.chat.completions.with_raw_response.create(
            model="promptops/hello", messages=[], stream=True, extra_body=body
        )
        assert first.headers["x-promptops-cache"] == "miss"
        chunks = list(first.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() and {c.id for c in chunks} == {first.headers["x-promptops-decision-id"]}
        http.app.state.runtime.writer.flush()

        again = sdk.chat.completions.with_raw_response.create(
            model="promptops/hello", messages=[], stream=True, extra_body=body
        )
        assert again.headers["x-promptops-cache"] == "hit"
        replayed = "".join(c.choices[0].delta.content or "" for c in again.parse() if c.choices)
        assert replayed == text

        plain = sdk.chat.completions.with_raw_response.create(
            model="promptops/hello", messages=[], extra_body=body
        )
        assert plain.headers["x-promptops-cache"] == "hit"
        assert plain.parse().choices[0].message.content == text
