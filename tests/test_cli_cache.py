"""`promptops cache stats|clear|warm`, gc's cache eviction, and gateway usage in experiment status."""

from __future__ import annotations

import json
from pathlib import Path

from tests import fakeupstream, test_cli
from tests.samples import ASK, DUEL
from tests.services.test_gateway import config

# Fixtures shared with other test modules.
fake_upstream = fakeupstream.fake_upstream
cli = test_cli.cli


def synced(cli, tmp_path: Path, fake_upstream, monkeypatch, **prompts: str) -> None:
    """Write the prompts and a config pointing at the fake upstream, then sync."""
    for name, text in prompts.items():
        (tmp_path / "prompts" / f"{name}.yaml").write_text(text)
    (tmp_path / "promptops.yaml").write_text(config(fake_upstream))
    monkeypatch.setenv("PROMPTOPS_CONFIG", str(tmp_path / "promptops.yaml"))
    assert cli("sync").code == 0


def test_warm_stats_clear(cli, tmp_path: Path, fake_upstream, monkeypatch):
    synced(cli, tmp_path, fake_upstream, monkeypatch, ask=ASK)
    data = tmp_path / "warm.jsonl"
    data.write_text("\n".join(json.dumps({"vars": {"question": q}}) for q in "abcab") + "\n")
    r = cli("cache", "warm", "ask", "--dataset", str(data), "--concurrency", "1")
    assert r.code == 0 and "3 new, 2 already cached, 0 failed" in r.out, r
    assert fake_upstream.count == 3
    r = cli("cache", "stats", "--json")
    assert json.loads(r.out) == {"entries": 3, "by_prompt": {"ask": 3}}, r
    r = cli("cache", "clear", "ask")
    assert r.code == 0 and "removed 3" in r.out, r
    data.write_text("not json\n")
    r = cli("cache", "warm", "ask", "--dataset", str(data))
    assert r.code == 2 and f"{data}:1: not valid JSON" in r.err, r


def test_status_shows_gateway_usage(cli, tmp_path: Path, fake_upstream, monkeypatch):
    synced(cli, tmp_path, fake_upstream, monkeypatch, duel=DUEL)
    data = tmp_path / "warm.jsonl"
    data.write_text('{"vars": {}}\n')
    assert cli("cache", "warm", "duel", "--dataset", str(data), "--version", "2").code == 0
    r = cli("experiment", "status", "1", "--json")
    arms = json.loads(r.out)["arms"]
    assert [a["calls"] for a in arms] == [0, 0], r  # a pinned call is no decision of the experiment
    assert arms[0]["latency_ms_p50"] is None


def test_warm_says_why_calls_failed_one_line_per_reason(cli, tmp_path: Path, fake_upstream, monkeypatch):
    from tests.fakeupstream import Reply

    synced(cli, tmp_path, fake_upstream, monkeypatch, ask=ASK)
    fake_upstream.enqueue(*[Reply(status=400, error="context too long")] * 3)
    data = tmp_path / "warm.jsonl"
    cases = [{"vars": {"question": q}} for q in "abcd"] + [{"vars": {"questoin": "x"}}] * 2
    data.write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    r = cli("cache", "warm", "ask", "--dataset", str(data), "--concurrency", "1")
    assert r.code == 1 and "1 new, 0 already cached, 5 failed" in r.out, r
    lines = r.err.splitlines()
    assert len(lines) == 2, r
    assert lines[0].startswith("  3 failed: provider 'fake', model 'fake-model': the provider answered 400")
    assert "context too long" in lines[0]
    assert lines[1].startswith("  2 failed: variable 'questoin' is not declared"), r


def test_a_hostile_warm_dataset_is_one_line_with_its_line(cli, tmp_path: Path, fake_upstream, monkeypatch):
    synced(cli, tmp_path, fake_upstream, monkeypatch, ask=ASK)
    data = tmp_path / "warm.jsonl"
    cases = [
        ('{"vars": ' + "[" * 5000 + "]" * 5000 + "}", ":1: not valid JSON"),
        (
            '{"vars": {"question": "ok"}}\n{"vars": {"question": "a\\u0000b"}}',
            ":2: a string must not contain NUL",
        ),
        ('{"vars": {"question": "\\ud800"}}', ":1: a string must be valid Unicode"),
    ]
    for text, message in cases:
        data.write_text(text + "\n")
        r = cli("cache", "warm", "ask", "--dataset", str(data))
        assert r.code == 2 and f"{data}{message}" in r.err and len(r.err.strip().splitlines()) == 1, r
    data.write_bytes(b'{"vars": {"question": "\xff"}}\n')
    r = cli("cache", "warm", "ask", "--dataset", str(data))
    assert r.code == 2 and r.err.strip() == f"error: {data}: not UTF-8 text", r
    assert fake_upstream.count == 0
