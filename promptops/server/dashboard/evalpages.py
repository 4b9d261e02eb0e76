"""The dashboard's eval contexts: a prompt's latest eval results, and one run's cases side by side."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from promptops.server.dashboard.formats import fmt_pct
from promptops.server.dashboard.pages import positive_id
from promptops.services.evals import CaseOutcome, RunSummary
from promptops.services.facade import PromptOps

_FLIP_ORDER = {"regressed": 0, "improved": 1, None: 2}


def _result_row(run: RunSummary, version: Any) -> dict[str, Any]:
    return {
        "eval": run.eval,
        "run_id": run.id,
        "created_at": run.created_at,
        "version": version.version,
        "variant": version.variant,
        "passed": version.passed,
        "total": version.passed + version.failed + version.errors,
        "errors": version.errors,
        "pass_rate": fmt_pct(version.pass_rate),
        "ci": f"{fmt_pct(version.ci_low)} – {fmt_pct(version.ci_high)}",
        "gate_passed": version.gate_passed,
        "baseline": run.baseline,
    }


def prompt_eval_results(ops: PromptOps, prompt: str) -> list[dict[str, Any]]:
    """Each version's latest result in each eval of the prompt, newest run first."""
    seen: set[tuple[str, int]] = set()
    rows = []
    for run in ops.evals.runs(prompt=prompt, limit=100):
        for version in run.versions:
            if (run.eval, version.version) not in seen:
                seen.add((run.eval, version.version))
                rows.append(_result_row(run, version))
    return rows


def _side(case: CaseOutcome | None) -> dict[str, Any] | None:
    if case is None:
        return None
    output = next((o for o in case.outputs if o is not None), None)
    error = next((e for e in case.errors if e is not None), None)
    return {
        "status": case.status,
        "score": case.score,
        "reason": case.reason,
        "output": output,
        "error": error,
        "assertions": [asdict(a) for a in case.assertions],
    }


def eval_run_context(ops: PromptOps, run_id: int, query: Mapping[str, str]) -> dict[str, Any]:
    """One run: each version's figures, then two versions side by side per case, flips first.

    The left side is the baseline (or `?a=N`), the right side the first other version (or `?b=N`).
    A flip is a case that passes on one side only: `regressed` (passes on the left only) come
    first, then `improved`, then the cases both sides agree on, in the eval's order.
    """
    detail = ops.evals.get_run(run_id)
    run = detail.run
    numbers = [v.version for v in run.versions]
    a = positive_id(query.get("a"))
    b = positive_id(query.get("b"))
    if a not in numbers:
        a = run.baseline if run.baseline in numbers else (numbers[0] if numbers else None)
    if b not in numbers or b == a:
        b = next((n for n in numbers if n != a), None)
    by_version: dict[int, dict[str, CaseOutcome]] = {}
    order: list[str] = []
    for case in detail.cases:
        by_version.setdefault(case.version, {})[case.case_id] = case
        if case.version == a:
            order.append(case.case_id)
    left = by_version.get(a or 0, {})
    right = by_version.get(b or 0, {})
    rows: list[dict[str, Any]] = []
    for position, case_id in enumerate(order):
        l_case, r_case = left.get(case_id), right.get(case_id)
        l_pass = l_case is not None and l_case.status == "passed"
        r_pass = r_case is not None and r_case.status == "passed"
        flip = None
        if r_case is not None and l_pass != r_pass:
            flip = "improved" if r_pass else "regressed"
        rows.append(
            {
                "case_id": case_id,
                "position": position,
                "flip": flip,
                "left": _side(l_case),
                "right": _side(r_case),
            }
        )
    rows.sort(key=lambda r: (_FLIP_ORDER[r["flip"]], r["position"]))
    comparison = next((c for c in run.comparisons if c.version == b and c.baseline == a), None)
    versions = [
        {
            **asdict(v),
            "pass_rate_text": fmt_pct(v.pass_rate),
            "ci_text": f"{fmt_pct(v.ci_low)} – {fmt_pct(v.ci_high)}",
        }
        for v in run.versions
    ]
    return {
        "run": asdict(run),
        "versions": versions,
        "a": a,
        "b": b,
        "numbers": numbers,
        "comparison": asdict(comparison) if comparison else None,
        "rows": rows,
        "flips": sum(1 for r in rows if r["flip"]),
    }
