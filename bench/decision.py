"""In-process decision time: promptops's arm choice and whole serve vs GrowthBook's eval_feature.

promptops decides from weights precomputed by the last epoch update (`LiveExperiment.pick`); a
whole serve also renders the chosen version and queues the decision for the batched writer. The
GrowthBook Python SDK evaluates a feature whose rule is a two-variation experiment, bucketing on the
`id` attribute. Both run in this process on the same unit ids; each figure is the best of several
repeats (ns per operation), so other load on the machine inflates neither side much.

    python -m bench.decision [--n 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from growthbook import GrowthBook

from promptops.config import Settings
from promptops.services.facade import PromptOps
from promptops.services.writer import BatchWriter

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "support-triage"
VARIABLES = {"message": "Order 4411 was due on Monday and the tracking page has not changed."}


def best_ns(fn: Callable[[int], object], *, n: int, repeats: int) -> float:
    """The best mean time of `fn(i)` over `repeats` rounds of `n` calls, in ns per call."""
    for i in range(min(n, 2000)):  # warm caches
        fn(i)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def growthbook(weights: tuple[float, ...]) -> GrowthBook:
    """A GrowthBook instance with one feature: an experiment rule over two variations."""
    total = sum(weights)
    features = {
        PROMPT: {
            "defaultValue": "main",
            "rules": [
                {
                    "key": f"{PROMPT}-exp",
                    "variations": ["main", "few-shot"],
                    "hashAttribute": "id",
                    "weights": [w / total for w in weights],
                    "coverage": 1.0,
                }
            ],
        }
    }
    return GrowthBook(attributes={"id": "user-0"}, features=features)


def main() -> None:
    """Print ns/op for each side and the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="promptops-decision-"))
    try:
        prompts = tmp / "prompts"
        prompts.mkdir()
        shutil.copy(ROOT / "prompts" / f"{PROMPT}.yaml", prompts)
        ops = PromptOps(Settings(database_url=f"sqlite:///{tmp / 'promptops.db'}", prompts_dir=prompts))
        ops.sync()
        writer = BatchWriter(ops.serving.recorder)
        ops.serving.writer = writer  # as in the server: decisions leave the request path
        ops.serving.auto_refresh = False
        ops.serving.live.refresh()
        exp = ops.serving.live.prompt(PROMPT).experiment
        assert exp is not None, "the example prompt has no running experiment"
        gb = growthbook(exp.weights)
        assert gb.eval_feature(PROMPT).source == "experiment"
        units = [f"user-{i}" for i in range(args.n)]
        run = {"n": args.n, "repeats": args.repeats}

        def gb_varying(i: int) -> object:
            gb.set_attributes({"id": units[i]})
            return gb.eval_feature(PROMPT)

        figures = {
            "promptops pick, same unit": best_ns(lambda i: exp.pick("user-0", ops.ctx.rng), **run),
            "promptops pick, new unit": best_ns(lambda i: exp.pick(units[i], ops.ctx.rng), **run),
            "promptops pick, no unit (random)": best_ns(lambda i: exp.pick(None, ops.ctx.rng), **run),
            "growthbook eval_feature, same id": best_ns(lambda i: gb.eval_feature(PROMPT), **run),
            "growthbook eval_feature, new id": best_ns(gb_varying, **run),
        }
        writer.start()
        serve_n = max(args.n // 4, 1000)
        figures["promptops whole serve (pick+render+enqueue)"] = best_ns(
            lambda i: ops.serving.serve(PROMPT, VARIABLES, unit_id=units[i % args.n]), n=serve_n, repeats=3
        )
        writer.stop()
        served = min(serve_n, 2000) + 3 * serve_n
        with sqlite3.connect(tmp / "promptops.db") as conn:
            stored = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]

        for label, ns in figures.items():
            print(f"{label:46} {ns:9.0f} ns/op")
        same = figures["promptops pick, same unit"] / figures["growthbook eval_feature, same id"]
        new = figures["promptops pick, new unit"] / figures["growthbook eval_feature, new id"]
        whole = (
            figures["promptops whole serve (pick+render+enqueue)"]
            / figures["growthbook eval_feature, new id"]
        )
        print(
            f"decision ratio promptops/growthbook: same unit {same:.2f}x, new unit {new:.2f}x "
            f"(target <= 1.0x); whole serve vs eval_feature {whole:.1f}x"
        )
        print(f"decisions stored by the writer: {stored} of {served} served")
        ops.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
