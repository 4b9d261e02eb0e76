"""The eval gate: a declared `requires_eval` keeps an experiment a draft until its arms pass."""

from __future__ import annotations

from dataclasses import replace

import pytest

from promptops.errors import ExperimentStateError, InvalidInput, InvalidPromptFile
from promptops.services.facade import PromptOps
from tests.fakeupstream import fake_upstream  # noqa: F401  (a fixture)
from tests.services.evalproject import write_project
from tests.services.test_evals import run

PASSING = "experiment: {arms: [main, polite], requires_eval: echo-golden}"
FAILING = "experiment: {arms: [main, shout], requires_eval: echo-golden}"


def make(tmp_path, settings, clock, fake, experiment):
    paths = write_project(tmp_path, fake, experiment=experiment)
    service = PromptOps(
        replace(
            settings, prompts_dir=paths["prompts"], evals_dir=paths["evals"], config_path=paths["config"]
        ),
        clock=clock,
    )
    report = service.sync()
    return service, report, paths


def test_draft_until_the_arms_pass_then_the_eval_starts_it(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    ops, report, _ = make(tmp_path, settings, clock, fake_upstream, PASSING)
    try:
        assert any("created as draft" in line and "waiting" in line for line in report.changes)
        (exp,) = ops.experiments.list_experiments(prompt="echo")
        assert exp.status == "draft" and exp.requires_eval == "echo-golden"
        assert exp.gate.waiting == (1, 4) and not exp.gate.passed
        assert "v1, v4" in exp.reason
        with pytest.raises(ExperimentStateError, match="waiting for a passing run"):
            ops.experiments.start(exp.id)
        summary, _ = run(ops)  # default targets: production and the draft's arms
        assert [v.version for v in summary.versions] == [1, 4]
        assert summary.gate_passed and summary.started_experiments == (exp.id,)
        started = ops.experiments.get(exp.id)
        assert started.status == "running" and started.gate.passed
        audit = [a for a in ops.registry.audit(experiment_id=exp.id) if a.action == "experiment.start"]
        assert audit and audit[0].actor == "test"
        assert ops.sync().changes == []  # the running experiment is the file's declaration
    finally:
        ops.close()


def test_a_failing_arm_keeps_the_draft_and_says_why(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    ops, _, _ = make(tmp_path, settings, clock, fake_upstream, FAILING)
    try:
        summary, _ = run(ops)
        assert not summary.gate_passed and summary.started_experiments == ()
        (exp,) = ops.experiments.list_experiments(prompt="echo")
        assert exp.status == "draft"
        assert exp.gate.waiting == ()
        assert any("v2 (shout)" in r and "worse than the baseline" in r for r in exp.gate.reasons)
        assert "min_pass_rate" in exp.reason
    finally:
        ops.close()


def test_a_changed_dataset_needs_a_new_run(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    ops, _, paths = make(tmp_path, settings, clock, fake_upstream, "")
    try:
        run(ops, versions=[4])
        exp = ops.experiments.create("echo", [1, 4], start=True, requires_eval="echo-golden")
        assert exp.status == "running"  # the runs on the current dataset pass
        ops.experiments.stop(exp.id)
        with (paths["evals"] / "echo.jsonl").open("a", encoding="utf-8") as f:
            f.write('{"id": "c11", "vars": {"message": "one more"}, "expected": "one more"}\n')
        exp = ops.experiments.create("echo", [1, 4], start=True, requires_eval="echo-golden")
        assert exp.status == "draft" and exp.gate.waiting == (1, 4)
        summary, _ = run(ops, versions=[4])
        assert summary.started_experiments == (exp.id,)
    finally:
        ops.close()


def test_an_unknown_eval_is_refused_and_nothing_is_created(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    ops, _, _ = make(tmp_path, settings, clock, fake_upstream, "")
    try:
        with pytest.raises(InvalidInput) as info:
            ops.experiments.create("echo", [1, 4], requires_eval="echo-goldne")
        folder = tmp_path / "evals"
        assert info.value.message == (
            f"requires_eval: eval 'echo-goldne' is not defined in {folder} (known: echo-golden)"
        )
        assert info.value.field == "requires_eval"
        assert ops.experiments.list_experiments(prompt="echo") == []
    finally:
        ops.close()


def test_an_eval_removed_after_creation_blocks_with_a_reason(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    ops, _, paths = make(tmp_path, settings, clock, fake_upstream, "")
    try:
        exp = ops.experiments.create("echo", [1, 4], requires_eval="echo-golden")
        (paths["evals"] / "echo.yaml").unlink()
        exp = ops.experiments.get(exp.id)
        assert exp.status == "draft"
        assert "eval 'echo-golden' is not defined" in exp.gate.reasons[0]
    finally:
        ops.close()


def test_without_a_valid_evals_folder_the_name_cannot_be_told_and_is_kept(
    tmp_path,
    settings,
    clock,
    fake_upstream,  # noqa: F811
):
    # No evals folder here (evals may run from another checkout), or one whose files have
    # problems (the eval named may be among them): the draft is created and says why it waits.
    ops, _, paths = make(tmp_path, settings, clock, fake_upstream, "")
    try:
        (paths["evals"] / "other.yaml").write_text("name: other\n", encoding="utf-8")
        exp = ops.experiments.create("echo", [1, 4], requires_eval="nope")
        assert exp.status == "draft" and "is invalid" in exp.gate.reasons[0]
        ops.experiments.stop(exp.id)
        for f in paths["evals"].iterdir():
            f.unlink()
        paths["evals"].rmdir()
        exp = ops.experiments.create("echo", [1, 4], requires_eval="nope")
        assert exp.status == "draft" and "is not defined" in exp.gate.reasons[0]
    finally:
        ops.close()


def test_sync_refuses_a_prompt_file_requiring_an_unknown_eval(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    paths = write_project(
        tmp_path,
        fake_upstream,
        experiment="experiment:\n  arms: [main, polite]\n  requires_eval: echo-goldne\n",
    )
    ops = PromptOps(
        replace(
            settings, prompts_dir=paths["prompts"], evals_dir=paths["evals"], config_path=paths["config"]
        ),
        clock=clock,
    )
    try:
        with pytest.raises(InvalidPromptFile) as info:
            ops.sync()
        assert [str(p) for p in info.value.problems] == [
            f"{paths['prompts'] / 'echo.yaml'}:17: experiment.requires_eval: eval 'echo-goldne' is not "
            f"defined in {paths['evals']} (known: echo-golden)"
        ]
        assert ops.registry.list_prompts() == []  # nothing written
    finally:
        ops.close()
