"""What the gateway adds to a model call: the same load sent straight to a fake upstream (fixed
20 ms), through promptops (a real `promptops serve`), and through LiteLLM's proxy, at concurrency
1 and 32, streaming and not; plus a cache hit against a plain serve. Prints p50 and throughput
side by side, as ratios.

LiteLLM runs from its own venv, which the benchmark creates and fills the first time
(`pip install 'litellm[proxy]'` into bench/.litellm-venv, a minute or two); LITELLM_BIN=/path/to/litellm
uses an existing install instead, and --no-litellm leaves it out.

    .venv/bin/python -m bench.gateway [--requests 320] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fakeupstream import FakeUpstream, Reply
fake = FakeUpstream(Reply(latency=0.02, content="a short answer of a few words")).start()
print(fake.port, flush=True)
while True:
    time.sleep(3600)
"""
PROMPT = """\
name: bench
model: {name: fake-model, temperature: 0.7}
variables:
  q: {type: string, required: true}
messages:
  - {role: system, content: "Answer briefly."}
  - {role: user, content: "{{ q }}"}
"""
CACHED = PROMPT.replace("name: bench", "name: bench-cached").replace("0.7", "0")


def start_fake() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_promptops(workdir: Path, upstream: int, port: int) -> subprocess.Popen[bytes]:
    (workdir / "prompts").mkdir()
    (workdir / "prompts" / "bench.yaml").write_text(PROMPT)
    (workdir / "prompts" / "bench-cached.yaml").write_text(CACHED)
    (workdir / "promptops.yaml").write_text(
        f'default_provider: fake\nproviders:\n  fake: {{base_url: "http://127.0.0.1:{upstream}/v1",}}\n'
    )
    env = {
        **os.environ,
        "PROMPTOPS_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "PROMPTOPS_PROMPTS_DIR": str(workdir / "prompts"),
        "PROMPTOPS_CONFIG": str(workdir / "promptops.yaml"),
    }
    exe = Path(sys.executable).parent / "promptops"
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # it could not start (the port taken, say): never load another
            raise SystemExit(f"promptops exited with {proc.returncode} before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("promptops did not start")


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on loopback, from the kernel."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


LITELLM_VENV = Path(__file__).resolve().parent / ".litellm-venv"


def litellm_bin() -> str | None:
    """LITELLM_BIN, or the `litellm` of the benchmark's own venv, installed there on first use
    (None, with a line saying why, when it cannot be installed)."""
    given = os.environ.get("LITELLM_BIN")
    if given:
        return given if Path(given).exists() else None
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        print(f"installing LiteLLM's proxy into {LITELLM_VENV} (once) ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
            subprocess.run(
                [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"LiteLLM could not be installed ({exc}); comparing without it", flush=True)
            return None
    return str(exe) if exe.exists() else None


def start_litellm(workdir: Path, upstream: int, port: int) -> subprocess.Popen[bytes] | None:
    """LiteLLM's proxy in front of the fake upstream (None when it is not available)."""
    exe = litellm_bin()
    if exe is None:
        return None
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: fake-model\n    litellm_params:\n"
        f"      model: openai/fake-model\n      api_base: http://127.0.0.1:{upstream}/v1\n"
        "      api_key: unused\n"
    )
    env = {**os.environ, "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    proc = subprocess.Popen(
        [exe, "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/liveliness").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    return None


async def load(
    url: str, body: dict[str, Any], *, concurrency: int, requests: int, stream: bool
) -> tuple[float, float]:
    """(p50 ms, requests per second) of `requests` POSTs, `concurrency` at a time."""
    latencies: list[float] = []
    # Idle connections are dropped well before the servers' own 5 s keep-alive timeout: at equal
    # timeouts a request can leave on a connection the server is closing (a ReadError).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            start = time.perf_counter()
            if stream:
                async with client.stream("POST", url, json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    assert r.status_code == 200, r.status_code
            else:
                r = await client.post(url, json=body)
                assert r.status_code == 200, r.text
            latencies.append((time.perf_counter() - start) * 1000)

        async def worker(n: int) -> None:
            for _ in range(n):
                await one()

        for _ in range(min(20, requests)):  # warm-up: connections, caches
            await one()
        latencies.clear()
        start = time.perf_counter()
        per = requests // concurrency
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return statistics.median(latencies), len(latencies) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    args = parser.parse_args()
    fake, upstream = start_fake()
    # Ports from the kernel: ports derived from the process id could be another benchmark's on a
    # shared machine, whose server then answered (and went away) in the middle of the loads.
    port, proxy_port = free_ports(2)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_promptops(Path(tmp), upstream, port)
        litellm = None if args.no_litellm else start_litellm(Path(tmp), upstream, proxy_port)
        try:
            run(upstream, port, args.requests, proxy_port if litellm else None, server.pid)
        finally:
            for proc in (server, litellm):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
            fake.terminate()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), or None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(upstream: int, port: int, requests: int, litellm: int | None, pid: int) -> None:
    direct = f"http://127.0.0.1:{upstream}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
    proxy = f"http://127.0.0.1:{litellm}/v1/chat/completions" if litellm else None
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "why?"}]
    print(
        f"fake upstream: fixed 20 ms; {requests} requests per row"
        + ("" if proxy else "; LiteLLM: n/a (not installed, or --no-litellm)")
    )
    print(
        f"{'load':<22}{'direct p50':>12}{'promptops p50':>15}{'added':>9}"
        f"{'direct rps':>12}{'promptops rps':>15}{'ratio':>8}{'CPU/call':>10}{'LiteLLM p50':>13}"
        f"{'LiteLLM rps':>13}{'ratio':>8}"
    )
    for stream in (False, True):
        for concurrency in (1, 32):
            d_body = {"model": "fake-model", "messages": messages, "temperature": 0.7}
            p_body = {"model": "promptops/bench", "messages": [], "variables": {"q": "why?"}}
            if stream:
                d_body["stream"] = p_body["stream"] = True
            n = requests if concurrency > 1 else requests // 2
            d_p50, d_rps = asyncio.run(
                load(direct, d_body, concurrency=concurrency, requests=n, stream=stream)
            )
            before = cpu_seconds(pid)
            p_p50, p_rps = asyncio.run(
                load(gateway, p_body, concurrency=concurrency, requests=n, stream=stream)
            )
            after = cpu_seconds(pid)
            # The server's CPU per call (warm-up calls included) moves less than latency on a
            # shared machine.
            per_call = (
                f"{(after - before) / (n + min(20, n)) * 1e6:>8.0f}us" if before and after else "     n/a"
            )
            label = f"{'stream' if stream else 'plain'}, concurrency {concurrency}"
            line = (
                f"{label:<22}{d_p50:>10.2f}ms{p_p50:>13.2f}ms{p_p50 - d_p50:>7.2f}ms"
                f"{d_rps:>12.0f}{p_rps:>15.0f}{p_rps / d_rps:>7.2f}x{per_call}"
            )
            if proxy:
                l_p50, l_rps = asyncio.run(
                    load(proxy, d_body, concurrency=concurrency, requests=n, stream=stream)
                )
                line += f"{l_p50:>11.2f}ms{l_rps:>13.0f}{l_rps / d_rps:>7.2f}x"
            else:
                line += f"{'n/a':>13}{'n/a':>13}{'n/a':>8}"
            print(line)
    serve = f"http://127.0.0.1:{port}/v1/prompts/bench-cached/serve"
    complete = f"http://127.0.0.1:{port}/v1/prompts/bench-cached/complete"
    body = {"variables": {"q": "cached?"}}
    h_p50, s_p50 = asyncio.run(alternate(complete, serve, body, requests=requests))
    print(
        f"cache hit (/complete) p50 {h_p50:.2f} ms; plain serve p50 {s_p50:.2f} ms "
        f"(alternating, one connection each); hit / serve p50 {h_p50 / s_p50:.2f}x"
    )
    h_us, s_us = alternate_raw(
        port, "/v1/prompts/bench-cached/complete", "/v1/prompts/bench-cached/serve", body
    )
    print(
        f"the same over raw sockets (httpx's own parsing left out): hit p50 {h_us:.0f} us; "
        f"serve p50 {s_us:.0f} us; hit / serve p50 {h_us / s_us:.3f}x"
    )


async def alternate(first: str, second: str, body: dict[str, Any], *, requests: int) -> tuple[float, float]:
    """(p50 ms of `first`, p50 ms of `second`): POSTs to each in turn, one connection each, so both
    see the same moments of a shared machine (two runs one after the other did not)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2.0)
    times: tuple[list[float], list[float]] = ([], [])
    async with (
        httpx.AsyncClient(limits=limits, timeout=30) as a,
        httpx.AsyncClient(limits=limits, timeout=30) as b,
    ):
        for i in range(requests + 20):  # the first 20 pairs warm up
            for client, url, out in ((a, first, times[0]), (b, second, times[1])):
                start = time.perf_counter()
                r = await client.post(url, json=body)
                assert r.status_code == 200, r.text
                if i >= 20:
                    out.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def alternate_raw(
    port: int, first: str, second: str, body: dict[str, Any], *, requests: int = 2000
) -> tuple[float, float]:
    """`alternate` with a client that writes the request bytes and reads the answer by its
    content-length: httpx's parsing (about three quarters of its p50 here) is left out, so the
    ratio is the server's. (p50 in microseconds of `first`, of `second`.)"""
    raw = json.dumps(body).encode()

    def request(path: str) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
        )
        return head.encode() + raw

    def roundtrip(sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += sock.recv(65536)

    times: tuple[list[float], list[float]] = ([], [])
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pairs = ((socks[0], request(first), times[0]), (socks[1], request(second), times[1]))
        for i in range(requests + 100):  # the first 100 pairs warm up
            for sock, data, out in pairs:
                start = time.perf_counter()
                roundtrip(sock, data)
                if i >= 100:
                    out.append((time.perf_counter() - start) * 1e6)
    finally:
        for sock in socks:
            sock.close()
    return statistics.median(times[0]), statistics.median(times[1])


if __name__ == "__main__":
    main()
