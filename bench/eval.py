"""Eval throughput: 1,000 cases x 2 versions against a fake upstream answering in 20 ms.

The fake OpenAI-compatible upstream (tests/fakeupstream.py) runs in a child process, so its work
is not counted as promptops's (its own CPU per request is printed: it shares the machine). Each
repetition runs, back to back on the same upstream:

- `direct`: the floor of doing the same calls directly. The same request bodies (rendered before
  the clock starts) go out over raw asyncio streams from `--concurrency` workers, each on one
  keep-alive connection, and every answer is read whole and parsed; no rendering, cache,
  assertion or database. It is what the eval's calls cost on this machine at best.
- `promptops`: what `promptops eval` does once its files are loaded (`evalcli._run_all`): cache
  lookups, rendering, the calls through the provider layer at the same concurrency, assertions,
  grading, storing the answers and the run; in a fresh database each repetition, so every call
  goes upstream.
- `httpx`: the same bodies through one `httpx.AsyncClient` (as a plain script would), the same
  number of workers and keep-alive connections.

The fake upstream reports how many connections each phase opened, so the comparisons are seen to
use the same concurrency and connection reuse. Ratios are taken within a repetition (the machine
is shared, so the load moves between repetitions); the latency floor, calls x latency /
concurrency, is printed for scale. Last, the eval runs again over the same database (as a second
`promptops eval` process would), which must make no upstream call.

    python -m bench.eval [--cases 1000] [--concurrency 16] [--latency-ms 20] [--repeats 3] [--progress]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from promptops.config import Settings
from promptops.evalcli import run_evals
from promptops.providers import Providers, load_providers_config
from promptops.services.evalcalls import ProviderCalls
from promptops.services.facade import PromptOps

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

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

# The fake upstream in a child process; each line on stdin asks for its counters.
SERVER = """\
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.fakeupstream import FakeUpstream, Reply
fake = FakeUpstream(Reply(latency=float(sys.argv[2]))).start()
print(fake.port, flush=True)
for _ in sys.stdin:
    print(fake.connections, fake.count, time.process_time(), flush=True)
"""


@dataclass(frozen=True)
class Phase:
    """One timed phase: wall and CPU seconds of this process, and what the upstream saw."""

    wall: float
    cpu: float
    connections: int
    requests: int
    upstream_cpu: float


class Upstream:
    """The fake upstream's child process and its counters."""

    def __init__(self, latency_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(ROOT), str(latency_ms / 1000)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def counters(self) -> tuple[int, int, float]:
        """(connections accepted, requests received, the child's CPU seconds) so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        connections, requests, cpu = self.proc.stdout.readline().split()
        return int(connections), int(requests), float(cpu)

    def measure(self, run: Callable[[], T]) -> tuple[Phase, T]:
        """Run a function, timed and counted."""
        c0, r0, u0 = self.counters()
        cpu, wall = time.process_time(), time.perf_counter()
        result = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        c1, r1, u1 = self.counters()
        return Phase(wall, cpu, c1 - c0, r1 - r0, u1 - u0), result

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--progress", action="store_true", help="draw the progress bar (into a buffer)")
    args = parser.parse_args()
    upstream = Upstream(args.latency_ms)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench(Path(tmp), upstream, args)
    finally:
        upstream.close()


def project(tmp: Path, port: int, args: argparse.Namespace) -> None:
    """The prompt, the eval with its dataset, and the provider settings, in a fresh folder."""
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


def open_ops(tmp: Path, db: Path) -> PromptOps:
    return PromptOps(
        Settings(
            database_url=f"sqlite:///{db}",
            prompts_dir=tmp / "prompts",
            evals_dir=tmp / "evals",
            config_path=tmp / "promptops.yaml",
        )
    )


def bench(tmp: Path, upstream: Upstream, args: argparse.Namespace) -> None:
    project(tmp, upstream.port, args)
    template = tmp / "synced.db"
    ops = open_ops(tmp, template)
    ops.sync()
    definition = ops.evals.definitions()[0]
    _, targets = ops.evals.targets(definition, versions=[2])
    calls = ProviderCalls(Providers(load_providers_config(tmp / "promptops.yaml")))
    # The bodies promptops sends, in the order its workers take them (versions interleaved).
    bodies = [
        orjson.dumps(dict(calls.request_for(v, c.vars).body)) for c in definition.cases for v in targets
    ]
    ops.close()
    n = len(bodies)
    floor = n * args.latency_ms / 1000 / args.concurrency
    print(
        f"{len(definition.cases)} cases x {len(targets)} versions = {n} calls at concurrency "
        f"{args.concurrency}, upstream {args.latency_ms:g} ms: latency floor {floor:.2f} s"
    )
    progress = None
    if args.progress:
        from rich.console import Console

        progress = Console(file=io.StringIO(), force_terminal=True, width=100)

    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for rep in range(1, args.repeats + 1):
        db = tmp / f"run{rep}.db"
        shutil.copy(template, db)
        ops = open_ops(tmp, db)
        load_wall = time.perf_counter()
        definitions = ops.evals.definitions()
        load_wall = time.perf_counter() - load_wall

        def eval_run(
            ops: PromptOps = ops, definitions: list[Any] = definitions
        ) -> tuple[list[Any], list[Any]]:
            return run_evals(
                ops,
                definitions,
                versions=[2],
                labels=[],
                baseline="production",
                repeat=None,
                concurrency=args.concurrency,
                no_cache=False,
                progress_console=progress,
                actor="bench",
            )

        direct_phase, _ = upstream.measure(
            lambda: asyncio.run(direct(upstream.port, bodies, args.concurrency))
        )
        eval_phase, result = upstream.measure(eval_run)
        httpx_phase, _ = upstream.measure(
            lambda: asyncio.run(bare_httpx(upstream.port, bodies, args.concurrency))
        )
        summaries = result[1]
        rates = ", ".join(
            f"v{v.version} {v.passed}/{v.passed + v.failed + v.errors}" for v in summaries[0].versions
        )
        print(f"repetition {rep} (loading the eval files: {load_wall * 1000:.0f} ms, not timed below)")
        for name, phase in (("direct", direct_phase), ("promptops", eval_phase), ("httpx", httpx_phase)):
            upstream_cpu = phase.upstream_cpu * 1e6 / max(phase.requests, 1)
            print(
                f"  {name:9} wall {phase.wall:6.2f} s ({phase.wall / floor:4.2f}x latency floor)  "
                f"CPU {phase.cpu * 1e6 / n:5.0f} us/call  upstream: {phase.requests} requests on "
                f"{phase.connections} new connections, {upstream_cpu:.0f} us CPU/request"
            )
        ratios.append(eval_phase.wall / direct_phase.wall)
        cpu_ratios.append(eval_phase.cpu / direct_phase.cpu)
        print(
            f"  promptops / direct: {ratios[-1]:.2f}x wall, {cpu_ratios[-1]:.2f}x CPU; "
            f"httpx / direct: {httpx_phase.wall / direct_phase.wall:.2f}x wall; passed: {rates}"
        )
        if rep == args.repeats:
            warm, _ = upstream.measure(eval_run)
            print(
                f"warm (same database): wall {warm.wall:.2f} s, CPU {warm.cpu * 1e6 / n:.0f} us per case "
                f"and version, upstream requests {warm.requests}"
            )
        ops.close()
    print(
        f"promptops / direct, median of {len(ratios)}: {statistics.median(ratios):.2f}x wall, "
        f"{statistics.median(cpu_ratios):.2f}x CPU"
    )


async def direct(port: int, bodies: list[bytes], concurrency: int) -> None:
    """The bodies sent over raw keep-alive connections, one per worker; each answer parsed."""
    pending = iter(bodies)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        for body in pending:
            writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
            answer = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in answer.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            data = orjson.loads(await reader.readexactly(length))
            assert data["choices"][0]["message"]["content"]
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))


async def bare_httpx(port: int, bodies: list[bytes], concurrency: int) -> None:
    """The bodies sent with one httpx client by `concurrency` workers over as many connections."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    pending = iter(bodies)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1/", limits=limits) as client:

        async def worker() -> None:
            for body in pending:
                (await client.post("chat/completions", content=body, headers=headers)).json()

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))


if __name__ == "__main__":
    main()
