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


def test_warm_stats_clear(cli, tmp_path: Path, fake_upstream, monkeypatch):
    (tmp_path / "prompts" / "ask.yaml").write_text(ASK)
    (tmp_path / "promptops.yaml").write_text(config(fake_upstream))
    monkeypatch.setenv("PROMPTOPS_CONFIG", str(tmp_path / "promptops.yaml"))
    assert cli("sync").code == 0
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
    (tmp_path / "prompts" / "duel.yaml").write_text(DUEL)
    (tmp_path / "promptops.yaml").write_text(config(fake_upstream))
    monkeypatch.setenv("PROMPTOPS_CONFIG", str(tmp_path / "promptops.yaml"))
    assert cli("sync").code == 0
    data = tmp_path / "warm.jsonl"
    data.write_text('{"vars": {}}\n')
    assert cli("cache", "warm", "duel", "--dataset", str(data), "--version", "2").code == 0
    r = cli("experiment", "status", "1", "--json")
    arms = json.loads(r.out)["arms"]
    assert [a["calls"] for a in arms] == [0, 0], r  # a pinned call is no decision of the experiment
    assert arms[0]["latency_ms_p50"] is None
