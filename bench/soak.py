"""Soak: `promptops serve` under a steady rate of serve + feedback for minutes; prints figures.

Starts one or more real `promptops serve` processes on one database, then drives them open-loop at
`--rate` pairs per second (a pair is one serve of an experiment prompt and one feedback for it,
the feedback sent through the next replica, as a load balancer would). Every `--sample` seconds it
prints throughput, latency percentiles of that interval and each server's resident memory (VmRSS
from /proc/PID/status); at the end, the totals per replica and whether every acknowledged
feedback was counted. Nothing passes or fails: it prints figures.

    .venv/bin/python -m bench.soak --duration 300 --rate 100                       # SQLite
    .venv/bin/python -m bench.soak --duration 300 --rate 100 --replicas 2 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test               # PostgreSQL
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

PROMPT = """\
name: soak
description: An experiment that never ends by itself (equal arms, checks too far apart).
variables:
  who: {type: string, required: true, max_length: 100}
template: "Hello {{ who }}."
variants:
  warm:
    template: "Warmest greetings, {{ who }}!"
experiment:
  metric: clicked
  reward: binary
  arms: [main, warm]
  policy: {min_hours: 0, attribution_window_hours: 0.002, min_samples_per_arm: 200,
           update_every: 500, min_update_minutes: 0, max_decisions: 1000000000}
"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values, or nan."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


@dataclass
class Stats:
    """Latencies and counts, per interval and in total."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    serve: list[float] = field(default_factory=list)
    feedback: list[float] = field(default_factory=list)
    all_serve: list[float] = field(default_factory=list)
    all_feedback: list[float] = field(default_factory=list)
    per_replica: list[int] = field(default_factory=list)
    errors: int = 0
    served: int = 0
    acked: int = 0
    late: int = 0  # pairs started more than 100 ms after their slot (the generator fell behind)

    def take_interval(self) -> tuple[list[float], list[float]]:
        """The latencies since the last call."""
        with self.lock:
            s, f = self.serve, self.feedback
            self.serve, self.feedback = [], []
        return s, f


class Server:
    """One `promptops serve` process."""

    def __init__(self, database_url: str, prompts: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PROMPTOPS_DATABASE_URL": database_url, "PROMPTOPS_PROMPTS_DIR": str(prompts)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "promptops.cli", "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 120) -> None:
        """Poll /healthz until it answers 200."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"server exited with {self.proc.returncode}")
                try:
                    if c.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise SystemExit("server did not become ready")

    def stop(self) -> None:
        """Terminate, then kill."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker(
    servers: list[Server],
    stats: Stats,
    *,
    rate: float,
    t0: float,
    until: float,
    next_slot: list[int],
    slot_lock: threading.Lock,
) -> None:
    """Take the next slot of the schedule, wait for it, run one serve + feedback pair."""
    clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
    n = len(servers)
    try:
        while True:
            with slot_lock:
                k = next_slot[0]
                next_slot[0] += 1
            due = t0 + k / rate
            if due >= until or time.monotonic() >= until:  # past the end, even if behind
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.1:
                with stats.lock:
                    stats.late += 1
            one, other = k % n, (k + 1) % n
            try:
                a = time.perf_counter()
                r = clients[one].post("/v1/prompts/soak/serve", json={"variables": {"who": f"u{k}"}})
                b = time.perf_counter()
                r.raise_for_status()
                with stats.lock:
                    stats.served += 1
                did = r.json()["decision_id"]
                f = clients[other].post("/v1/feedback", json={"decision_id": did, "reward": k % 3 == 0})
                c = time.perf_counter()
                f.raise_for_status()
            except httpx.HTTPError:
                with stats.lock:
                    stats.errors += 1
                continue
            with stats.lock:
                stats.serve.append(b - a)
                stats.feedback.append(c - b)
                stats.all_serve.append(b - a)
                stats.all_feedback.append(c - b)
                stats.per_replica[one] += 1
                stats.per_replica[other] += 1
                stats.acked += 1
    finally:
        for client in clients:
            client.close()


def ms(x: float) -> str:
    """Seconds as milliseconds."""
    return f"{x * 1000:.1f}"


def run(args: argparse.Namespace) -> None:
    """Start the servers, drive the load, print figures."""
    work = Path(tempfile.mkdtemp(prefix="promptops-soak-"))
    prompts = work / "prompts"
    prompts.mkdir()
    (prompts / "soak.yaml").write_text(PROMPT)
    schema = None
    admin = None
    if args.postgres:
        from sqlalchemy import create_engine, text

        schema = f"soak_{uuid.uuid4().hex[:10]}"
        admin = create_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in args.postgres else "?"
        url = f"{args.postgres}{sep}options={quote(f'-csearch_path={schema}')}"
        shown = f"PostgreSQL, schema {schema}"
    else:
        url = args.database_url or f"sqlite:///{work / 'soak.db'}"
        shown = url
    servers: list[Server] = []
    try:
        # Start one server first (it migrates and syncs), then the others.
        servers.append(Server(url, prompts, work / "server-0.log"))
        servers[0].wait_ready()
        for i in range(1, args.replicas):
            servers.append(Server(url, prompts, work / f"server-{i}.log"))
        for s in servers:
            s.wait_ready()
        drive(servers, args, shown)
    finally:
        for s in servers:
            s.stop()
        if admin is not None and schema is not None:
            from sqlalchemy import text

            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and files kept in {work}")


def drive(servers: list[Server], args: argparse.Namespace, shown: str) -> None:
    """The load loop with periodic samples, then the summary."""
    stats = Stats(per_replica=[0] * len(servers))
    rss_start = [rss_mib(s.proc.pid) for s in servers]
    print(
        f"soak: {len(servers)} replica(s) on {shown}; {args.rate:g} pairs/s "
        f"({2 * args.rate:g} requests/s) for {args.duration:g} s; {args.workers} client threads;"
        f" {os.cpu_count()} CPUs shared by servers and clients"
    )
    print(f"RSS at start (MiB): {', '.join(f'{r:.1f}' for r in rss_start)}")
    print(
        f"{'t/s':>6} {'pairs/s':>8} {'serve p50':>9} {'p99':>7} {'fb p50':>7} {'p99':>7}"
        f" {'errors':>6}  RSS MiB per replica"
    )
    t0 = time.monotonic() + 0.5
    until = t0 + args.duration
    slot, slot_lock = [0], threading.Lock()
    threads = [
        threading.Thread(
            target=worker,
            args=(servers, stats),
            kwargs={"rate": args.rate, "t0": t0, "until": until, "next_slot": slot, "slot_lock": slot_lock},
            daemon=True,
        )
        for _ in range(args.workers)
    ]
    for t in threads:
        t.start()
    rss_samples: list[list[float]] = []
    last, last_acked = t0, 0
    while any(t.is_alive() for t in threads):
        time.sleep(min(args.sample, max(0.0, until - time.monotonic()) + 0.2))
        now = time.monotonic()
        s, f = stats.take_interval()
        rss = [rss_mib(srv.proc.pid) for srv in servers]
        rss_samples.append(rss)
        acked = stats.acked
        if now - last < 1 and not any(t.is_alive() for t in threads):
            break  # the tail of the last interval: too short to say anything
        print(
            f"{now - t0:6.0f} {(acked - last_acked) / max(now - last, 1e-9):8.1f}"
            f" {ms(percentile(s, 50)):>9} {ms(percentile(s, 99)):>7}"
            f" {ms(percentile(f, 50)):>7} {ms(percentile(f, 99)):>7} {stats.errors:>6}  "
            + ", ".join(f"{r:.1f}" for r in rss),
            flush=True,
        )
        last, last_acked = now, acked
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    print("\nsummary")
    for name, values in (("serve", stats.all_serve), ("feedback", stats.all_feedback)):
        print(
            f"  {name:9} n={len(values)}  p50 {ms(percentile(values, 50))} ms  "
            f"p90 {ms(percentile(values, 90))} ms  p99 {ms(percentile(values, 99))} ms  "
            f"max {ms(max(values, default=float('nan')))} ms"
        )
    print(
        f"  pairs acknowledged {stats.acked} ({stats.acked / elapsed:.1f}/s), errors "
        f"{stats.errors}, started late (>100 ms) {stats.late}"
    )
    for i, handled in enumerate(stats.per_replica):
        print(f"  replica {i}: {handled / elapsed:.1f} requests/s")
    warm = rss_samples[min(len(rss_samples) - 1, max(0, int(60 / args.sample) - 1))]
    end = rss_samples[-1]
    for i, srv in enumerate(servers):
        print(
            f"  replica {i} RSS MiB: start {rss_start[i]:.1f}, after ~1 min {warm[i]:.1f}, "
            f"end {end[i]:.1f} (pid {srv.proc.pid})"
        )
    with httpx.Client(base_url=servers[0].url, timeout=30) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            httpx.get(f"{s.url}/healthz", timeout=5).json()["pending_decisions"] for s in servers
        ):
            time.sleep(0.2)
        exps = c.get("/v1/experiments", params={"prompt": "soak"}).json()["experiments"]
        exp = exps[0]
        counted = sum(a["feedback"] for a in exp["arms"])
        decisions = sum(a["decisions"] for a in exp["arms"])
        print(
            f"  experiment {exp['id']} {exp['status']}, epoch {exp['epoch']}: feedback counted "
            f"{counted} of {stats.acked} acknowledged; decisions counted {decisions} of "
            f"{stats.served} served"
        )


def main() -> None:
    """Parse arguments and run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    p.add_argument("--rate", type=float, default=100, help="serve+feedback pairs per second")
    p.add_argument("--replicas", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--workers", type=int, default=32, help="client threads (default 32)")
    p.add_argument("--sample", type=float, default=15, help="seconds between samples")
    p.add_argument("--database-url", help="database URL (default: SQLite in a temp folder)")
    p.add_argument("--postgres", help="PostgreSQL URL; the run uses a private schema there")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = p.parse_args()
    if args.replicas > 1 and not args.postgres and not (args.database_url or "").startswith("postgresql"):
        p.error("several replicas need PostgreSQL (--postgres URL)")
    run(args)


if __name__ == "__main__":
    main()
