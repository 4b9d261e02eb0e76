"""A small eval project for tests: a prompt with variants, an eval over it, and a providers file.

The fake upstream echoes the last user message (`echo: TEXT`), so the `main` variant passes the
eval's `contains` assertion, `shout` (which upper-cases the message) fails it on every case whose
text has letters, `polite` (a system message first) passes like `main`, and `broken` calls a
model the fake answers with 400: every case an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fakeupstream import FakeUpstream, Reply

PROMPT = """\
name: echo
model: {provider: fake, name: echo-model, temperature: 0}
variables:
  message: {type: string, required: true}
messages:
  - {role: user, content: "{{ message }}"}
variants:
  shout:
    messages: [{role: user, content: "{{ message | upper }}"}]
  broken:
    model: {provider: fake, name: broken-model, temperature: 0}
    messages: [{role: user, content: "{{ message }}!"}]
  polite:
    messages: [{role: system, content: "Be polite."}, {role: user, content: "{{ message }}"}]
EXPERIMENT
"""

EVAL = """\
name: echo-golden
prompt: echo
dataset: echo.jsonl
assert:
  - {type: contains, value: "{{ expected }}"}
gate: GATE
"""

MESSAGES = [
    "hello there",
    "where is my parcel",
    "refund please",
    "42",
    "thanks a lot",
    "my card was charged twice",
    "2024",
    "is it in stock",
    "reset my password",
    "bye",
]


def write_project(
    root: Path,
    fake: FakeUpstream,
    *,
    experiment: str = "",
    gate: str = "{min_pass_rate: 0.5, max_regression: 0.0}",
) -> dict[str, Path]:
    """Write prompts/echo.yaml, evals/echo.yaml (+ echo.jsonl) and promptops.yaml under root."""
    fake.models["broken-model"] = Reply(status=400, error="no such model")
    prompts, evals = root / "prompts", root / "evals"
    prompts.mkdir(exist_ok=True)
    evals.mkdir(exist_ok=True)
    (prompts / "echo.yaml").write_text(PROMPT.replace("EXPERIMENT", experiment), encoding="utf-8")
    (evals / "echo.yaml").write_text(EVAL.replace("GATE", gate), encoding="utf-8")
    lines = [
        json.dumps({"id": f"c{i}", "vars": {"message": m}, "expected": m}) for i, m in enumerate(MESSAGES, 1)
    ]
    (evals / "echo.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = root / "promptops.yaml"
    config.write_text(
        f'default_provider: fake\nproviders:\n  fake: {{base_url: "{fake.base_url}", max_retries: 0}}\n',
        encoding="utf-8",
    )
    return {"prompts": prompts, "evals": evals, "config": config}
