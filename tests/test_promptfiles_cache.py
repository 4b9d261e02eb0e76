"""The `cache:` settings of prompt files: top level and per variant, `off` read as false."""

from __future__ import annotations

import pytest

from tests.test_promptfiles import only_problem, parse

BASE = """\
name: cached
model: {name: m, temperature: 0}
messages:
  - {role: user, content: hi}
"""


def test_top_level_and_variant_settings():
    d = parse(
        BASE
        + """\
cache: {mode: exact, ttl_hours: 24, stale_hours: 2}
variants:
  other:
    messages:
      - {role: user, content: hello}
    cache: {mode: off}
"""
    )
    assert d.content.cache == {"mode": "exact", "ttl_hours": 24.0, "stale_hours": 2.0}
    assert d.variants["other"].cache == {"mode": "off", "ttl_hours": 24.0, "stale_hours": 2.0}


def test_bare_off_and_absent():
    assert parse(BASE + "cache: off\n").content.cache == {"mode": "off"}
    assert parse(BASE).content.cache is None
    # Without cache settings the content (and its hash) is what it was before caching existed.
    assert "cache" not in parse(BASE).content.to_dict()


@pytest.mark.parametrize(
    "text, line, needle",
    [
        pytest.param("cache: {mode: fuzzy}\n", 5, "cache.mode: must be one of exact, off", id="mode"),
        pytest.param("cache: {ttl_hours: -1}\n", 5, "cache.ttl_hours: must be a number of hours", id="ttl"),
        pytest.param("cache: {modes: exact}\n", 5, "modes", id="unknown-key"),
    ],
)
def test_bad_settings_name_their_line(text, line, needle):
    problem = only_problem(BASE + text)
    assert problem.line == line and needle in problem.message, problem
