"""Eval throughput: 1,000 cases x 2 versions against a fake upstream answering in 20 ms.

The fake OpenAI-compatible upstream (tests/fakeupstream.py) runs in a child process, so its work
is not counted as promptops's. The eval runs at concurrency 16 (the provider's own bound is 16 too);
the floor is what the upstream's latency alone costs: cases x versions x 20 ms / 16. The script
prints the wall time of the run against that floor, promptops's own CPU time per case and version
(this process: rendering, the HTTP client, assertions, grading; storing the run is shown apart),
and then runs the eval a second time in a fresh response cache over the same database (as a new
`promptops eval` process would), which must make no upstream call.
For scale it also sends the same number of requests with a bare httpx client at the same concurrency
(no rendering, retries, assertions or grading): on a small machine the HTTP client's own CPU time,
not the upstream's latency, can set the pace, and that is the part promptops cannot shave.

    python -m bench.eval [--cases 1000] [--concurrency 16] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from promptops.config import Settings
from promptops.providers import Providers, load_providers_config
from promptops.services.cache import ResponseCache
from promptops.services.evalcalls import ProviderCalls, SharedAnswers
from promptops.services.evalrunner import run_eval
from promptops.services.facade import PromptOps

ROOT = Path(__file__).resolve().parent.parent

PROMPT = """\
name: bench
model: {provider: fake, name: bench-model, temperature: 0}
variables:
  message: {type: string, required: true}
  channel: {type: string, default: email}
messages:
  - {role: system, content: "Route the message to one queue. Channel: {{ channel }}."}
  - {role: user, content: "{{ message }}"}
variants:
  terse:
    messages: [{role: user, content: "Queue for: {{ message }}"}]
"""

EVAL = """\
name: bench-eval
prompt: bench
dataset: bench.jsonl
assert:
  - {type: icontains, value: "{{ expected }}", transform: strip}
  - {type: regex, value: "^echo", weight: 0}
"""

SERVER = """\
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.fakeupstream import FakeUpstream, Reply
fake = FakeUpstream(Reply(latency=float(sys.argv[2]))).start()
print(fake.port, flush=True)
sys.stdin.read()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT), str(args.latency_ms / 1000)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            bench(Path(tmp), port, args)
    finally:
        server.terminate()
        server.wait()


def bench(tmp: Path, port: int, args: argparse.Namespace) -> None:
    (tmp / "prompts").mkdir()
    (tmp / "evals").mkdir()
    (tmp / "prompts" / "bench.yaml").write_text(PROMPT, encoding="utf-8")
    (tmp / "evals" / "bench.yaml").write_text(EVAL, encoding="utf-8")
    words = ["parcel", "refund", "invoice", "password", "stock", "broken", "late", "charged"]
    with (tmp / "evals" / "bench.jsonl").open("w", encoding="utf-8") as f:
        for i in range(args.cases):
            word = words[i % len(words)]
            message = f"Case {i}: my {word} issue needs help, order {1000 + i}."
            f.write(json.dumps({"id": f"c{i}", "vars": {"message": message}, "expected": word}) + "\n")
    (tmp / "promptops.yaml").write_text(
        f'default_provider: fake\nproviders:\n  fake: {{base_url: "http://127.0.0.1:{port}/v1", '
        f"max_concurrency: {args.concurrency}}}\n",
        encoding="utf-8",
    )
    ops = PromptOps(
        Settings(
            database_url=f"sqlite:///{tmp / 'bench.db'}",
            prompts_dir=tmp / "prompts",
            evals_dir=tmp / "evals",
            config_path=tmp / "promptops.yaml",
        )
    )
    ops.sync()
    definition = ops.evals.definitions()[0]
    base, targets = ops.evals.targets(definition, versions=[2])

    async def once() -> tuple[object, ProviderCalls, float, float]:
        # A new cache each time, as a new `promptops eval` process has: the warm run reads the
        # answers from the database tier.
        providers = Providers(load_providers_config(tmp / "promptops.yaml"))
        shared = ResponseCache(ops.ctx, max_entries=10_000)
        calls = ProviderCalls(providers, cache=SharedAnswers(shared, clock=ops.ctx.now))
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            await calls.prefetch((v, c.vars, 0) for c in definition.cases for v in targets)
            run = await run_eval(
                definition,
                targets,
                baseline=base,
                complete=calls.complete,
                judge=calls.judge,
                concurrency=args.concurrency,
            )
            await calls.flush()  # the answers are in the database before the clock stops
            return run, calls, time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await providers.aclose()
            await shared.aclose()

    n = len(definition.cases) * len(targets)
    floor = n * args.latency_ms / 1000 / args.concurrency
    bare_wall, bare_cpu = asyncio.run(bare_httpx(port, n, args.concurrency))
    run, calls, wall, cpu = asyncio.run(once())
    record_cpu = time.process_time()
    summary = ops.evals.record(run)  # type: ignore[arg-type]
    record_cpu = time.process_time() - record_cpu
    rates = ", ".join(f"v{v.version} {v.passed}/{v.passed + v.failed + v.errors}" for v in summary.versions)
    print(
        f"cold: {len(definition.cases)} cases x {len(targets)} versions = {n} calls at "
        f"concurrency {args.concurrency}, upstream {args.latency_ms:g} ms"
    )
    print(f"  wall {wall:.2f} s vs floor {floor:.2f} s = {wall / floor:.2f}x the floor")
    print(
        f"  bare httpx, same calls: wall {bare_wall:.2f} s ({bare_wall / floor:.2f}x the floor), "
        f"CPU {bare_cpu * 1e6 / n:.0f} us per call; promptops / bare httpx = {wall / bare_wall:.2f}x wall"
    )
    print(
        f"  promptops CPU {cpu * 1e6 / n:.0f} us per case and version (run), "
        f"{record_cpu * 1e6 / n:.0f} us (storing the run); upstream calls {calls.upstream_calls}"
    )
    print(f"  passed: {rates}")
    _, warm_calls, warm_wall, warm_cpu = asyncio.run(once())
    print(
        f"warm: wall {warm_wall:.2f} s, CPU {warm_cpu * 1e6 / n:.0f} us per case and version, "
        f"upstream calls {warm_calls.upstream_calls}, cache hits {warm_calls.cache_hits}"
    )
    ops.close()


async def bare_httpx(port: int, n: int, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds of n plain chat requests with one httpx client, `concurrency` at once."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1/", limits=limits) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with slots:
                body = {"model": "bench-model", "messages": [{"role": "user", "content": f"case {i}"}]}
                (await client.post("chat/completions", json=body)).json()

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    main()
