"""The gateway's CPU per call inside the app: the whole ASGI app (guard, gateway and fast paths,
FastAPI) called in a loop in this process, without sockets on the client side, so other load on
the machine disturbs it less than bench/gateway.py. Prints, per kind of call, the wall time and
this process's CPU time per call (the batched writer thread included) and, one call at a time,
the time to the answer's last byte: a plain serve, cache hits
through `/complete` and chat.completions (plain and streamed), and misses to the fake 20 ms
upstream at concurrency 32 (plain and streamed).

    .venv/bin/python -m bench.gateway_app [--calls 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.gateway import CACHED, PROMPT, start_fake

HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"content-type", b"application/json"),
    (b"accept", b"*/*"),
    (b"user-agent", b"python-httpx/0.29.0"),
]


def scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*HEADERS, (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


ANSWERED = [0.0]
"""Seconds from the start of each call to the send of its last body part, summed: what a client
waits for (a call's record, made after its answer is sent, is left out)."""


async def call(app: Any, path: str, body: bytes) -> int:
    """One request through the app; its status."""
    sent: list[dict[str, Any]] = []
    first = True
    done = asyncio.Event()
    start = time.perf_counter()

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            ANSWERED[0] += time.perf_counter() - start
            done.set()

    await app(scope(path, body), receive, send)
    return int(sent[0]["status"])


async def measure(app: Any, calls: int, repeats: int) -> None:
    chat = {"model": "promptops/bench", "messages": [], "variables": {"q": "why?"}}
    hit = {"model": "promptops/bench-cached", "messages": [], "variables": {"q": "cached?"}}
    cases = {
        "plain serve": ("/v1/prompts/bench-cached/serve", {"variables": {"q": "cached?"}}, 1),
        "hit /complete": ("/v1/prompts/bench-cached/complete", {"variables": {"q": "cached?"}}, 1),
        "hit chat": ("/v1/chat/completions", hit, 1),
        "hit chat stream": ("/v1/chat/completions", {**hit, "stream": True}, 1),
        "miss chat c=32": ("/v1/chat/completions", chat, 32),
        "miss stream c=32": ("/v1/chat/completions", {**chat, "stream": True}, 32),
    }
    for path, body, _ in cases.values():  # fills the cache
        assert await call(app, path, orjson.dumps(body)) == 200
    for _ in range(repeats):
        for name, (path, body, concurrency) in cases.items():
            raw = orjson.dumps(body)
            n = calls if concurrency == 1 else calls // 10 // concurrency * concurrency

            async def worker(k: int, path: str = path, raw: bytes = raw) -> None:
                for _ in range(k):
                    await call(app, path, raw)

            await asyncio.gather(*(worker(10) for _ in range(concurrency)))  # warm-up
            ANSWERED[0] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            answered = ANSWERED[0] / n * 1e6 if concurrency == 1 else float("nan")
            print(
                f"{name:<18}{wall / n * 1e6:>8.1f} us wall{cpu / n * 1e6:>8.1f} us CPU"
                f"{answered:>8.1f} us to the answer",
                flush=True,
            )


async def main(calls: int, repeats: int) -> None:
    fake, upstream = start_fake()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "prompts").mkdir()
            (work / "prompts" / "bench.yaml").write_text(PROMPT)
            (work / "prompts" / "bench-cached.yaml").write_text(CACHED)
            (work / "promptops.yaml").write_text(
                f'default_provider: fake\nproviders:\n  fake: {{base_url: "http://127.0.0.1:{upstream}/v1"}}\n'
            )
            os.environ.update(
                {
                    "PROMPTOPS_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
                    "PROMPTOPS_PROMPTS_DIR": str(work / "prompts"),
                    "PROMPTOPS_CONFIG": str(work / "promptops.yaml"),
                }
            )
            from promptops.config import Settings
            from promptops.server.app import create_app
            from promptops.server.run import prepare

            settings = Settings.from_env()
            app = create_app(settings, ops=prepare(settings))
            inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            lifespan = asyncio.ensure_future(
                app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
            )
            await inbox.put({"type": "lifespan.startup"})
            await outbox.get()
            try:
                await measure(app, calls, repeats)
            finally:
                await inbox.put({"type": "lifespan.shutdown"})
                await lifespan
    finally:
        fake.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeats))
