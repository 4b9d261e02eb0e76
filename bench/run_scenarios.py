"""Run bench scenarios and print each result with binomial standard errors (a report, not a test).

.venv/bin/python -P bench/run_scenarios.py [NAME[:RUNS] ...]

Each line is one scenario's JSON result plus `promoted_rate` and `final_rate` per arm and `rates`
(inconclusive, wrong promotions, rollbacks, SRM and feedback freezes, guardrail blocks), each as
"rate±standard error" with the binomial standard error sqrt(p (1 - p) / runs).
"""

import json
import math
import sys
import time
from pathlib import Path

from promptops.services.simulation import load_scenario, run_scenario

HERE = Path(__file__).resolve().parent / "scenarios"


def _rate(count: int, runs: int) -> str:
    p = count / runs
    return f"{p:.3f}±{math.sqrt(p * (1 - p) / runs):.3f}"


def main(args: list[str]) -> None:
    names = args or sorted(p.stem for p in HERE.glob("*.yaml"))
    for item in names:
        name, _, runs = item.partition(":")
        scenario = load_scenario(HERE / f"{name}.yaml")
        started = time.perf_counter()
        result = run_scenario(scenario, runs=int(runs) if runs else None)
        n = result["runs"]
        counts = {
            "inconclusive": result["inconclusive"],
            "wrong": result["wrong_promotions"],
            "rolled_back": result["rolled_back"],
            "frozen_srm": result["frozen"]["srm"],
            "frozen_feedback": result["frozen"]["feedback"],
            "guardrail_blocked": result["guardrail_blocked"],
        }
        print(
            json.dumps(
                {
                    "scenario": name,
                    "seconds": round(time.perf_counter() - started, 1),
                    "promoted_rate": {arm: _rate(c, n) for arm, c in result["promoted"].items()},
                    "final_rate": {arm: _rate(c, n) for arm, c in result["final"].items()},
                    "rates": {key: _rate(c, n) for key, c in counts.items()},
                    **result,
                },
                ensure_ascii=False,
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
