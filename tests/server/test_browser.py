"""The dashboard in a real headless Chromium against a real uvicorn server: sign in, read an
experiment with live traffic, refuse a form without its CSRF token, promote, and see production
move and the audit entry appear. Screenshots of every page land in the test's tmp_path."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptops.config import Settings

BROWSER = os.environ.get("PROMPTOPS_BROWSER", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(BROWSER).exists(), reason=f"no browser at {BROWSER}"),
]

# With max_decisions 100,000 the first stopping check comes at 2,500 matured outcomes, after this
# test's traffic, so the experiment is still running when the admin promotes it by hand.
PROMPT = """\
name: support-triage
description: Route a customer message to one category.
tags: [support, classification]
variables:
  message: {type: string, required: true}
messages:
  - {role: system, content: "You are a support triage assistant. Answer with one category."}
  - {role: user, content: "Text: {{ message }}\\nCategory:"}
variants:
  few-shot:
    messages:
      - {role: system, content: "Answer with one category."}
      - {role: user, content: "late parcel -> shipping\\nText: {{ message }}\\nCategory:"}
experiment:
  metric: resolved
  reward: binary
  arms: [main, few-shot]
  policy: {min_hours: 0, min_samples_per_arm: 200, update_every: 200, min_update_minutes: 0,
           attribution_window_hours: 1, max_decisions: 100000}
"""


class Served:
    """A uvicorn server in a thread, over the test's database and fake clock."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path, clock) -> Iterator[tuple[Served, Any, dict[str, str]]]:  # type: ignore[no-untyped-def]
    from promptops.server.app import create_app
    from promptops.server.runtime import server_ops

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "support-triage.yaml").write_text(PROMPT, encoding="utf-8")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'promptops.db'}",
        prompts_dir=prompts,
        secret_key="browser-test-secret",
        writer_flush_seconds=0.005,
        allowed_hosts=("127.0.0.1",),
    )
    ops = server_ops(settings, clock=clock)
    ops.sync()
    keys = {"admin": ops.keys.create("admin"), "serve": ops.keys.create("serve")}
    app = create_app(settings, ops=ops, clock=clock, background=False)
    try:
        with Served(app) as served:
            yield served, ops, keys
    finally:
        ops.close()


def stored(writer: Any, count: int) -> None:
    """Wait until the server's batched writer has stored `count` decisions (a moment after they
    are served; later on a loaded machine), so each epoch update sees the same traffic."""
    deadline = time.monotonic() + 60
    while writer.written < count:
        assert time.monotonic() < deadline, "decisions were not written"
        time.sleep(0.01)


def drive_traffic(served: Served, ops: Any, clock: Any, key: str, n: int) -> None:
    """Real traffic through the HTTP API: serve, then feedback at each version's own rate."""
    rates = {1: 0.08, 2: 0.16}
    rng = random.Random(3)
    headers = {"Authorization": f"Bearer {key}"}
    writer = served.app.state.runtime.writer
    start = writer.written
    with httpx.Client(base_url=served.url, headers=headers, timeout=10) as http:
        for i in range(n):
            r = http.post(
                "/v1/prompts/support-triage/serve", json={"variables": {"message": "my parcel is late"}}
            )
            assert r.status_code == 200, r.text
            d = r.json()
            if rng.random() < rates[d["version"]]:
                fb = http.post("/v1/feedback", json={"decision_id": d["decision_id"], "reward": 1})
                assert fb.json() == {"status": "recorded"}, fb.text
            clock.advance(3.6)
            if i % 100 == 99:
                stored(writer, start + i + 1)
                ops.tick()
    clock.advance(hours=1, seconds=1)
    ops.tick()


def test_sign_in_read_an_experiment_and_promote(server, clock, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    served, ops, keys = server
    drive_traffic(served, ops, clock, keys["serve"], 1600)
    exp = ops.experiments.list_experiments(prompt="support-triage")[0]
    assert exp.status == "running" and exp.epoch >= 2, exp
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())

            page.goto(f"{served.url}/experiments/{exp.id}")
            expect(page).to_have_url(f"{served.url}/login?next=%2Fexperiments%2F{exp.id}")
            page.screenshot(path=shots / "login.png", full_page=True)
            page.get_by_label("API key").fill(keys["admin"])
            page.get_by_role("button", name="Sign in").click()

            expect(page).to_have_url(f"{served.url}/experiments/{exp.id}")
            expect(page.locator(".flash.ok")).to_have_text("Signed in.")
            rows = page.locator("table.arms tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0).locator("th")).to_contain_text("v1 main")
            expect(rows.nth(1).locator("th")).to_contain_text("v2 few-shot")
            expect(page.locator("figure svg.chart")).to_have_count(4)
            for i in range(4):
                assert page.locator("figure svg.chart").nth(i).locator("path").count() >= 2
            expect(page.locator("ul.rule")).to_contain_text(
                "needs P(beats control) ≥ the boundary spending α = 0.05"
            )
            page.screenshot(path=shots / "experiment.png", full_page=True)

            # a form whose CSRF token was removed is refused, and nothing changes
            page.locator("form[action$='/promote'] input[name=csrf]").evaluate("e => e.remove()")
            page.get_by_role("button", name="Promote", exact=True).click()
            expect(page.locator("h1")).to_have_text("Error 403")
            expect(page.locator(".error-message")).to_contain_text("CSRF")
            page.screenshot(path=shots / "csrf-refused.png", full_page=True)
            assert ops.experiments.get(exp.id).status == "running"
            forged = page.request.post(f"{served.url}/experiments/{exp.id}/stop", form={"csrf": "forged"})
            assert forged.status == 403

            page.goto(f"{served.url}/experiments/{exp.id}")
            page.get_by_label("Promote").select_option(label="v2 few-shot")
            page.get_by_role("button", name="Promote", exact=True).click()
            expect(page.locator(".flash.ok")).to_contain_text("promoted version 2 to production")
            expect(page.locator("h1 .status")).to_have_text("completed")
            trail = page.locator("section[aria-labelledby=trail-h] table.audit > tbody > tr")
            expect(trail.first).to_contain_text("label.move")
            expect(trail.first).to_contain_text(f"key:{keys['admin'][:12]}")
            expect(trail.first.locator("table.evidence")).to_be_visible()
            page.screenshot(path=shots / "experiment-promoted.png", full_page=True)

            page.get_by_role("link", name="support-triage").first.click()
            expect(page.locator("tr.current th")).to_have_text("v2")
            expect(page.locator("tr.current .label.production")).to_be_visible()
            page.screenshot(path=shots / "prompt.png", full_page=True)

            page.goto(f"{served.url}/")
            expect(page.locator("section[aria-labelledby=recent-h] tbody tr")).to_have_count(1)
            page.screenshot(path=shots / "overview.png", full_page=True)

            page.goto(f"{served.url}/audit")
            expect(page.locator("table.audit tbody tr").first).to_contain_text("production")
            page.screenshot(path=shots / "audit.png", full_page=True)
        finally:
            browser.close()

    assert ops.registry.resolve("support-triage").number == 2
    moves = [a for a in ops.registry.audit(prompt="support-triage") if a.action == "label.move"]
    assert moves[0].details["to"] == 2 and moves[0].actor == f"key:{keys['admin'][:12]}"


def test_api_docs_render_with_no_internet(server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    served, _, _ = server
    outside: list[str] = []

    def local_only(route: Any) -> None:
        url = route.request.url
        if url.startswith(served.url):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", local_only)
            page.goto(f"{served.url}/docs")
            expect(page.locator(".opblock").first).to_be_visible(timeout=20_000)
            expect(page.locator(".opblock-summary-path", has_text="/v1/prompts/{name}/serve")).to_have_count(
                1
            )
            expect(page.locator("button.authorize")).to_be_visible()  # the Bearer scheme
            page.screenshot(path=tmp_path / "swagger.png", full_page=False)
            page.goto(f"{served.url}/redoc")
            expect(page.get_by_text("Serve a prompt", exact=False).first).to_be_visible(timeout=20_000)
            page.screenshot(path=tmp_path / "redoc.png", full_page=False)
        finally:
            browser.close()
    assert outside == [], outside
