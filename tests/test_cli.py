"""The command line, run in-process through its entry point, with output in assertion messages."""

from __future__ import annotations

import json
import re
import subprocess
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


def test_init_project_validates_as_is(cli, monkeypatch):
    from promptops.evalfiles import load_eval_files, variable_problems
    from promptops.promptfiles import load_prompt_files
    from promptops.providers.config import load_providers_config

    assert cli("init", "proj").code == 0
    proj = cli.dir / "proj"
    assert not (proj / ".env.example").exists()
    monkeypatch.chdir(proj)
    monkeypatch.delenv("PROMPTOPS_PROMPTS_DIR")
    r = cli("validate")
    assert r.code == 0 and "1 prompt file(s) valid" in r.out, r
    (prompt,) = load_prompt_files([proj / "prompts"])
    (evaluation,) = load_eval_files([proj / "evals"])
    assert evaluation.prompt == prompt.name and len(evaluation.cases) == 3, evaluation
    assert variable_problems(evaluation, prompt.content.variables) == []
    config = load_providers_config(proj / "promptops.yaml", env={})
    assert config.default_provider == "local", config
    assert config.providers["local"].base_url == "http://127.0.0.1:8080/v1", config
    readme = (proj / "README.md").read_text(encoding="utf-8")
    assert "promptops serve" in readme and "promptops adopt summarize" in readme, readme


def test_validate_reports_path_and_line(cli):
    bad = add(cli, "name: Bad Name\nmessages:\n  - {role: user, content: hi}\n", "bad.yaml")
    r = cli("validate", str(bad))
    assert r.code == 1, r
    assert r.err.startswith(f"{bad}:1: "), r
    assert "Traceback" not in r.err


def test_validate_refuses_a_macro_that_calls_itself_at_its_line(cli):
    text = (
        "name: loops\nmessages:\n  - role: user\n    content: |\n      Hello\n"
        "      {% macro again(n) %}{{ again(n) }}{% endmacro %}{{ again(1) }}\n"
    )
    bad = add(cli, text, "loops.yaml")
    r = cli("validate", str(bad))
    assert r.code == 1 and r.err.strip() == (
        f"{bad}:6: messages[0].content: template syntax error: macro 'again' calls itself: "
        "it would render until stopped"
    ), r


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


@pytest.mark.parametrize(
    "args, needle",
    [
        pytest.param(["render", "nope"], "prompt 'nope' not found", id="unknown-prompt"),
        pytest.param(["render", "triage"], "message", id="missing-variable"),
        pytest.param(["render", "triage", "--var", "message=x", "--var", "n=abc"], "n", id="bad-integer"),
        pytest.param(["render", "triage", "--var", "oops"], "NAME=VALUE", id="bad-var-syntax"),
        pytest.param(
            ["render", "triage", "--vars-json", '{"message": ' + "[" * 5000 + "]" * 5000 + "}"],
            "--vars-json is nested too deeply",
            id="vars-json-too-deep",
        ),
        pytest.param(
            ["render", "triage", "--version", "9", "--var", "message=x"], "no version 9", id="unknown-version"
        ),
        pytest.param(["label", "triage", "7", "production"], "no version 7", id="label-unknown"),
        pytest.param(["diff", "triage", "1", "5"], "no version 5", id="diff-unknown"),
        pytest.param(["experiment", "status", "42"], "experiment 42 not found", id="no-experiment"),
        pytest.param(["experiment", "start", "triage", "1"], "at least two", id="one-arm"),
        pytest.param(
            ["experiment", "start", "triage", "1", "2", "--set", "min_hour=0"],
            "min_samples_per_arm, min_update_minutes",
            id="unknown-policy-setting",
        ),
    ],
)
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
    r = cli("experiment", "start", "triage", "1", "2", "--metric", "resolved", "--set", "min_hours=0")
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
        assert [p.name for p in ops.registry.list_prompts()] == ["triage"]
    finally:
        ops.close()
    r = cli("render", "triage", "--var", "message=hi")
    assert r.code == 0 and "Text: hi" in r.out, r


@pytest.mark.parametrize(
    "args, needle",
    [
        pytest.param(["keys", "create", "--role", "root"], "'serve', 'admin'", id="bad-role"),
        pytest.param(["experiment", "status", "abc"], "experiment_id", id="bad-integer"),
        pytest.param(
            ["experiment", "start", "triage", "1", "2", "--reward", "percent"],
            "'binary', 'continuous'",
            id="bad-reward",
        ),
        pytest.param(["experiment", "list", "--status", "done"], "'inconclusive'", id="bad-status"),
        pytest.param(["versions", "triage", "--bogus"], "No such option", id="unknown-option"),
    ],
)
def test_usage_errors_print_the_usage_and_exit_2(cli, monkeypatch, args, needle):
    monkeypatch.setenv("COLUMNS", "200")
    r = cli(*args)
    assert r.code == 2, r
    assert r.err.startswith("Usage: promptops") and needle in r.err, r
    assert "unexpected" not in r.err and "Traceback" not in r.err, r


def test_version(cli):
    from promptops import __version__

    r = cli("--version")
    assert r.code == 0 and r.out == f"promptops {__version__}\n", r


@pytest.mark.parametrize(
    "args, choices",
    [
        pytest.param(["experiment", "start"], ["binary|continuous", "thompson|fixed"], id="start"),
        pytest.param(["keys", "create"], ["serve|admin"], id="keys"),
        pytest.param(["experiment", "list"], ["draft|running|completed|inconclusive|stopped"], id="list"),
    ],
)
def test_help_enumerates_the_choices(cli, monkeypatch, args, choices):
    monkeypatch.setenv("COLUMNS", "200")
    r = cli(*args, "--help")
    assert r.code == 0, r
    for choice in choices:
        assert choice in r.out, r


def test_status_choices_are_the_experiment_statuses():
    from promptops.cli import ExperimentStatus as Status
    from promptops.domain import EXPERIMENT_STATUSES

    assert tuple(s.value for s in Status) == EXPERIMENT_STATUSES


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def git_repo(repo: Path, author: str = "Ada Lovelace") -> None:
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ada@example.com")
    git(repo, "config", "user.name", author)


def test_provenance_shows_uncommitted_and_untracked_plainly(cli):
    prompts = cli.dir / "prompts"
    git_repo(prompts)
    add(cli)
    git(prompts, "add", "triage.yaml")
    git(prompts, "commit", "-qm", "add triage")
    head = git(prompts, "rev-parse", "HEAD")
    r = cli("sync")
    assert r.code == 0 and "triage: new version 1 (main)\n" in r.out, r
    add(cli, TRIAGE.replace("Pick one", "Choose one"))
    r = cli("sync")
    assert "triage: new version 3 (main) (uncommitted changes)" in r.out, r
    add(cli, TRIAGE.replace("triage", "fresh"), "fresh.yaml")
    r = cli("sync")
    assert "fresh: new version 1 (main) (untracked in git)" in r.out, r

    rows = json.loads(cli("versions", "triage", "--json").out)
    assert [(v["git_commit"], v["git_state"]) for v in rows] == [
        (head, "clean"),
        (head, "clean"),
        (head, "dirty"),
    ], rows
    fresh = json.loads(cli("versions", "fresh", "--json").out)
    assert (fresh[0]["git_commit"], fresh[0]["git_state"]) == (None, "untracked"), fresh
    table = cli("versions", "triage").out
    assert f"{head[:12]} (uncommitted changes)" in table, table
    assert "(untracked in git)" in cli("versions", "fresh").out


def test_outside_git_there_is_no_provenance(cli):
    add(cli)
    r = cli("sync")
    assert r.code == 0 and "git" not in r.out, r
    rows = json.loads(cli("versions", "triage", "--json").out)
    assert (rows[0]["git_commit"], rows[0]["git_state"]) == (None, None), rows


def test_init_keeps_the_database_out_of_git(cli):
    proj = cli.dir / "proj"
    proj.mkdir()
    git_repo(proj)
    (proj / ".gitignore").write_text("node_modules/", encoding="utf-8")
    r = cli("init", "proj")
    assert r.code == 0, r
    ignore = (proj / ".gitignore").read_text(encoding="utf-8")
    assert ignore.startswith("node_modules/\n"), ignore
    (proj / ".venv" / "bin").mkdir(parents=True)
    for name in ("promptops.db", "promptops.db-wal", "promptops.db-shm", ".venv/bin/python"):
        (proj / name).write_text("x", encoding="utf-8")
    git(proj, "add", "-A")
    staged = git(proj, "diff", "--cached", "--name-only").split()
    assert sorted(staged) == [
        ".gitignore",
        "README.md",
        "evals/summarize-smoke.jsonl",
        "evals/summarize-smoke.yaml",
        "promptops.yaml",
        "prompts/summarize.yaml",
    ], staged


def test_init_writes_a_gitignore_once(cli):
    assert cli("init", "proj").code == 0
    path = cli.dir / "proj" / ".gitignore"
    first = path.read_text(encoding="utf-8")
    assert "promptops.db-wal" in first and ".venv/" in first, first
    (cli.dir / "proj" / "prompts" / "summarize.yaml").unlink()
    assert cli("init", "proj").code == 0
    assert path.read_text(encoding="utf-8") == first


def test_init_refuses_before_writing_anything(cli):
    (cli.dir / "afile").write_text("x", encoding="utf-8")
    r = cli("init", "afile")
    assert (r.code, r.err.strip()) == (1, "error: afile is not a folder; nothing changed"), r
    proj = cli.dir / "proj"
    proj.mkdir()
    (proj / ".gitignore").write_bytes(b"\x00\xff")
    r = cli("init", "proj")
    assert (r.code, r.err.strip()) == (1, "error: proj/.gitignore is not UTF-8 text; nothing changed"), r
    assert [p.name for p in proj.iterdir()] == [".gitignore"]


MARKUP = "Eve [/bold] [red]x\x1b[31m\x9b2J\x07"
SHOWN = "Eve [/bold] [red]x[31m2J"


def test_user_data_is_printed_literally(cli, monkeypatch):
    monkeypatch.setenv("PROMPTOPS_PROMPTS_DIR", "prompts")  # a short source path: no wrapping
    prompts = cli.dir / "prompts"
    git_repo(prompts, author=MARKUP)
    add(cli, TRIAGE.replace("Text: {{ message }}", "Text: [/bold] {{ message }}"), "[red]triage.yaml")
    git(prompts, "add", "-A")
    git(prompts, "commit", "-qm", "add triage")
    assert cli("sync").code == 0
    for args in (["versions", "triage"], ["render", "triage", "--var", f"message={MARKUP}"]):
        r = cli(*args)
        assert r.code == 0 and SHOWN in r.out, r
        assert "\x1b" not in r.out and "\x9b" not in r.out and "\x07" not in r.out, r
    assert "[red]triage.yaml" in cli("versions", "triage").out
    r = cli("keys", "create", "--role", "serve", "--name", MARKUP)
    r = cli("keys", "list")
    assert r.code == 0 and SHOWN in r.out and "\x1b" not in r.out, r
    r = cli("render", "triage", "--var", f"message={MARKUP}", "--json")
    assert json.loads(r.out)["messages"][1]["content"].endswith(MARKUP) and "\x9b" not in r.out
    r = cli("render", "nope [/bold]\x1b[2J")
    assert r.code == 1 and "'nope [/bold]" in r.err and "\x1b" not in r.err, r


def test_an_experiment_whose_control_is_not_production_says_so(cli):
    add(cli)
    cli("sync")
    r = cli("experiment", "start", "triage", "2", "1")
    assert r.code == 0 and "experiment 1 running: triage versions 2, 1" in r.out, r
    assert "control v2 is not the version that held production at the start (v1)" in r.out, r
    r = cli("experiment", "status", "1")
    assert "control v2 is not the version that held production" in r.out, r
    body = json.loads(cli("experiment", "status", "1", "--json").out)
    assert (body["control_version"], body["production_at_start"], body["control_is_production"]) == (
        2,
        1,
        False,
    ), body


def wide(arms: int, *, experiment: bool) -> str:
    """A prompt with `arms` versions (main and arms - 1 variants), declaring an experiment over
    all of them when asked (its `arms:` on line arms + 4)."""
    names = [f"v{i}" for i in range(1, arms)]
    text = "name: wide\ntemplate: x\nvariants:\n" + "".join(f"  {n}: {{template: {n}}}\n" for n in names)
    return text + (f"experiment:\n  arms: [main, {', '.join(names)}]\n" if experiment else "")


def test_an_experiment_of_more_than_max_arms_is_refused_before_anything_is_written(cli):
    add(cli, wide(21, experiment=False), "wide.yaml")
    assert cli("sync").code == 0
    r = cli("experiment", "start", "wide", *map(str, range(1, 22)))
    assert (r.code, r.err.strip()) == (1, "error: an experiment has at most 20 arms, got 21"), r
    assert json.loads(cli("experiment", "list", "--json").out) == [], r
    r = cli("experiment", "start", "wide", *map(str, range(1, 21)))
    assert r.code == 0 and "experiment 1 running" in r.out, r


def test_a_prompt_file_declaring_more_than_max_arms_is_path_and_line(cli):
    path = add(cli, wide(21, experiment=True), "wide.yaml")
    message = f"{path}:25: experiment.arms: an experiment has at most 20 arms, got 21"
    r = cli("validate", str(path))
    assert (r.code, r.err.strip()) == (1, message), r
    r = cli("sync")
    assert r.code == 1 and message in r.err, r
    assert cli("versions", "wide").code == 1
    add(cli, wide(20, experiment=True), "wide.yaml")
    r = cli("sync")
    assert r.code == 0 and "experiment 1 started over versions 1, 2" in r.out, r


def test_a_prompt_file_requiring_an_unknown_eval_is_path_and_line(cli):
    evals = cli.dir / "evals"  # the default evals folder, in the working directory
    evals.mkdir()
    (evals / "golden.yaml").write_text(
        "name: golden\nprompt: wide\ncases: [{vars: {}}]\nassert: [{type: contains, value: x}]\n",
        encoding="utf-8",
    )
    text = wide(2, experiment=True) + "  requires_eval: goldne\n"
    path = add(cli, text, "wide.yaml")
    line = len(text.splitlines())
    message = (
        f"{path}:{line}: experiment.requires_eval: eval 'goldne' is not defined in evals (known: golden)"
    )
    r = cli("validate")
    assert (r.code, r.err.strip()) == (1, message), r
    r = cli("sync")
    assert r.code == 1 and message in r.err, r
    assert cli("versions", "wide").code == 1  # nothing written
    add(cli, text.replace("goldne", "golden"), "wide.yaml")
    r = cli("sync")
    assert r.code == 0 and "experiment 1 created as draft" in r.out, r


def test_plan_prints_one_sentence(cli):
    r = cli("plan", "--base-rate", "0.1", "--lift", "0.1", "--decisions-per-hour", "2000", "--runs", "2")
    assert r.code == 0, r
    assert r.out.startswith("with 2,000 decisions an hour and a 10% base rate, a 10-point lift"), r
    assert "an A/A test would promote wrongly in" in r.out, r


def test_plan_refuses_a_rate_beyond_one(cli):
    r = cli("plan", "--base-rate", "0.95", "--lift", "0.1")
    assert r.code != 0 and "base rate" in r.err and "Traceback" not in r.err, r


@pytest.mark.parametrize("lift", ["-0.02", "0", "nan"])
def test_plan_refuses_a_lift_that_is_not_a_gain(cli, lift):
    """A negative lift asks how soon a worse challenger is promoted: it used to simulate and say
    'not found', as if the experiment were too short."""
    r = cli("plan", "--base-rate", "0.1", "--lift", lift)
    assert r.code == 1 and r.err.count("\n") == 1 and "lift must be above 0" in r.err, r


def test_status_shows_flags_guardrails_metrics_and_the_holdout(cli):
    from promptops.config import Settings
    from promptops.db.models import ExperimentRow
    from promptops.services.facade import PromptOps

    add(cli)
    cli("sync")
    assert cli("experiment", "start", "triage", "1", "2").code == 0
    service = PromptOps(
        Settings(database_url=f"sqlite:///{cli.dir / 'cli.db'}", prompts_dir=cli.dir / "prompts")
    )
    try:
        with service.ctx.tx() as s:
            exp = s.get(ExperimentRow, 1)
            exp.holdout = {"new": 1, "old": 0, "started_at": 0.0, "decisions_at_start": 0}
            exp.snapshot = {
                "reason": "promotion frozen by a safety flag",
                "flags": [
                    {
                        "flag": "feedback",
                        "sentence": "v2 (terse)'s feedback arrives later "
                        "than the window (80% late): lengthen `attribution_window_hours`",
                        "evidence": {},
                    }
                ],
                "metrics": {"cost_usd": [{"mean": 0.001, "ci_low": 0.0009, "ci_high": 0.0011, "n": 400}] * 2},
                "guardrails": [
                    {
                        "arm": 1,
                        "metric": "cost_usd",
                        "state": "blocked",
                        "diff": 0.2,
                        "diff_low": 0.1,
                        "diff_high": 0.3,
                        "relative": True,
                        "sentence": "blocked: v2 (terse) cost_usd +24% (+18% .. +31%) > 10% allowed",
                    }
                ],
                "holdout": {"p_old_better": 0.42},
            }
    finally:
        service.close()
    r = cli("experiment", "status", "1")
    assert r.code == 0, r
    text = " ".join(r.out.split())
    assert (
        "FROZEN (feedback): v2 (terse)'s feedback arrives later than the window (80% late): "
        "lengthen `attribution_window_hours`"
    ) in text, r
    assert "guardrail blocked: v2 (terse) cost_usd +24% (+18% .. +31%) > 10% allowed" in text, r
    assert "holdout ended: v2 promoted, v1 keeps its holdout share; P(v1 better) 42.0%" in text, r
    assert "0.001 (0.0009 .. 0.0011), n 400" in text, r
    body = json.loads(cli("experiment", "status", "1", "--json").out)
    assert body["flags"] == ["feedback"] and body["holdout"]["p_old_better"] == 0.42, body
    assert body["arms"][1]["guardrails"][0]["state"] == "blocked", body


def test_plan_refuses_units_beyond_the_scenario_bound(cli):
    for units in ("nan", "1e308", "10001"):
        r = cli("plan", "--base-rate", "0.1", "--lift", "0.1", "--units", units)
        assert (r.code, r.err.strip()) == (
            1,
            "error: units must make between 1 and 10000 decisions on average",
        ), r


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--arms", "1000000000", "error: a plan has at most 20 arms, as an experiment does"),
        ("--arms", "1", "error: a plan needs at least two arms"),
        ("--runs", "100000000", "error: runs must be at most 100000"),
        ("--runs", "0", "error: runs must be at least 1"),
        ("--decisions-per-hour", "nan", "error: decisions per hour must be a number > 0 and <= 1e+09"),
        ("--decisions-per-hour", "1e308", "error: decisions per hour must be a number > 0 and <= 1e+09"),
        ("--decisions-per-hour", "0", "error: decisions per hour must be a number > 0 and <= 1e+09"),
        ("--feedback-rate", "nan", "error: the feedback rate must lie in (0, 1]"),
    ],
)
def test_plan_refuses_absurd_numbers_in_one_line(cli, option, value, message):
    r = cli("plan", "--base-rate", "0.1", "--lift", "0.1", option, value)
    assert (r.code, r.err.strip()) == (1, message), r


def test_simulate_refuses_absurd_runs_and_traffic(cli):
    path = cli.dir / "tiny.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    for runs, message in (("1000000000", "at most 100000"), ("0", "at least 1")):
        r = cli("simulate", str(path), "--runs", runs)
        assert (r.code, r.err.strip()) == (1, f"error: runs must be {message}"), r
    huge = SCENARIO.replace("runs: 3", "runs: 1000000000").replace("decisions: 400", "decisions: 10000000000")
    path.write_text(huge.replace("decisions_per_hour: 100", "decisions_per_hour: 1.0e+308"), encoding="utf-8")
    r = cli("simulate", str(path))
    assert r.code == 1 and r.err.splitlines() == [
        f"{path}:2: runs: must be an integer <= 100000 (got 1000000000)",
        f"{path}:4: decisions: must be an integer <= 10000000 (got 10000000000)",
        f"{path}:5: decisions_per_hour: must be a number > 0 and <= 1e+09 (got 1e+308)",
    ], r


TRIAGE_JSON = """\
{
  "name": "triage",
  "variables": {"message": {"type": "string", "required": true}, "n": {"type": "integer", "default": 3}},
  "messages": [
    {"role": "system", "content": "Pick one of {{ n }} categories."},
    {"role": "user", "content": "Text: {{ message }}"}
  ],
  "variants": {"terse": {"messages": [{"role": "user", "content": "{{ n }} categories. {{ message }}"}]}}
}
"""


def test_json_prompt_files_validate_and_sync_like_yaml(cli):
    add(cli, TRIAGE_JSON, "triage.json")
    r = cli("validate")
    assert r.code == 0 and "1 prompt file(s) valid" in r.out, r
    r = cli("sync")
    assert r.code == 0 and "triage: new version 1 (main)" in r.out, r
    assert "triage: new version 2 (terse)" in r.out, r
    r = cli("render", "triage", "--var", "message=hi", "--json")
    assert json.loads(r.out)["messages"][1]["content"] == "Text: hi", r


def test_json_and_yaml_of_one_prompt_hash_alike(cli):
    add(cli, TRIAGE_JSON, "triage.json")
    assert cli("sync").code == 0
    (cli.dir / "prompts" / "triage.json").unlink()
    add(cli)
    r = cli("sync")
    assert r.code == 0 and "up to date" in r.out, r


@pytest.mark.parametrize(
    "text, line, needle",
    [
        pytest.param(
            '{\n  "name": "triage",\n  "messages": [\n    {"role": "user", "content": "x"},\n  ]\n}\n',
            5,
            "",
            id="trailing-comma",
        ),
        pytest.param('{\n  "name": "Bad Name",\n  "template": "x"\n}\n', 2, "name", id="bad-name"),
        pytest.param('{\n  "name": "t",\n  "template": "{{ y }}"\n}\n', 3, "undeclared", id="undeclared"),
    ],
)
def test_bad_json_prompt_files_are_path_and_line(cli, text, line, needle):
    bad = add(cli, text, "bad.json")
    for command in ("validate", "sync"):
        r = cli(command)
        assert r.code == 1, r
        assert r.err.startswith(f"{bad}:{line}: ") and needle in r.err, r
        assert "Traceback" not in r.err, r


SCENARIO = """\
name: tiny
runs: 3
seed: 1
decisions: 400
decisions_per_hour: 100
arms:
  - {name: control, mean: 0.10}
  - {name: challenger, mean: 0.30}
policy: {min_samples_per_arm: 50, min_hours: 0, update_every: 50, min_update_minutes: 0}
"""


def test_simulate_prints_rounded_figures_plainly_or_as_a_table(cli):
    path = cli.dir / "tiny.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    exact = json.loads(cli("simulate", str(path), "--json").out)
    plain = cli("simulate", str(path), "--plain")
    assert plain.code == 0, plain
    lines = plain.out.splitlines()
    assert lines[0] == f"scenario: {path}" and "runs: 3" in lines, plain
    assert any(line.startswith("wrong promotions: ") and line.endswith("%)") for line in lines), plain
    regret = next(line for line in lines if line.startswith("mean regret (rewards lost): "))
    assert regret.startswith(f"mean regret (rewards lost): {exact['mean_regret']:,.1f}"), (regret, exact)
    assert "% of an even split)" in regret, regret
    assert not any(len(n) > 8 for n in re.findall(r"\d[\d.,]*", plain.out)), plain  # rounded
    table = cli("simulate", str(path), "--table")
    assert table.code == 0 and "┃ figure" in table.out and "wrong promotions" in table.out, table


def test_simulate_help_defines_regret_and_wrong_promotion(cli):
    r = cli("simulate", "--help")
    text = " ".join(r.out.split())
    assert "A wrong promotion is a run that ends with an arm" in text, r
    assert "Regret is the sum, over a run's decisions" in text, r
    assert "--plain" in text and "--table" in text, r


def test_simulate_scenario_errors_are_path_and_line(cli):
    path = cli.dir / "bad.yaml"
    path.write_text(
        SCENARIO.replace("runs: 3", "runs: 0").replace("decisions: 400", "decisions: [x"), encoding="utf-8"
    )
    r = cli("simulate", str(path))
    assert r.code == 1 and r.err.startswith(f"{path}:"), r
    assert all(re.match(rf"{re.escape(str(path))}:\d+: ", line) for line in r.err.splitlines()), r
    assert "Traceback" not in r.err, r


def test_plan_prints_rounded_figures_and_defines_a_wrong_promotion(cli):
    args = ("plan", "--base-rate", "0.1", "--lift", "0.1", "--decisions-per-hour", "2000", "--runs", "2")
    exact = json.loads(cli(*args, "--json").out)
    r = cli(*args, "--plain")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].startswith("with 2,000 decisions an hour"), r
    assert f"chance to find the lift: {100 * exact['detection_rate']:.0f}% of 2 runs" in lines, r
    assert f"A/A wrong promotions: {100 * exact['aa_false_promotion']:.0f}% of 2 runs" in lines, r
    assert f"median decisions to find it: {exact['median_decisions']:,.0f}" in lines, r
    table = cli(*args, "--table")
    assert table.code == 0 and "┃ figure" in table.out, table
    text = " ".join(cli("plan", "--help").out.split())
    assert "A wrong promotion, in the A/A runs" in text and "--plain" in text, text


def test_init_that_cannot_write_says_so_and_leaves_nothing_half_written(cli):
    r = cli("init", "/proc/no-such-project")
    assert r.code == 1 and r.err.startswith("error: cannot write /proc/no-such-project"), r
    assert "Traceback" not in r.err and "unexpected" not in r.err
    proj = cli.dir / "proj"
    proj.mkdir()
    (proj / "promptops.yaml").symlink_to("/proc/no-such-dir/promptops.yaml")  # written after prompts/, evals/
    r = cli("init", "proj")
    assert r.code == 1 and "cannot write" in r.err and r.err.strip().endswith("nothing changed"), r
    assert [p.name for p in proj.iterdir()] == ["promptops.yaml"]
