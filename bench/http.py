"""HTTP throughput of promptops's serve and feedback against a bare FastAPI app, loaded with wrk.

Starts `promptops serve` on a temporary SQLite database with the example prompt `support-triage`
(its experiment running) and `bench/bare_app.py` (same routes and shapes, no database), both under
uvicorn with one worker, and loads them in turn (bare, promptops, bare, promptops) with wrk on
loopback. Serve runs first; every decision must then be in the database (compared with wrk's request
count). Feedback runs send the decision ids the serve runs stored, a different one per request, so
each feedback is a first, durable write. Prints req/s, the ratio to the bare app, p50 and p99.

    python -m bench.http [--duration 10] [--connections 16] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/http.py` puts bench/ first on sys.path, where this file would shadow the standard
# library's `http` package; drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "support-triage"
MESSAGE = "Order 4411 was due on Monday and the tracking page has not changed in four days."

DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""

SERVE_LUA = """
wrk.method = "POST"
wrk.path = "/v1/prompts/%(prompt)s/serve"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%(body)s'
"""

# Decision ids are read from a file at start: a Lua table literal of 10^5 strings exceeds
# LuaJIT's constant limit. Thread k of n sends ids k, k+n, k+2n, ... so no id is sent twice.
FEEDBACK_LUA = """
wrk.method = "POST"
wrk.path = "/v1/feedback"
wrk.headers["Content-Type"] = "application/json"
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
local threads, counter = 0, 0
setup = function(thread)
  thread:set("index", threads)
  threads = threads + 1
end
init = function(args)
  counter = index
  step = tonumber(%(threads)d)
  math.randomseed(1000 + index)
end
request = function()
  local id = ids[(counter %% #ids) + 1]
  counter = counter + step
  return wrk.format(nil, nil, nil,
    '{"decision_id": "' .. id .. '", "reward": ' .. math.random(0, 1) .. '}')
end
"""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], *, seconds: float = 60.0) -> None:
    """Poll /healthz until it answers 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, script: Path, pid: int, *, threads: int, connections: int, duration: float) -> dict:
    """Run wrk once; its summary (requests, req/s, p50/p99, errors) and the server's CPU time."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "-s", str(script), url]
    cpu = cpu_seconds(pid)
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cpu = cpu_seconds(pid) - cpu
    line = next(x for x in res.stdout.splitlines() if x.startswith("WRKJSON "))
    s = json.loads(line[len("WRKJSON ") :])
    s["rps"] = s["requests"] / (s["duration_us"] / 1e6)
    # CPU per request is what the server spends, whatever else runs on the machine.
    s["cpu_us"] = cpu / max(s["requests"], 1) * 1e6
    return s


def count(db: Path, table: str) -> int:
    """Rows in a table of the promptops database."""
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def settle(url: str, db: Path, table: str) -> int:
    """The row count once the server's batched writer has nothing pending."""
    last = -1
    for _ in range(200):
        pending = httpx.get(url + "/healthz", timeout=5).json().get("pending_decisions", 0)
        now = count(db, table)
        if pending == 0 and now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server gracefully (uvicorn flushes on SIGINT)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def mean(runs: list[dict], key: str) -> float:
    """The mean of one figure over runs."""
    return sum(r[key] for r in runs) / len(runs)


def show(kind: str, runs: dict[str, list[dict]]) -> float:
    """Print one comparison and return the throughput ratio."""
    for name in ("bare", "promptops"):
        for i, r in enumerate(runs[name], 1):
            print(
                f"  {kind:8} {name:9} run {i}: {r['rps']:6.0f} req/s  p50 {r['p50_us'] / 1000:6.2f}"
                f" ms  p99 {r['p99_us'] / 1000:6.2f} ms  server CPU {r['cpu_us']:4.0f} us/req"
                f"  errors {r['errors']}  non-2xx {r['status_errors']}"
            )
    bare, ours = mean(runs["bare"], "rps"), mean(runs["promptops"], "rps")
    ratio = ours / bare
    cpu = mean(runs["bare"], "cpu_us") / mean(runs["promptops"], "cpu_us")
    ms = {k: {n: mean(runs[n], k) / 1000 for n in runs} for k in ("p50_us", "p99_us")}
    print(
        f"{kind}: promptops {ours:.0f} req/s vs bare {bare:.0f} req/s = {ratio:.2f}x "
        f"(by server CPU per request: {cpu:.2f}x); p50 {ms['p50_us']['promptops']:.2f} vs "
        f"{ms['p50_us']['bare']:.2f} ms, p99 {ms['p99_us']['promptops']:.2f} vs "
        f"{ms['p99_us']['bare']:.2f} ms"
    )
    return ratio


def main() -> None:
    """Run the comparison and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    load = {"threads": args.threads, "connections": args.connections, "duration": args.duration}

    tmp = Path(tempfile.mkdtemp(prefix="promptops-bench-"))
    prompts = tmp / "prompts"
    prompts.mkdir()
    shutil.copy(ROOT / "prompts" / f"{PROMPT}.yaml", prompts)
    db = tmp / "promptops.db"
    env = {**os.environ, "PROMPTOPS_DATABASE_URL": f"sqlite:///{db}", "PROMPTOPS_PROMPTS_DIR": str(prompts)}
    ports = {"promptops": free_port(), "bare": free_port()}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    exe = Path(sys.executable).parent / "promptops"
    procs = {
        "promptops": subprocess.Popen(
            [str(exe), "serve", "--port", str(ports["promptops"])], env=env, cwd=tmp
        ),
        "bare": subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.bare_app:app",
                "--port",
                str(ports["bare"]),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
        ),
    }
    try:
        for name, proc in procs.items():
            wait_healthy(urls[name], proc)
        running = [
            e
            for e in httpx.get(urls["promptops"] + "/v1/experiments").json()["experiments"]
            if e["status"] == "running" and e["prompt"] == PROMPT
        ]
        assert running, "the example prompt has no running experiment"
        body = json.dumps({"variables": {"message": MESSAGE}})
        serve_lua = tmp / "serve.lua"
        serve_lua.write_text(SERVE_LUA % {"prompt": PROMPT, "body": body} + DONE)
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
            f"{os.cpu_count()} CPUs, SQLite at {db}"
        )

        for name in ("bare", "promptops"):  # warm up (and exclude from the counts)
            wrk(urls[name], serve_lua, procs[name].pid, **{**load, "duration": 2})
        warm = settle(urls["promptops"], db, "decisions")

        serve: dict[str, list[dict]] = {"bare": [], "promptops": []}
        for _ in range(2):
            for name in ("bare", "promptops"):
                serve[name].append(wrk(urls[name], serve_lua, procs[name].pid, **load))
        serve_ratio = show("serve", serve)
        stored = settle(urls["promptops"], db, "decisions") - warm
        sent = sum(r["requests"] for r in serve["promptops"])
        in_flight = args.connections * len(serve["promptops"])
        ok = sent <= stored <= sent + in_flight
        print(
            f"decisions stored {stored} for {sent} completed serves "
            f"(+ at most {in_flight} in flight when wrk stopped): {'OK' if ok else 'MISSING'}"
        )

        # One more (unmeasured) serve run so each feedback run has fresh ids to spare.
        wrk(urls["promptops"], serve_lua, procs["promptops"].pid, **load)
        settle(urls["promptops"], db, "decisions")
        with sqlite3.connect(db) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM decisions ORDER BY rowid")]
        half = len(ids) // 2
        feedback: dict[str, list[dict]] = {"bare": [], "promptops": []}
        for i in range(2):
            chunk = tmp / f"ids{i}.txt"
            chunk.write_text("\n".join(ids[i * half : (i + 1) * half]) + "\n")
            lua = tmp / f"feedback{i}.lua"
            lua.write_text(FEEDBACK_LUA % {"ids": chunk, "threads": args.threads} + DONE)
            for name in ("bare", "promptops"):
                feedback[name].append(wrk(urls[name], lua, procs[name].pid, **load))
        feedback_ratio = show("feedback", feedback)
        rows = count(db, "feedback")
        sent = sum(r["requests"] for r in feedback["promptops"])
        reused = sum(max(0, r["requests"] - half) for r in feedback["promptops"])
        print(
            f"feedback rows {rows} for {sent} acknowledged feedback, each a distinct decision"
            f"{f' ({reused} ids reused: too few decisions)' if reused else ''}"
        )
        print(
            f"RESULT serve {serve_ratio:.2f}x (target >= 0.80), "
            f"feedback {feedback_ratio:.2f}x (target >= 0.60)"
        )
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
