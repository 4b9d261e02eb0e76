"""Prompt files that several test modules share. A sample only one test needs (a broken file, an
edge case, wording the test reads back) stays next to that test."""

TRIAGE_NO_EXPERIMENT = """\
name: triage
model: {name: gpt-4o-mini}
variables:
  message: {type: string, required: true, max_length: 100}
messages:
  - {role: system, content: "Answer with one category."}
  - {role: user, content: "Text: {{ message }}"}
variants:
  terse:
    messages:
      - {role: user, content: "Category of: {{ message }}"}
"""


def triage(policy: str | None, *, arms: str = "[main, terse]", status: str = "running") -> str:
    """The triage prompt with an experiment on the binary metric `resolved`; `policy` is a YAML flow
    mapping, None for the defaults. With a policy the file has 16 lines, so a block appended under
    `experiment:` starts on line 17 (tests/services/test_guardrails.py counts on it)."""
    text = f"{TRIAGE_NO_EXPERIMENT}experiment:\n  metric: resolved\n  status: {status}\n  arms: {arms}\n"
    return text if policy is None else f"{text}  policy: {policy}\n"


TRIAGE = triage(
    "{min_hours: 0, min_samples_per_arm: 100, update_every: 100, min_update_minutes: 0, "
    "attribution_window_hours: 0.001}"
)

PLAIN = """\
name: plain
variables:
  topic: {type: string, required: true}
template: "Write about {{ topic }}."
"""

# The gateway's prompts: the fake upstream answers for `fake-model`.
ASK = """\
name: ask
model: {name: fake-model, temperature: 0}
variables:
  question: {type: string, required: true}
messages:
  - {role: system, content: "Answer briefly."}
  - {role: user, content: "{{ question }}"}
"""

CHAT = """\
name: chat
model: {name: fake-model, temperature: 0.7}
variables:
  question: {type: string, required: true}
messages:
  - {role: user, content: "{{ question }}"}
"""

DUEL = """\
name: duel
model: {name: fake-model}
messages:
  - {role: user, content: "one"}
variants:
  two:
    messages:
      - {role: user, content: "two"}
experiment:
  metric: resolved
  arms: [main, two]
"""
