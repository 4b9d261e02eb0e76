"""Prompt files shared by the API, client and fuzz tests."""

TRIAGE = """\
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
experiment:
  metric: resolved
  arms: [main, terse]
  policy: {min_hours: 0, min_samples_per_arm: 100, update_every: 100, min_update_minutes: 0,
           attribution_window_hours: 0.001}
"""

PLAIN = """\
name: plain
variables:
  topic: {type: string, required: true}
template: "Write about {{ topic }}."
"""
