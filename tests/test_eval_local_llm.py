"""`promptops eval` against the real local model (opt-in: set PROMPTOPS_TEST_LLM_URL).

The model is tiny: its triage answers are often wrong and, as a judge, its verdicts are often not
the JSON object asked for. Wrong answers are failures, unreadable verdicts are errors, and the run
completes with a report either way.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from promptops.cli import main
from tests.test_cli import Result

URL = os.environ.get("PROMPTOPS_TEST_LLM_URL")
pytestmark = pytest.mark.skipif(not URL, reason="PROMPTOPS_TEST_LLM_URL is not set")
ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"


def test_eval_with_a_judge_whose_verdicts_are_often_malformed(tmp_path, monkeypatch, capsys):
    prompts, evals = tmp_path / "prompts", tmp_path / "evals"
    prompts.mkdir()
    evals.mkdir()
    text = (ROOT / "prompts" / "support-triage.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "model: {name: gpt-4o-mini, temperature: 0.0, max_tokens: 8}",
        f"model: {{provider: local, name: {MODEL}, temperature: 0.0, max_tokens: 8}}",
    )
    assert MODEL in text
    (prompts / "support-triage.yaml").write_text(text, encoding="utf-8")
    lines = (ROOT / "evals" / "support-triage.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    (evals / "triage.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (evals / "triage.yaml").write_text(
        "name: triage-judged\nprompt: support-triage\ndataset: triage.jsonl\nassert:\n"
        '  - {type: icontains, value: "{{ expected }}"}\n'
        f"  - {{type: judge, rubric: 'Names exactly one support queue.', provider: local, model: {MODEL}}}\n"
        "gate: {min_pass_rate: 0.5}\n",
        encoding="utf-8",
    )
    (tmp_path / "promptops.yaml").write_text(
        f'default_provider: local\nproviders:\n  local: {{base_url: "{URL}", timeout_seconds: 120, '
        "max_retries: 1, max_concurrency: 2}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTOPS_DATABASE_URL", f"sqlite:///{tmp_path / 'llm.db'}")
    for key in ("PROMPTOPS_PROMPTS_DIR", "PROMPTOPS_EVALS_DIR", "PROMPTOPS_CONFIG"):
        monkeypatch.delenv(key, raising=False)

    def cli(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["promptops", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    assert cli("validate").code == 0
    assert cli("sync").code == 0
    r = cli("eval", "--json", "--junit", "report.xml")
    assert r.code in (0, 1), r
    (run,) = json.loads(r.out)["runs"]
    assert [v["version"] for v in run["versions"]] == [1, 2]  # production and the few-shot arm
    for v in run["versions"]:
        assert v["passed"] + v["failed"] + v["errors"] == 6, r
        assert v["pass_rate"] == pytest.approx(v["passed"] / 6)
    root = ET.parse(tmp_path / "report.xml").getroot()
    assert root.get("tests") == "12"
    assert int(root.get("errors")) == sum(v["errors"] for v in run["versions"])
    errors = [e.get("message") for e in root.iter("error")]
    assert all("judge" in m or "call failed" in m for m in errors), errors
