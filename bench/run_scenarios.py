"""Run bench scenarios and print each result with binomial standard errors (a report, not a test).

.venv/bin/python -P bench/run_scenarios.py [NAME[:RUNS] ...]
"""

import json
import math
import sys
import time
from pathlib import Path

from promptops.services.simulation import load_scenario, run_scenario

HERE = Path(__file__).resolve().parent / "scenarios"


def main(args: list[str]) -> None:
    names = args or sorted(p.stem for p in HERE.glob("*.yaml"))
    for item in names:
        name, _, runs = item.partition(":")
        scenario = load_scenario(HERE / f"{name}.yaml")
        started = time.perf_counter()
        result = run_scenario(scenario, runs=int(runs) if runs else None)
        n = result["runs"]
        rates = {
            arm: f"{c / n:.3f}±{math.sqrt(c / n * (1 - c / n) / n):.3f}"
            for arm, c in result["promoted"].items()
        }
        print(
            json.dumps(
                {
                    "scenario": name,
                    "seconds": round(time.perf_counter() - started, 1),
                    "promoted_rate": rates,
                    **result,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
