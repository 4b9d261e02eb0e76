"""Sync, versions, labels, rendering and audit through the services, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from promptops.errors import (
    InvalidInput,
    InvalidPromptFile,
    LabelNotFound,
    PromptNotFound,
    VariableError,
    VersionNotFound,
)

TRIAGE = """\
name: triage
description: Route a message.
tags: [support]
model: {name: gpt-4o-mini, temperature: 0.1}
variables:
  message: {type: string, required: true, max_length: 200}
messages:
  - {role: system, content: "Answer with one category."}
  - {role: user, content: "Text: {{ message }}"}
"""


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def test_first_sync_creates_version_one_with_production(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    report = ops.sync()
    assert "triage: new version 1 (main)" in report.changes, report.changes
    v = ops.registry.resolve("triage")
    assert (v.number, v.variant, v.labels) == (1, "main", ("production",))
    assert v.source_path and v.source_path.endswith("triage.yaml")


def test_resync_is_idempotent(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    again = ops.sync()
    assert again.changes == []
    assert len(ops.registry.versions("triage")) == 1


def test_changed_content_makes_a_new_version_without_taking_production(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE.replace("one category", "exactly one category"))
    report = ops.sync()
    assert "triage: new version 2 (main)" in report.changes
    assert ops.registry.resolve("triage").number == 1
    assert ops.registry.resolve("triage", version=2).number == 2


def test_identical_content_never_makes_a_second_version(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE.replace("Answer", "Reply"))
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE)  # back to the first content
    assert ops.sync().changes == []
    assert [v.number for v in ops.registry.versions("triage")] == [1, 2]


def test_a_bad_file_among_good_ones_writes_nothing(ops, prompts_dir):
    write(prompts_dir, "a.yaml", TRIAGE)
    write(prompts_dir, "b.yaml", "name: other\nmessages: 12\n")
    with pytest.raises(InvalidPromptFile) as info:
        ops.sync()
    assert any("b.yaml:2" in str(p) for p in info.value.problems), info.value.problems
    with pytest.raises(PromptNotFound):
        ops.registry.resolve("triage")
    assert ops.registry.list_prompts() == []


def test_dry_run_reports_but_writes_nothing(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    report = ops.sync(dry_run=True)
    assert "triage: new version 1 (main)" in report.changes
    assert ops.registry.list_prompts() == []


def test_variants_become_versions(ops, prompts_dir):
    text = (
        TRIAGE
        + """\
variants:
  terse:
    messages:
      - {role: user, content: "Category of: {{ message }}"}
"""
    )
    write(prompts_dir, "triage.yaml", text)
    ops.sync()
    rows = ops.registry.versions("triage")
    assert [(r.number, r.variant) for r in rows] == [(1, "main"), (2, "terse")]
    assert rows[0].labels == ["production"] and rows[1].labels == []


def test_git_provenance_is_recorded(ops, prompts_dir):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(prompts_dir), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "ada@example.com")
    git("config", "user.name", "Ada Lovelace")
    write(prompts_dir, "triage.yaml", TRIAGE)
    git("add", "triage.yaml")
    git("commit", "-qm", "add triage")
    head = subprocess.run(
        ["git", "-C", str(prompts_dir), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    ops.sync()
    v = ops.registry.resolve("triage")
    assert v.git_commit == head
    assert v.git_author == "Ada Lovelace <ada@example.com>"


def test_label_moves_are_audited_and_rollback_works(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE.replace("Answer", "Reply"))
    ops.sync()
    ops.registry.move_label("triage", 2, "production", actor="tester")
    assert ops.registry.resolve("triage").number == 2
    ops.registry.move_label("triage", 1, "production", actor="tester")  # rollback
    assert ops.registry.resolve("triage").number == 1
    moves = [a for a in ops.registry.audit(prompt="triage") if a.action == "label.move"]
    assert [(m.details["from"], m.details["to"], m.actor) for m in moves] == [
        (2, 1, "tester"),
        (1, 2, "tester"),
        (None, 1, "sync"),
    ]


def test_a_label_is_held_by_one_version(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE.replace("Answer", "Reply"))
    ops.sync()
    ops.registry.move_label("triage", 1, "staging", actor="t")
    ops.registry.move_label("triage", 2, "staging", actor="t")
    labels = {v.number: v.labels for v in ops.registry.versions("triage")}
    assert labels == {1: ["production"], 2: ["staging"]}
    assert ops.registry.resolve("triage", label="staging").number == 2


def test_concurrent_first_moves_of_a_new_label_all_succeed(ops, settings, clock, prompts_dir):
    from promptops.services.facade import PromptOps

    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE.replace("Answer", "Reply"))
    ops.sync()
    other = PromptOps(settings, clock=clock)  # a second server on the same database
    start = threading.Barrier(30)
    errors: list[BaseException] = []

    def move(i: int) -> None:
        start.wait()
        try:
            (ops, other)[i % 2].registry.move_label("triage", 1 + i % 3 % 2, "canary", actor=f"t{i}")
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert errors == []
    moves = [
        a.details for a in reversed(ops.registry.audit(prompt="triage")) if a.details.get("label") == "canary"
    ]
    assert moves[0]["from"] is None and all(m["from"] is not None for m in moves[1:])
    assert all(a["to"] == b["from"] for a, b in zip(moves, moves[1:], strict=False))
    assert ops.registry.resolve("triage", label="canary").number == moves[-1]["to"]


def test_long_actor_names_are_cut_alike_on_every_database(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    ops.registry.move_label("triage", 1, "staging", actor="ü" * 300)
    assert ops.registry.audit(prompt="triage")[0].actor == "ü" * 128


@pytest.mark.parametrize(
    "call, error",
    [
        pytest.param(lambda o: o.registry.resolve("nope"), PromptNotFound, id="unknown-prompt"),
        pytest.param(
            lambda o: o.registry.resolve("triage", version=9), VersionNotFound, id="unknown-version"
        ),
        pytest.param(
            lambda o: o.registry.resolve("triage", label="canary"), LabelNotFound, id="unknown-label"
        ),
        pytest.param(
            lambda o: o.registry.move_label("triage", 1, "bad label!", actor="t"),
            InvalidInput,
            id="bad-label-name",
        ),
        pytest.param(lambda o: o.render("triage", {}), VariableError, id="missing-variable"),
        pytest.param(lambda o: o.render("triage", {"message": 5}), VariableError, id="wrong-type"),
        pytest.param(
            lambda o: o.render("triage", {"message": "x", "extra": 1}),
            VariableError,
            id="undeclared-variable",
        ),
        pytest.param(lambda o: o.render("triage", {"message": "x" * 201}), VariableError, id="too-long"),
    ],
)
def test_mistakes_are_clear_errors(ops, prompts_dir, call, error):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    with pytest.raises(error):
        call(ops)


def test_render_treats_values_as_data(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    out = ops.render("triage", {"message": "{{ 7*7 }}"})
    assert out.messages[1].content == "Text: {{ 7*7 }}"
    assert out.model == {"name": "gpt-4o-mini", "temperature": 0.1}


def test_diff_is_unified(ops, prompts_dir):
    write(prompts_dir, "triage.yaml", TRIAGE)
    ops.sync()
    write(prompts_dir, "triage.yaml", TRIAGE.replace("Answer", "Reply"))
    ops.sync()
    text = ops.registry.diff("triage", 1, 2)
    assert text.startswith("--- triage@1 (main)\n+++ triage@2 (main)\n"), text
    assert "-Answer with one category." in text and "+Reply with one category." in text


def test_example_prompts_sync(ops):
    report = ops.sync([Path(__file__).resolve().parents[2] / "prompts"])
    assert report.prompts >= 3, report.changes
    names = {p.name for p in ops.registry.list_prompts()}
    assert {"support-triage", "sentiment", "grounded-answer"} <= names
