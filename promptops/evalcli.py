"""`promptops eval`: run evals over versions, print pass rates and comparisons, gate CI.

Exit codes: 0 every gate passed, 1 a gate failed, 2 a usage or configuration error (an invalid
eval file, an unknown eval, version or label, a provider that is not configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from promptops.errors import ConfigError, InvalidEvalFile, NotFound, ProviderNotConfigured

if TYPE_CHECKING:
    from promptops.services.evalrunner import Progress

EXIT_GATE_FAILED = 1
EXIT_USAGE = 2

_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class EvalUsageError(Exception):
    """A usage or configuration problem of `promptops eval`: one line, exit code 2."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = tuple(lines)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def run_json(summary: Any) -> dict[str, Any]:
    """One run in the `promptops eval --json` shape."""
    return {
        "eval": summary.eval,
        "prompt": summary.prompt,
        "dataset_hash": summary.dataset_hash,
        "cases": summary.cases,
        "versions": [
            {
                "version": v.version,
                "variant": v.variant,
                "passed": v.passed,
                "failed": v.failed,
                "errors": v.errors,
                "pass_rate": v.pass_rate,
                "ci_low": v.ci_low,
                "ci_high": v.ci_high,
                "score_mean": v.score_mean,
                "cost_usd": v.cost_usd,
                "latency_ms_mean": v.latency_ms_mean,
            }
            for v in summary.versions
        ],
        "comparisons": [
            {
                "version": c.version,
                "baseline": c.baseline,
                "diff": c.diff,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "p_value": c.p_value,
                "improved": list(c.improved),
                "regressed": list(c.regressed),
            }
            for c in summary.comparisons
        ],
        "gate": {"passed": summary.gate_passed, "reasons": list(summary.gate_reasons)},
    }


def _xml_text(text: str, limit: int = 4000) -> str:
    text = _XML_INVALID.sub("\ufffd", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def junit_xml(runs: Sequence[Any]) -> bytes:
    """A JUnit XML report: one testsuite per eval and version, one testcase per case."""
    root = ET.Element("testsuites", name="promptops eval")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for run in runs:
        for vr in run.versions:
            suite = ET.SubElement(root, "testsuite")
            name = f"{run.definition.name} v{vr.version.number} ({vr.version.variant})"
            counts = {"tests": len(vr.cases), "failures": vr.rate.failed, "errors": vr.rate.errors}
            suite.set("name", name)
            for key, value in counts.items():
                suite.set(key, str(value))
                totals[key] += value
            for case in vr.cases:
                element = ET.SubElement(
                    suite,
                    "testcase",
                    classname=f"{run.definition.name}.v{vr.version.number}",
                    name=_xml_text(case.case.id, 200),
                )
                if case.latency_ms is not None:
                    element.set("time", f"{case.latency_ms / 1000:.3f}")
                status = case.grade.status.value
                if status != "passed":
                    tag = "failure" if status == "failed" else "error"
                    problem = ET.SubElement(element, tag, message=_xml_text(case.grade.reason, 500))
                    outputs = [getattr(o, "text", None) for o in case.outputs]
                    problem.text = _xml_text(
                        case.grade.reason
                        + "".join(f"\noutput {i}: {o}" for i, o in enumerate(outputs, 1) if o is not None)
                    )
    for key, value in totals.items():
        root.set(key, str(value))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def print_run(out: Console, summary: Any) -> None:
    """The human-readable report of one run: versions with intervals, then comparisons and gate."""
    from promptops.cli import cell, say

    def line(text: str) -> None:
        say(text, console=out)

    line(
        f"eval {summary.eval} on {summary.prompt}: {summary.cases} case(s), repeat "
        f"{summary.repeat}, dataset {summary.dataset_hash[:12]}, run {summary.id}"
    )
    table = Table(
        "version",
        "passed",
        "failed",
        "errors",
        "pass rate",
        "95% CI",
        "score",
        "cost $",
        "latency ms",
        "gate",
    )
    for v in summary.versions:
        base = " (baseline)" if v.version == summary.baseline else ""
        table.add_row(
            cell(f"v{v.version} {v.variant}{base}"),
            str(v.passed),
            str(v.failed),
            str(v.errors),
            _pct(v.pass_rate),
            f"{_pct(v.ci_low)} - {_pct(v.ci_high)}",
            "" if v.score_mean is None else f"{v.score_mean:.3f}",
            "" if v.cost_usd is None else f"{v.cost_usd:.4f}",
            "" if v.latency_ms_mean is None else f"{v.latency_ms_mean:.0f}",
            "pass" if v.gate_passed else "FAIL",
        )
    out.print(table)
    for c in summary.comparisons:
        line(
            f"v{c.version} vs v{c.baseline}: diff {100 * c.diff:+.1f} points (paired 95% CI "
            f"{100 * c.ci_low:+.1f} to {100 * c.ci_high:+.1f}), McNemar p = {c.p_value:.3g}"
        )
        if c.improved:
            line(f"  improved ({len(c.improved)}): {', '.join(c.improved[:20])}")
        if c.regressed:
            line(f"  regressed ({len(c.regressed)}): {', '.join(c.regressed[:20])}")
    if summary.gate_passed:
        line("gate: passed")
    else:
        line("gate: FAILED")
        for reason in summary.gate_reasons:
            line(f"  {reason}")
    for exp_id in summary.started_experiments:
        line(f"experiment {exp_id} started: its arms passed the eval")


def _pick(definitions: Sequence[Any], names: Sequence[str]) -> list[Any]:
    if not names:
        return list(definitions)
    by_name = {d.name: d for d in definitions}
    by_path = {str(Path(d.path).resolve()): d for d in definitions}
    chosen = []
    for name in names:
        d = by_name.get(name) or by_path.get(str(Path(name).resolve()))
        if d is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise EvalUsageError([f"unknown eval {name!r} (known: {known})"])
        chosen.append(d)
    return chosen


@contextlib.contextmanager
def _progress(console: Console | None, title: str, total: int) -> Iterator[Progress | None]:
    """A transient progress bar on the console (none without one): yields its update function."""
    if console is None:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    with Bar(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(title, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


async def _run_all(
    ops: Any,
    definitions: Sequence[Any],
    *,
    versions: Sequence[int],
    labels: Sequence[str],
    baseline: str,
    repeat: int | None,
    concurrency: int,
    no_cache: bool,
    progress_console: Console | None,
    actor: str,
) -> tuple[list[Any], list[Any]]:
    from promptops.providers import Providers, load_providers_config
    from promptops.services.cache import ResponseCache
    from promptops.services.evalcalls import ProviderCalls, SharedAnswers
    from promptops.services.evalrunner import run_eval

    plans = []
    try:
        for d in definitions:
            base, targets = ops.evals.targets(d, versions=versions, labels=labels, baseline=baseline)
            plans.append((d, base, targets))
    except NotFound as exc:
        raise EvalUsageError([exc.message]) from None
    config = load_providers_config(ops.settings.config_path)
    providers = Providers(config)
    shared = ResponseCache(ops.ctx, max_entries=config.cache.max_entries, redis_url=ops.settings.redis_url)
    calls = ProviderCalls(providers, cache=SharedAnswers(shared, clock=ops.ctx.now), read_cache=not no_cache)
    try:
        for d, _, targets in plans:
            for v in targets:
                if not v.content.model.get("name"):
                    raise ConfigError(f"{v.prompt} v{v.number} names no model (model: {{name: ...}})")
                calls.check_provider(v.content.model.get("provider"))
            for a in {a for c in d.cases for a in d.assertions_for(c) if a.type == "judge"}:
                calls.check_provider(a.provider)
    except (ProviderNotConfigured, ConfigError) as exc:
        await providers.aclose()
        await shared.aclose()
        raise EvalUsageError([exc.message]) from None
    runs, summaries = [], []
    try:
        for d, base, targets in plans:
            reps = repeat or d.repeat
            # In the runner's order, so each chunk is loaded before the workers reach it.
            loading = calls.prefetch_ahead(
                (v, c.vars, slot) for c in d.cases for slot in range(reps) for v in targets
            )
            total = len(targets) * len(d.cases) * reps
            try:
                with _progress(progress_console, f"{d.name} ({len(targets)} versions)", total) as advance:
                    run = await run_eval(
                        d,
                        targets,
                        baseline=base,
                        complete=calls.complete,
                        judge=calls.judge,
                        repeat=reps,
                        concurrency=concurrency,
                        progress=advance,
                    )
                await loading
            finally:
                loading.cancel()  # nothing left to load unless the run failed
            await calls.flush()
            runs.append(run)
            summaries.append(await asyncio.to_thread(ops.evals.record, run, actor=actor))
    finally:
        await providers.aclose()
        await shared.aclose()  # the answers' background writes end here
        await asyncio.to_thread(shared.flush_touches)
    return runs, summaries


def run_evals(ops: Any, definitions: Sequence[Any], **options: Any) -> tuple[list[Any], list[Any]]:
    """Run and store the evals on a new event loop: (runs, summaries); options as `_run_all`'s."""
    out: list[tuple[list[Any], list[Any]]] = []

    async def main() -> None:
        # The results leave through a list, not as the main coroutine's result: when asyncio.run
        # restores the SIGINT handler, Python 3.11 formats the repr of the main task, result
        # included, and the repr of a run of thousands of cases takes a third of a second.
        out.append(await _run_all(ops, definitions, **options))

    # What exists now (modules, settings, the loaded cases) lives until the run ends: frozen, the
    # garbage collector's full passes, frequent while a run's results pile up, skip it.
    gc.freeze()
    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
    return out[0]


def eval_command(
    evals: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[EVAL]...", help="Eval names or files (default: every eval of the evals folder)."
        ),
    ] = None,
    version: Annotated[
        list[int] | None, typer.Option("--version", "-v", help="A version to run (repeatable).", min=1)
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="A labelled version to run (repeatable).")
    ] = None,
    baseline: Annotated[str, typer.Option(help="The label of the baseline.")] = "production",
    repeat: Annotated[
        int | None,
        typer.Option(help="Repetitions of each case (overrides the eval's repeat).", min=1, max=100),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Calls in flight at once.", min=1, max=1000)] = 16,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse cached answers.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report.")] = None,
    evals_dir: Annotated[
        Path | None, typer.Option("--evals-dir", help="Overrides PROMPTOPS_EVALS_DIR.")
    ] = None,
) -> None:
    """Run evals over versions: pass rates with 95% intervals, paired comparisons, the gate."""
    from promptops import cli

    if version and label:
        cli.fail("give --version or --label, not both", EXIT_USAGE)
    if junit is not None and (junit.is_dir() or not junit.absolute().parent.is_dir()):
        # Known before any call: a run's results are not lost to a report that cannot be written.
        why = "it is a directory" if junit.is_dir() else f"no directory {junit.absolute().parent}"
        cli.fail(f"cannot write {junit}: {why}", EXIT_USAGE)
    try:
        ops = cli.ops(evals_dir=evals_dir)
        folder = ops.settings.evals_dir
        paths = [folder] if folder.exists() else []
        extra = [Path(e) for e in evals or [] if Path(e).is_file()]
        if not paths and not extra:
            raise EvalUsageError([f"no evals: {folder} does not exist (set PROMPTOPS_EVALS_DIR)"])
        definitions = _pick(ops.evals.definitions(paths + extra), evals or [])
        if not definitions:
            raise EvalUsageError([f"no eval files in {folder}"])
        progress = cli.err if sys.stderr.isatty() and not as_json else None
        runs, summaries = run_evals(
            ops,
            definitions,
            versions=version or [],
            labels=label or [],
            baseline=baseline,
            repeat=repeat,
            concurrency=concurrency,
            no_cache=no_cache,
            progress_console=progress,
            actor=cli.actor(),
        )
    except InvalidEvalFile as exc:
        for problem in exc.problems:
            cli.say(str(problem), console=cli.err)
        raise typer.Exit(EXIT_USAGE) from None
    except EvalUsageError as exc:
        for line in exc.lines:
            cli.say(f"error: {line}", console=cli.err)
        raise typer.Exit(EXIT_USAGE) from None
    except (ConfigError, NotFound) as exc:
        cli.fail(exc.message, EXIT_USAGE)
    if junit is not None:
        try:
            junit.write_bytes(junit_xml(runs))
        except OSError as exc:
            cli.fail(f"cannot write {junit}: {exc.strerror or exc}", EXIT_USAGE)
    if as_json:
        cli.print_json({"runs": [run_json(s) for s in summaries]})
    else:
        for i, summary in enumerate(summaries):
            if i:
                cli.out.print()
            print_run(cli.out, summary)
    if not all(s.gate_passed for s in summaries):
        raise typer.Exit(EXIT_GATE_FAILED)
