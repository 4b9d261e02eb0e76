"""`promptops eval` through the entry point: the --json shape, JUnit XML, and exit codes 0/1/2."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

import pytest

from promptops.cli import main
from tests.fakeupstream import fake_upstream  # noqa: F401  (a fixture)
from tests.services.evalproject import write_project
from tests.test_cli import Result

RUN_KEYS = ["eval", "prompt", "dataset_hash", "cases", "versions", "comparisons", "gate"]
VERSION_KEYS = [
    "version",
    "variant",
    "passed",
    "failed",
    "errors",
    "pass_rate",
    "ci_low",
    "ci_high",
    "score_mean",
    "cost_usd",
    "latency_ms_mean",
]
COMPARISON_KEYS = ["version", "baseline", "diff", "ci_low", "ci_high", "p_value", "improved", "regressed"]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, fake_upstream):  # noqa: F811
    paths = write_project(tmp_path, fake_upstream)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTOPS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("PROMPTOPS_PROMPTS_DIR", str(paths["prompts"]))
    monkeypatch.setenv("PROMPTOPS_EVALS_DIR", str(paths["evals"]))
    monkeypatch.setenv("PROMPTOPS_CONFIG", str(paths["config"]))

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
    run.paths = paths  # type: ignore[attr-defined]
    assert run("sync").code == 0
    return run


def test_json_has_exactly_the_documented_shape(cli):
    r = cli("eval", "--json", "--version", "2")
    assert r.code == 1, r  # shout fails the gate
    data = json.loads(r.out)
    assert list(data) == ["runs"]
    (run,) = data["runs"]
    assert list(run) == RUN_KEYS, r
    assert (run["eval"], run["prompt"], run["cases"]) == ("echo-golden", "echo", 10)
    assert len(run["dataset_hash"]) == 64
    assert [list(v) for v in run["versions"]] == [VERSION_KEYS, VERSION_KEYS]
    assert [(v["version"], v["passed"], v["failed"], v["errors"]) for v in run["versions"]] == [
        (1, 10, 0, 0),
        (2, 2, 8, 0),
    ]
    (comparison,) = run["comparisons"]
    assert list(comparison) == COMPARISON_KEYS
    assert (comparison["version"], comparison["baseline"]) == (2, 1)
    assert comparison["diff"] == pytest.approx(-0.8) and comparison["improved"] == []
    assert len(comparison["regressed"]) == 8 and comparison["p_value"] < 0.01
    assert list(run["gate"]) == ["passed", "reasons"] and run["gate"]["passed"] is False
    assert run["gate"]["reasons"]


def test_exit_zero_when_every_gate_passes_and_the_table_shows_intervals(cli):
    r = cli("eval", "echo-golden", "--version", "4")
    assert r.code == 0, r
    assert "95% CI" in r.out and "McNemar p" in r.out and "gate: passed" in r.out, r
    assert "v4 vs v1: diff +0.0 points" in r.out, r


def test_junit_report_parses_with_failures_and_errors(cli):
    report = cli.dir / "report.xml"
    r = cli("eval", "--version", "2", "--version", "3", "--junit", str(report))
    assert r.code == 1, r
    root = ET.fromstring(report.read_bytes())
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("30", "8", "10")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "echo-golden v1 (main)",
        "echo-golden v2 (shout)",
        "echo-golden v3 (broken)",
    ]
    cases = suites[1].findall("testcase")
    assert len(cases) == 10 and cases[0].get("name") == "c1"
    assert cases[0].find("failure") is not None and "HELLO THERE" in cases[0].find("failure").text
    assert all(c.find("error") is not None for c in suites[2].findall("testcase"))
    assert all(c.find("failure") is None and c.find("error") is None for c in suites[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["nope"], "unknown eval 'nope'", id="unknown-eval"),
        pytest.param(["--version", "2", "--label", "production"], "not both", id="version-and-label"),
        pytest.param(["--version", "99"], "version", id="unknown-version"),
        pytest.param(["--baseline", "staging"], "staging", id="unknown-baseline"),
        pytest.param(["--repeat", "0"], "", id="bad-repeat"),
        pytest.param(["--junit", "no/such/dir/report.xml"], "cannot write", id="junit-no-dir"),
        pytest.param(["--junit", "."], "it is a directory", id="junit-a-directory"),
    ],
)
def test_usage_errors_exit_two(cli, args, message):
    r = cli("eval", *args)
    assert r.code == 2, r
    assert message in r.err, r
    assert "Traceback" not in r.err


def test_invalid_eval_file_exits_two_with_every_problem(cli):
    (cli.paths["evals"] / "bad.yaml").write_text(
        "name: bad\nprompt: echo\ncases: [{vars: {msg: hi}}]\nassert: [{type: nope}]\n", encoding="utf-8"
    )
    r = cli("eval")
    assert r.code == 2, r
    assert "bad.yaml:4:" in r.err and "nope" in r.err, r


def test_unconfigured_provider_exits_two(cli):
    cli.paths["config"].write_text(
        'default_provider: other\nproviders:\n  other: {base_url: "http://127.0.0.1:9/v1"}\n',
        encoding="utf-8",
    )
    r = cli("eval")
    assert r.code == 2, r
    assert "fake" in r.err, r


def test_validate_checks_eval_files_against_the_prompts(cli):
    r = cli("validate")
    assert r.code == 0 and "1 prompt file(s) valid, 1 eval file(s) valid" in r.out, r
    (cli.paths["evals"] / "echo.jsonl").write_text(
        '{"id": "a", "vars": {"message": 3}, "expected": "x"}\n'
        '{"id": "b", "vars": {"message": "x", "tone": "dry"}, "expected": "x"}\n',
        encoding="utf-8",
    )
    r = cli("validate")
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert lines[0].endswith("echo.jsonl:1: case 'a': vars.message must be a string, got integer"), r
    assert "echo.jsonl:2: case 'b': vars.tone is not declared" in lines[1], r


def test_an_eval_named_by_its_file(cli):
    r = cli("eval", str(cli.paths["evals"] / "echo.yaml"), "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["runs"][0]["eval"] == "echo-golden"


def test_a_second_run_answers_from_the_shared_cache(cli, fake_upstream):  # noqa: F811
    # v1 and v4 send different requests for every case (v4 adds a system message).
    first = cli("eval", "--json", "--version", "4", "--repeat", "2")
    assert first.code == 0 and fake_upstream.count == 40, first  # 10 cases x 2 versions x 2 slots
    again = cli("eval", "--json", "--version", "4", "--repeat", "2")
    assert fake_upstream.count == 40, again  # a new process would find them in the database too
    # The same figures: a cached answer keeps the cost and latency of the call that made it.
    assert json.loads(again.out)["runs"][0]["versions"] == json.loads(first.out)["runs"][0]["versions"]
    fresh = cli("eval", "--json", "--no-cache")
    assert fresh.code == 0 and fake_upstream.count == 50, fresh
    stats = cli("cache", "stats", "--json")
    assert stats.code == 0 and json.loads(stats.out)["by_prompt"].get("echo") == 40, stats


def test_an_unwritable_junit_report_is_refused_before_any_call(cli, fake_upstream):  # noqa: F811
    before = len(fake_upstream.requests)
    r = cli("eval", "--junit", "no/such/dir/report.xml")
    assert r.code == 2 and "cannot write no/such/dir/report.xml" in r.err, r
    assert len(fake_upstream.requests) == before
