"""The command line, run in-process through its entry point, with output in assertion messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from promptops.cli import main

TRIAGE = """\
name: triage
variables:
  message: {type: string, required: true}
  n: {type: integer, default: 3}
messages:
  - {role: system, content: "Pick one of {{ n }} categories."}
  - {role: user, content: "Text: {{ message }}"}
variants:
  terse:
    messages:
      - {role: user, content: "{{ n }} categories. {{ message }}"}
"""


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTOPS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("PROMPTOPS_PROMPTS_DIR", str(tmp_path / "prompts"))
    (tmp_path / "prompts").mkdir()

    def run(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["promptops", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    run.dir = tmp_path  # type: ignore[attr-defined]
    return run


def add(cli, text: str = TRIAGE, name: str = "triage.yaml") -> Path:
    p = cli.dir / "prompts" / name
    p.write_text(text, encoding="utf-8")
    return p


def test_init_creates_a_valid_project(cli):
    r = cli("init", "proj")
    assert r.code == 0, r
    r = cli("validate", str(cli.dir / "proj" / "prompts"))
    assert r.code == 0 and "valid" in r.out, r
    again = cli("init", "proj")
    assert again.code == 1 and "already exists" in again.err, again


def test_validate_reports_path_and_line(cli):
    bad = add(cli, "name: Bad Name\nmessages:\n  - {role: user, content: hi}\n", "bad.yaml")
    r = cli("validate", str(bad))
    assert r.code == 1, r
    assert r.err.startswith(f"{bad}:1: "), r
    assert "Traceback" not in r.err


def test_sync_render_versions_diff_label(cli):
    add(cli)
    r = cli("sync")
    assert r.code == 0 and "triage: new version 1 (main)" in r.out, r
    assert "triage: new version 2 (terse)" in r.out, r
    r = cli("sync")
    assert r.code == 0 and "up to date" in r.out, r
    r = cli("render", "triage", "--var", "message=hello {{ x }}", "--var", "n=4", "--json")
    assert r.code == 0, r
    body = json.loads(r.out)
    assert body["version"] == 1
    assert body["messages"][0]["content"] == "Pick one of 4 categories."
    assert body["messages"][1]["content"] == "Text: hello {{ x }}"
    r = cli("render", "triage", "--version", "2", "--var", "message=hi")
    assert r.code == 0 and "3 categories. hi" in r.out, r
    r = cli("versions", "triage")
    assert r.code == 0 and "production" in r.out and "terse" in r.out, r
    r = cli("diff", "triage", "1", "2")
    assert r.code == 0 and r.out.startswith("--- triage@1"), r
    r = cli("label", "triage", "2", "production")
    assert r.code == 0 and "production -> version 2 (was 1)" in r.out, r
    r = cli("render", "triage", "--var", "message=x", "--json")
    assert json.loads(r.out)["version"] == 2, r


@pytest.mark.parametrize("args, needle", [
    pytest.param(["render", "nope"], "prompt 'nope' not found", id="unknown-prompt"),
    pytest.param(["render", "triage"], "message", id="missing-variable"),
    pytest.param(["render", "triage", "--var", "message=x", "--var", "n=abc"], "n",
                 id="bad-integer"),
    pytest.param(["render", "triage", "--var", "oops"], "NAME=VALUE", id="bad-var-syntax"),
    pytest.param(["render", "triage", "--version", "9", "--var", "message=x"], "no version 9",
                 id="unknown-version"),
    pytest.param(["label", "triage", "7", "production"], "no version 7", id="label-unknown"),
    pytest.param(["diff", "triage", "1", "5"], "no version 5", id="diff-unknown"),
    pytest.param(["experiment", "status", "42"], "experiment 42 not found", id="no-experiment"),
    pytest.param(["experiment", "start", "triage", "1"], "at least two", id="one-arm"),
    pytest.param(["keys", "create", "--role", "root"], "role must be", id="bad-role"),
])
def test_mistakes_are_one_line_without_traceback(cli, args, needle):
    add(cli)
    assert cli("sync").code == 0
    r = cli(*args)
    assert r.code != 0, r
    assert needle in r.err, r
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r


def test_bad_database_url_is_one_line(cli, monkeypatch):
    monkeypatch.setenv("PROMPTOPS_DATABASE_URL", "mysql://nope")
    r = cli("versions", "triage")
    assert r.code == 1 and "unsupported database URL" in r.err, r


def test_experiment_lifecycle(cli):
    add(cli)
    cli("sync")
    r = cli("experiment", "start", "triage", "1", "2", "--metric", "resolved",
            "--set", "min_hours=0")
    assert r.code == 0 and "experiment 1 running" in r.out, r
    r = cli("experiment", "status", "1", "--json")
    body = json.loads(r.out)
    assert body["status"] == "running" and [a["version"] for a in body["arms"]] == [1, 2], r
    assert body["arms"][0]["is_control"] is True
    r = cli("experiment", "start", "triage", "1", "2")
    assert r.code == 1 and "already has a running experiment" in r.err, r
    r = cli("experiment", "promote", "1", "--version", "2")
    assert r.code == 0 and "production -> version 2" in r.out, r
    r = cli("experiment", "stop", "1")
    assert r.code == 1 and "already ended" in r.err, r
    r = cli("experiment", "list")
    assert r.code == 0 and "completed" in r.out, r


def test_keys_create_prints_the_key_once(cli):
    r = cli("keys", "create", "--role", "admin")
    assert r.code == 0 and r.out.startswith("po_admin_"), r
    key = r.out.strip()
    listed = cli("keys", "list")
    assert key not in listed.out and key[:12] in listed.out, listed


def test_auth_stays_on_after_the_last_revoke_until_auth_off(cli):
    assert cli("keys", "create", "--role", "admin").code == 0
    r = cli("keys", "auth-off")
    assert r.code == 1 and "revoke them first" in r.err, r
    r = cli("keys", "revoke", "1")
    assert r.code == 0 and "auth stays on" in r.err, r
    r = cli("keys", "auth-off")
    assert r.code == 0 and "auth is off" in r.out, r


def test_db_upgrade(cli):
    r = cli("db", "upgrade")
    assert r.code == 0 and "head" in r.out, r


DEEP_TEMPLATES = [
    pytest.param("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested deeper", id="parens"),
    pytest.param("{% if 1 %}" * 3000 + "{% endif %}" * 3000, "nested deeper", id="ifs"),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "nested loops run more than",
        id="loop-bomb",
    ),
    pytest.param("{{ '%*s' % (999999999, 'a') }}", "longer than", id="padding-bomb"),
]


@pytest.mark.parametrize(("template", "message"), DEEP_TEMPLATES)
def test_template_bombs_are_file_problems_and_serving_goes_on(cli, capsys, template, message):
    from promptops.config import Settings
    from promptops.server.run import prepare

    add(cli)
    assert cli("sync").code == 0
    bad = add(cli, f"name: deep\ntemplate: |\n  line one\n  {template}\n", "deep.yaml")
    for command in ("validate", "sync"):
        r = cli(command, str(bad) if command == "validate" else str(bad.parent))
        assert r.code == 1, r
        assert r.err.startswith(f"{bad}:4: template: template syntax error: "), r
        assert message in r.err and "Traceback" not in r.err, r
    ops = prepare(Settings.from_env())
    try:
        assert "sync skipped" in capsys.readouterr().err
        assert [p["name"] for p in ops.registry.list_prompts()] == ["triage"]
    finally:
        ops.close()
    r = cli("render", "triage", "--var", "message=hi")
    assert r.code == 0 and "Text: hi" in r.out, r
