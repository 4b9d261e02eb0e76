"""The eval service against the fake upstream: pass rates, errors, repeat slots, stored runs, targets."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from promptops.evalfiles import load_eval_files
from promptops.providers import Providers, load_providers_config
from promptops.services import evalcalls
from promptops.services.evalcalls import MemoryAnswers, ProviderCalls
from promptops.services.evalrunner import run_eval
from promptops.services.facade import PromptOps
from tests.fakeupstream import fake_upstream  # noqa: F401  (a fixture)
from tests.services.evalproject import write_project


@pytest.fixture
def project(tmp_path, settings, clock, fake_upstream):  # noqa: F811
    paths = write_project(tmp_path, fake_upstream)
    service = PromptOps(
        replace(
            settings, prompts_dir=paths["prompts"], evals_dir=paths["evals"], config_path=paths["config"]
        ),
        clock=clock,
    )
    service.sync()
    yield service
    service.close()


def run(ops, *, versions=(), labels=(), repeat=None, cache=None, concurrency=4):
    """Run the project's eval and record it; returns (summary, calls)."""
    definition = ops.evals.definitions()[0]
    base, targets = ops.evals.targets(definition, versions=versions, labels=labels)

    async def go():
        providers = Providers(load_providers_config(ops.settings.config_path))
        calls = ProviderCalls(providers, cache=cache)
        try:
            result = await run_eval(
                definition,
                targets,
                baseline=base,
                complete=calls.complete,
                judge=calls.judge,
                repeat=repeat,
                concurrency=concurrency,
            )
        finally:
            await providers.aclose()
        return result, calls

    result, calls = asyncio.run(go())
    return ops.evals.record(result, actor="test"), calls


def test_pass_rates_paired_comparison_and_gate(project):
    summary, _ = run(project, versions=[2])
    main, shout = summary.versions
    assert (main.version, main.passed, main.failed, main.errors) == (1, 10, 0, 0)
    assert (shout.version, shout.passed, shout.failed, shout.errors) == (2, 2, 8, 0)
    assert shout.pass_rate == pytest.approx(0.2)
    assert shout.ci_low < 0.2 < shout.ci_high
    (comparison,) = summary.comparisons
    assert (comparison.version, comparison.baseline) == (2, 1)
    assert comparison.diff == pytest.approx(-0.8)
    assert comparison.improved == ()
    assert set(comparison.regressed) == {"c1", "c2", "c3", "c5", "c6", "c8", "c9", "c10"}
    assert comparison.p_value == pytest.approx(2 / 2**8)
    assert not summary.gate_passed
    assert any("v2 (shout)" in r and "min_pass_rate" in r for r in summary.gate_reasons)
    assert any("worse than the baseline" in r for r in summary.gate_reasons)


def test_call_errors_are_counted_as_errors_not_failures(project):
    summary, _ = run(project, versions=[3])
    broken = summary.versions[1]
    assert (broken.passed, broken.failed, broken.errors, broken.pass_rate) == (0, 0, 10, 0.0)
    detail = project.evals.get_run(summary.id)
    cases = [c for c in detail.cases if c.version == 3]
    assert len(cases) == 10
    assert all(c.status == "error" and "call failed" in c.reason for c in cases)
    assert all(c.errors[0] and "400" in c.errors[0] for c in cases)


def test_repeat_uses_one_cache_slot_per_repetition(project, fake_upstream):  # noqa: F811
    cache = MemoryAnswers()
    summary, calls = run(project, repeat=3, cache=cache)
    assert summary.repeat == 3
    # One version (production): 10 cases x 3 repetitions, each a distinct slot and a real call.
    assert fake_upstream.count == 30 and calls.upstream_calls == 30 and len(cache) == 30
    bodies = {r.body for r in fake_upstream.requests}
    assert len(bodies) == 10  # the same request three times: only the slot tells them apart
    again, calls = run(project, repeat=3, cache=cache)
    assert fake_upstream.count == 30 and calls.upstream_calls == 0 and calls.cache_hits == 30
    assert again.versions[0].passed == 10


def test_stored_run_keeps_outputs_and_assertions(project):
    summary, _ = run(project, versions=[2])
    detail = project.evals.get_run(summary.id)
    assert detail.run == replace(summary, started_experiments=())
    first = next(c for c in detail.cases if c.version == 2 and c.case_id == "c1")
    assert first.status == "failed"
    assert first.outputs == ("echo: HELLO THERE",)
    assert [(a.type, a.passed) for a in first.assertions] == [("contains", False)]
    assert first.cost_usd is None and first.latency_ms is not None
    assert [c.case_id for c in detail.cases if c.version == 1][:3] == ["c1", "c2", "c3"]
    assert project.evals.runs(eval_name="echo-golden")[0].id == summary.id
    listing = project.evals.listing()
    (item,) = listing.evals
    assert (item.name, item.prompt, item.cases, item.min_pass_rate) == ("echo-golden", "echo", 10, 0.5)
    assert item.latest_runs[0].id == summary.id and listing.problems == ()


def test_default_targets_are_production_and_the_experiment_arms(project):
    definition = project.evals.definitions()[0]
    base, targets = project.evals.targets(definition)
    assert base.number == 1 and [v.number for v in targets] == [1]
    project.experiments.create("echo", [2, 4], start=False)
    base, targets = project.evals.targets(definition)
    assert [v.number for v in targets] == [1, 2, 4]
    project.registry.move_label("echo", 4, "staging", actor="t")
    base, targets = project.evals.targets(definition, labels=["staging"], baseline="staging")
    assert base.number == 4 and [v.number for v in targets] == [4]


def test_eval_cases_are_checked_against_the_registry(project, tmp_path):
    bad = tmp_path / "evals" / "bad.yaml"
    bad.write_text(
        "name: bad\nprompt: echo\ncases: [{vars: {msg: hi}}]\nassert: [{type: is_json}]\n", encoding="utf-8"
    )
    from promptops.errors import InvalidEvalFile

    with pytest.raises(InvalidEvalFile) as info:
        project.evals.definitions()
    assert [p.line for p in info.value.problems] == [3, 3]
    assert "vars.msg is not declared" in str(info.value.problems[0]) + str(info.value.problems[1])


def test_load_eval_files_example_is_valid():
    from pathlib import Path

    (definition,) = load_eval_files([Path(__file__).resolve().parents[2] / "evals"])
    assert definition.name == "support-triage-golden" and len(definition.cases) >= 20


def test_judge_verdicts_unreadable_are_errors_and_judge_calls_are_cached(project, fake_upstream):  # noqa: F811
    from tests.fakeupstream import Reply

    fake_upstream.models["judge-ok"] = Reply(content='{"reasoning": "fine", "pass": true, "score": 0.9}')
    fake_upstream.models["judge-bad"] = Reply(content="I think it passes, more or less.")
    folder = project.settings.evals_dir
    for name, model in (("good", "judge-ok"), ("bad", "judge-bad")):
        (folder / f"{name}.yaml").write_text(
            f"name: judged-{name}\nprompt: echo\ncases:\n"
            "  - {id: a, vars: {message: one}}\n  - {id: b, vars: {message: two}}\n"
            f"assert: [{{type: judge, rubric: Polite., provider: fake, model: {model}}}]\n",
            encoding="utf-8",
        )
    cache = MemoryAnswers()
    by_name = {d.name: d for d in project.evals.definitions()}

    async def go(definition):
        base, targets = project.evals.targets(definition)
        providers = Providers(load_providers_config(project.settings.config_path))
        calls = ProviderCalls(providers, cache=cache)
        try:
            result = await run_eval(
                definition, targets, baseline=base, complete=calls.complete, judge=calls.judge
            )
        finally:
            await providers.aclose()
        return result, calls

    good, calls = asyncio.run(go(by_name["judged-good"]))
    assert good.versions[0].rate.passed == 2 and calls.upstream_calls == 4  # 2 outputs + 2 verdicts
    assert good.versions[0].score_mean == pytest.approx(0.9)
    bad, _ = asyncio.run(go(by_name["judged-bad"]))
    assert (bad.versions[0].rate.errors, bad.versions[0].rate.passed) == (2, 0)
    assert all("unreadable judge verdict" in c.grade.reason for c in bad.versions[0].cases)
    again, calls = asyncio.run(go(by_name["judged-good"]))
    assert calls.upstream_calls == 0 and again.versions[0].rate.passed == 2


def test_calls_queue_for_the_providers_bound_instead_of_timing_out(project, fake_upstream):  # noqa: F811
    from tests.fakeupstream import Reply

    fake_upstream.reply = Reply(latency=0.3)
    project.settings.config_path.write_text(
        f'default_provider: fake\nproviders:\n  fake: {{base_url: "{fake_upstream.base_url}", '
        "max_retries: 0, max_concurrency: 2, timeout_seconds: 1}\n",
        encoding="utf-8",
    )
    # Ten calls at once through two connections: the last would wait 1.2 s for a connection,
    # past the provider's 1 s timeout, if the eval did not queue them itself.
    summary, calls = run(project, concurrency=10)
    assert (summary.versions[0].passed, summary.versions[0].errors) == (10, 0)
    assert fake_upstream.max_in_flight <= 2


class CountingAnswers(MemoryAnswers):
    """A memory cache that counts its lookups: one `prefetch` per chunk, `get` per call."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        super().__init__()
        self.chunks: list[int] = []
        self.fail_after = fail_after

    async def prefetch(self, keys):
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise OSError("the cache's database is gone")
        self.chunks.append(len(keys))
        await asyncio.sleep(0.01)  # a lookup takes a while: the calls of loaded chunks go on


def test_answers_are_looked_up_ahead_in_chunks_in_the_runs_order(project, fake_upstream, monkeypatch):  # noqa: F811
    monkeypatch.setattr(evalcalls, "PREFETCH_FIRST_CHUNK", 4)
    definition = project.evals.definitions()[0]
    base, targets = project.evals.targets(definition, versions=[2])

    async def go(cache):
        providers = Providers(load_providers_config(project.settings.config_path))
        calls = ProviderCalls(providers, cache=cache)
        try:
            loading = calls.prefetch_ahead(
                ((v, c.vars, slot) for c in definition.cases for slot in range(3) for v in targets), chunk=16
            )
            result = await run_eval(
                definition, targets, baseline=base, complete=calls.complete, repeat=3, concurrency=4
            )
            await loading
        finally:
            await providers.aclose()
        return result, calls

    cache = CountingAnswers()
    first, calls = asyncio.run(go(cache))
    # 10 cases x 3 slots x 2 versions: chunks grow from the first one to the cap.
    assert cache.chunks == [4, 8, 16, 16, 16] and calls.upstream_calls == 60
    cache.chunks.clear()
    again, calls = asyncio.run(go(cache))
    assert calls.upstream_calls == 0 and calls.cache_hits == 60 and sum(cache.chunks) == 60
    assert [v.rate.passed for v in again.versions] == [v.rate.passed for v in first.versions]

    broken = CountingAnswers(fail_after=2)
    with pytest.raises(OSError, match="database is gone"):
        asyncio.run(go(broken))
    assert broken.chunks == [4, 8]


def test_judge_calls_are_bounded_and_a_cut_off_verdict_says_so(project, fake_upstream):  # noqa: F811
    from tests.fakeupstream import Reply

    fake_upstream.models["judge-long"] = Reply(
        content='{"reasoning": "First, the output', finish_reason="length"
    )
    fake_upstream.models["judge-ok"] = Reply(content='{"reasoning": "fine", "pass": true, "score": 1}')
    folder = project.settings.evals_dir
    for name, model, extra in (("cut", "judge-long", ""), ("ok", "judge-ok", ", max_tokens: 200")):
        (folder / f"{name}.yaml").write_text(
            f"name: judged-{name}\nprompt: echo\ncases:\n  - {{id: a, vars: {{message: one}}}}\n"
            f"assert: [{{type: judge, rubric: Polite., provider: fake, model: {model}{extra}}}]\n",
            encoding="utf-8",
        )
    cache = MemoryAnswers()
    by_name = {d.name: d for d in project.evals.definitions()}

    async def go(definition):
        base, targets = project.evals.targets(definition)
        providers = Providers(load_providers_config(project.settings.config_path))
        calls = ProviderCalls(providers, cache=cache)
        try:
            return await run_eval(
                definition, targets, baseline=base, complete=calls.complete, judge=calls.judge
            )
        finally:
            await providers.aclose()

    for _ in range(2):  # the second time from the cache, which keeps why the answer ended
        cut = asyncio.run(go(by_name["judged-cut"])).versions[0].cases[0].grade
        assert cut.status.value == "error"
        assert "reached max_tokens 1024 before its verdict" in cut.reason, cut.reason
    ok = asyncio.run(go(by_name["judged-ok"])).versions[0].cases[0].grade
    assert ok.status.value == "passed"
    judged = [r.json() for r in fake_upstream.requests if r.json()["model"].startswith("judge-")]
    assert [(r["model"], r["max_tokens"]) for r in judged] == [("judge-long", 1024), ("judge-ok", 200)]


def test_answers_are_written_in_batches_while_the_run_goes_on(project, fake_upstream):  # noqa: F811
    from promptops.services.cache import ResponseCache
    from promptops.services.evalcalls import SharedAnswers

    definition = project.evals.definitions()[0]
    base, targets = project.evals.targets(definition)
    calls_made = [(v, c.vars, slot) for c in definition.cases for slot in range(3) for v in targets]

    async def go(shared_cache):
        providers = Providers(load_providers_config(project.settings.config_path))
        answers = SharedAnswers(shared_cache, clock=project.ctx.now, write_every=7)
        calls = ProviderCalls(providers, cache=answers)
        try:
            await calls.prefetch(calls_made)
            await run_eval(definition, targets, baseline=base, complete=calls.complete, repeat=3)
            writes = len(answers._writes)
            await calls.flush()
        finally:
            await providers.aclose()
        return calls, writes

    first, writes = asyncio.run(go(ResponseCache(project.ctx, max_entries=1000)))
    assert first.upstream_calls == 30 and writes == 4  # 4 batches of 7 during the run, 2 at the end
    # A new process finds every answer in the database.
    again, _ = asyncio.run(go(ResponseCache(project.ctx, max_entries=1000)))
    assert again.upstream_calls == 0 and again.cache_hits == 30

    class Broken(ResponseCache):
        async def put_many(self, entries):
            raise OSError("disk full")

    assert ResponseCache(project.ctx, max_entries=1000).clear() == 30
    with pytest.raises(OSError, match="disk full"):
        asyncio.run(go(Broken(project.ctx, max_entries=1000)))
