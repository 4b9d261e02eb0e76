"""`promptops adopt`: the prompt file's main takes the production version, hashing alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from promptops import errors
from promptops.db.models import ExperimentRow, PromptRow
from promptops.promptfiles import load_prompt_file

TRIAGE = """\
# Routes a message to a queue.
name: triage
model: {name: small, temperature: 0.0}   # cheap and deterministic
variables:
  message: {type: string, required: true}
messages:
  - {role: system, content: "Answer with one category."}   # the rules
  - {role: user, content: "Text: {{ message }}"}
variants:
  few-shot:   # adds an example
    model: {temperature: 0.2, max_tokens: 5}
    messages:
      - {role: system, content: "Answer with one category."}
      - {role: user, content: "Text: my parcel is late"}
      - {role: assistant, content: shipping}   # a labelled example
      - {role: user, content: "Text: {{ message }}"}
  shouting:
    messages:
      - {role: user, content: "TEXT: {{ message }}"}
experiment:   # ends with a winner
  metric: resolved
  arms: [main, few-shot, shouting]
"""


def running(ops, prompt: str) -> int | None:
    """The id of the prompt's running experiment, if any."""
    with ops.ctx.tx() as s:
        return s.scalar(
            select(ExperimentRow.id)
            .join(PromptRow, ExperimentRow.running_prompt_id == PromptRow.id)
            .where(PromptRow.name == prompt)
        )


def number_of(ops, prompt: str, variant: str) -> int:
    """The version number synced from a variant."""
    number = 1
    while ops.registry.resolve(prompt, version=number).variant != variant:
        number += 1
    return number


def promote(ops, variant: str, prompt: str = "triage") -> int:
    """Sync, then end the running experiment with `variant` as the winner; its version."""
    ops.sync()
    number = number_of(ops, prompt, variant)
    ops.experiments.promote(running(ops, prompt), version=number, actor="test")
    return number


@pytest.fixture
def triage(prompts_dir: Path) -> Path:
    path = prompts_dir / "triage.yaml"
    path.write_text(TRIAGE, encoding="utf-8")
    return path


def test_adopt_makes_main_the_production_content(ops, settings, triage):
    number = promote(ops, "few-shot")
    report = ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert (report.version, report.removed_variant, report.removed_experiment) == (
        number,
        "few-shot",
        True,
    ), report
    text = triage.read_text(encoding="utf-8")
    production = ops.registry.resolve("triage", label="production")
    assert load_prompt_file(triage).content.content_hash() == production.content_hash
    # Comments, key order and the untouched variant survive; the winner and the experiment go.
    assert text.startswith("# Routes a message to a queue.\nname: triage\nmodel:"), text
    assert "# cheap and deterministic" in text and "# a labelled example" in text, text
    assert "few-shot" not in text and "experiment" not in text, text
    assert "shouting:" in text, text
    before = len(ops.registry.versions("triage"))
    report = ops.sync()
    assert report.changes == [], report.changes
    assert len(ops.registry.versions("triage")) == before
    assert running(ops, "triage") is None


def test_adopt_a_model_only_variant(ops, settings, prompts_dir):
    path = prompts_dir / "plain.yaml"
    path.write_text(
        "name: plain\ntemplate: hi  # short\nvariants:\n  warm:\n"
        "    model: {name: big, temperature: 0.7}\n"
        "experiment: {metric: ok, arms: [main, warm]}\n",
        encoding="utf-8",
    )
    promote(ops, "warm", "plain")
    ops.adoption.adopt("plain", folder=settings.prompts_dir)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("name: plain\nmodel:"), text
    assert "# short" in text and "variants" not in text, text
    assert ops.sync().changes == []


def test_dry_run_prints_the_diff_and_writes_nothing(ops, settings, triage):
    promote(ops, "few-shot")
    report = ops.adoption.adopt("triage", folder=settings.prompts_dir, dry_run=True)
    assert triage.read_text(encoding="utf-8") == TRIAGE
    assert report.diff.startswith(f"--- a/{triage}\n+++ b/{triage}\n"), report.diff
    assert "-experiment:   # ends with a winner" in report.diff, report.diff


def test_json_prompt_file(ops, settings, prompts_dir):
    path = prompts_dir / "plain.json"
    path.write_text(
        json.dumps(
            {
                "name": "plain",
                "variables": {"topic": {"type": "string", "required": True}},
                "template": "Write about {{ topic }}.",
                "variants": {"poem": {"template": "A poem about {{ topic }}."}},
                "experiment": {"metric": "liked", "arms": ["main", "poem"]},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    promote(ops, "poem", "plain")
    ops.adoption.adopt("plain", folder=settings.prompts_dir)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data) == ["name", "variables", "template"], data
    assert data["template"] == "A poem about {{ topic }}.", data
    assert ops.sync().changes == []


def test_refusals(ops, settings, triage):
    ops.sync()
    with pytest.raises(errors.ExperimentStateError, match="still running"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    ops.experiments.promote(running(ops, "triage"), version=1, actor="test")  # the control wins
    with pytest.raises(errors.InvalidInput, match="already the main content"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    draft = TRIAGE.replace("  arms: [main, few-shot, shouting]", "  arms: [main, shouting]\n  status: draft")
    triage.write_text(draft, encoding="utf-8")
    ops.registry.move_label("triage", number_of(ops, "triage", "few-shot"), "production", actor="t")
    with pytest.raises(errors.ExperimentStateError, match="declares a draft experiment"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert triage.read_text(encoding="utf-8") == draft
    triage.write_text(TRIAGE, encoding="utf-8")
    triage.rename(triage.with_name("moved.txt"))
    with pytest.raises(errors.InvalidInput, match="no prompt file under .* defines 'triage'"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert triage.with_name("moved.txt").read_text(encoding="utf-8") == TRIAGE


def test_cli_adopt(ops, settings, triage, monkeypatch, capsys):
    from promptops.cli import main

    promote(ops, "few-shot")
    monkeypatch.setenv("PROMPTOPS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PROMPTOPS_PROMPTS_DIR", str(settings.prompts_dir))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["promptops", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = run("adopt", "triage", "--dry-run")
    assert code == 0 and out.startswith("--- a/"), (code, out, err)
    assert triage.read_text(encoding="utf-8") == TRIAGE
    code, out, err = run("adopt", "triage")
    assert code == 0 and "main is now version" in out, (code, out, err)
    assert "    model: {max_tokens: null, temperature: 0.0}\n" in triage.read_text(encoding="utf-8")
    code, out, err = run("adopt", "triage")
    assert code == 1 and err.startswith("error: triage: production") and err.count("\n") == 1, err
    code, out, err = run("adopt", "nope")
    assert code == 1 and "not found" in err and err.count("\n") == 1, err


def test_adopt_carries_the_response_cache_settings(ops, settings, prompts_dir):
    path = prompts_dir / "plain.yaml"
    path.write_text(
        "name: plain\ntemplate: hi\ncache: {mode: exact, ttl_hours: 1}\nvariants:\n"
        "  fresh:\n    template: hello\n    cache: {ttl_hours: 5}\n"
        "  other:\n    template: hey\n"
        "experiment: {metric: ok, arms: [main, fresh, other]}\n",
        encoding="utf-8",
    )
    promote(ops, "fresh", "plain")
    ops.adoption.adopt("plain", folder=settings.prompts_dir)
    adopted = load_prompt_file(path)
    assert adopted.content.content_hash() == ops.registry.resolve("plain", label="production").content_hash
    assert adopted.content.to_dict()["cache"] == {"mode": "exact", "ttl_hours": 5.0}
    assert adopted.variants["other"].to_dict()["cache"] == {"mode": "exact", "ttl_hours": 1.0}
    assert ops.sync().changes == []


def test_refuses_unsynced_edits_a_symlink_and_a_read_only_file(ops, settings, triage, tmp_path):
    promote(ops, "few-shot")
    original = triage.read_text(encoding="utf-8")
    # main edited after the sync: adopt would overwrite the edit
    triage.write_text(original.replace("Answer with one category.", "One category."), encoding="utf-8")
    with pytest.raises(errors.InvalidInput, match="never synced"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    # the promoted variant edited after the sync: adopt would drop it
    triage.write_text(original.replace("shipping}", "delivery}"), encoding="utf-8")
    with pytest.raises(errors.InvalidInput, match="variant 'few-shot' has changes"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    triage.write_text(original, encoding="utf-8")
    triage.chmod(0o444)
    with pytest.raises(errors.InvalidInput, match="read-only"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    triage.chmod(0o644)
    target = tmp_path / "elsewhere.yaml"
    triage.rename(target)
    triage.symlink_to(target)
    with pytest.raises(errors.InvalidInput, match="symbolic link"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert target.read_text(encoding="utf-8") == original
    assert triage.is_symlink()


def test_adopt_replaces_the_file_whole_and_keeps_crlf_and_mode(ops, settings, triage, monkeypatch):
    from promptops.services import adoption

    promote(ops, "few-shot")
    triage.write_bytes(TRIAGE.replace("\n", "\r\n").encode())
    triage.chmod(0o640)
    # The file changes between reading and writing: nothing is written, no temporary file left.
    real = adoption._replace_file

    def racing(path, before, new):  # type: ignore[no-untyped-def]
        path.write_bytes(path.read_bytes() + b"# edited meanwhile\r\n")
        real(path, before, new)

    monkeypatch.setattr(adoption, "_replace_file", racing)
    with pytest.raises(errors.InvalidInput, match="changed while adopting"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert triage.read_bytes().endswith(b"# edited meanwhile\r\n")
    assert sorted(p.name for p in triage.parent.iterdir()) == ["triage.yaml"]
    triage.write_bytes(TRIAGE.replace("\n", "\r\n").encode())
    monkeypatch.setattr(adoption, "_replace_file", real)
    ops.adoption.adopt("triage", folder=settings.prompts_dir)
    raw = triage.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")  # every line still ends in CRLF
    assert b"# cheap and deterministic" in raw
    assert triage.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in triage.parent.iterdir()) == ["triage.yaml"]
    ops.sync()
    assert number_of(ops, "triage", "main") == 1  # no new version: main hashes as production


def test_a_write_failure_leaves_the_file_whole(ops, settings, triage, monkeypatch):
    from promptops.services import adoption

    promote(ops, "few-shot")

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adoption.os, "fsync", full)
    with pytest.raises(errors.InvalidInput, match="cannot write: No space left on device"):
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert triage.read_text(encoding="utf-8") == TRIAGE
    assert sorted(p.name for p in triage.parent.iterdir()) == ["triage.yaml"]


def test_refuses_a_prompt_defined_in_two_files(ops, settings, triage):
    promote(ops, "few-shot")
    copy = triage.with_name("a-copy.yaml")
    copy.write_text(TRIAGE, encoding="utf-8")
    with pytest.raises(errors.InvalidPromptFile) as info:
        ops.adoption.adopt("triage", folder=settings.prompts_dir)
    assert "duplicate prompt name 'triage'" in str(info.value.problems[0])
    assert triage.read_text(encoding="utf-8") == copy.read_text(encoding="utf-8") == TRIAGE


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_byte_order_mark_is_kept(suffix):
    from promptops.promptedit import adopt_text
    from promptops.promptfiles import parse_prompt_text

    body = {"name": "j", "template": "a", "variants": {"b": {"template": "b"}}}
    text = "\ufeff" + (
        json.dumps(body) if suffix == "json" else "name: j\ntemplate: a\nvariants:\n  b: {template: b}\n"
    )
    definition = parse_prompt_text(text, path=f"j.{suffix}")
    new = adopt_text(text, path=f"j.{suffix}", content=definition.variants["b"], variant="b").text
    assert new.startswith("\ufeff") and new.count("\ufeff") == 1
    assert parse_prompt_text(new, path=f"j.{suffix}").content.template == "b"
