"""The dashboard's pages through their template contexts: overview, prompt, experiment, audit,
sign-in, CSRF and the admin actions; plus the charts and formatting helpers."""

from __future__ import annotations

import html
import random
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from sqlalchemy import event, update

from promptops.db.models import EpochRow, ExperimentRow
from promptops.server import dashboard
from promptops.server.auth import SESSION_COOKIE
from promptops.server.dashboard import charts, formats, pages
from promptops.services.calls import NO_USAGE
from promptops.services.views import ArmView, EpochView, ExperimentView

FAST = (
    "{min_hours: 0, min_samples_per_arm: 200, update_every: 200, min_update_minutes: 0, "
    "attribution_window_hours: 1, max_decisions: 100000}"
)  # first check after 2,500
PROMPT = f"""\
name: triage
description: Route a message.
tags: [support]
variables:
  message: {{type: string, required: true}}
  limit: {{type: integer, default: 3}}
messages:
  - {{role: system, content: "Answer with one category."}}
  - {{role: user, content: "Text: {{{{ message }}}} ({{{{ limit }}}})"}}
variants:
  few-shot:
    messages:
      - {{role: user, content: "Example: late parcel -> shipping. Text: {{{{ message }}}}"}}
experiment:
  metric: resolved
  reward: binary
  arms: [main, few-shot]
  policy: {FAST}
"""
HTML = {"accept": "text/html"}


def stored(writer, count: int) -> None:
    """Wait until the app's batched writer has stored `count` decisions (it stores them a moment
    after they are served, later still on a loaded machine)."""
    deadline = time.monotonic() + 60
    while writer.written < count:
        assert time.monotonic() < deadline, "decisions were not written"
        time.sleep(0.01)


def traffic(ops, clock, n: int, rates: dict[int, float], *, seed: int = 1) -> None:
    """Serve n decisions at 1,000 an hour, each rewarded with its version's rate; every 100
    decisions, once they are stored, run the epoch update."""
    rng = random.Random(seed)
    start = ops.writer.written
    for i in range(n):
        d = ops.serve("triage", {"message": "where is my parcel"})
        if rng.random() < rates[d.version]:
            ops.feedback(d.decision_id, 1)
        clock.advance(3.6)
        if i % 100 == 99:
            stored(ops.writer, start + i + 1)
            ops.tick()


@pytest.fixture
def synced(ops, prompts_dir, client):
    (prompts_dir / "triage.yaml").write_text(PROMPT, encoding="utf-8")
    ops.sync()
    client.app.state.runtime.refresh(force=True)
    return ops.experiments.list_experiments(prompt="triage")[0]


@pytest.fixture
def busy(ops, clock, synced, client):
    """An experiment with a few epochs of traffic and feedback, still running."""
    assert ops.writer is client.app.state.runtime.writer
    traffic(ops, clock, 1500, {1: 0.10, 2: 0.14})
    clock.advance(hours=1, seconds=1)
    ops.tick()
    client.app.state.runtime.refresh()
    exp = ops.experiments.get(synced.id)
    assert exp.status == "running" and exp.epoch >= 2, exp
    return exp


@pytest.fixture
def keyed(ops, client, synced):
    keys = {"serve": ops.keys.create("serve"), "admin": ops.keys.create("admin")}
    client.app.state.runtime.refresh(force=True)
    return keys


def sign_in(client, key: str):
    page = client.get("/login", headers=HTML)
    r = client.post(
        "/login", data={"key": key, "csrf": page.context["csrf"], "next": "/"}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    return r


def csrf(client, path: str) -> str:
    r = client.get(path, headers=HTML)
    assert r.status_code == 200, r.text
    return r.context["csrf"]


# -- pages --------------------------------------------------------------------------------
def test_overview_lists_prompts_and_running_experiments(client, busy):
    r = client.get("/", headers=HTML)
    assert r.status_code == 200 and r.template.name == "overview.html"
    ctx = r.context
    assert ctx["auth_off"] is True and "Authentication is off" in r.text
    [p] = ctx["prompts"]
    assert (p["name"], p["production_version"], p["experiment_id"]) == ("triage", 1, busy.id)
    [row] = ctx["running"]
    best = max(busy.arms, key=lambda a: a.p_best)
    assert row.leader == f"v{best.version} {best.variant}"
    assert row.leader_p_best == best.p_best
    assert row.decisions == 1500 and row.running_for == pytest.approx(1500 * 3.6 + 3601)
    assert ctx["recent"] == []
    assert f'href="/experiments/{busy.id}"' in r.text
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_prompt_page_shows_versions_labels_diff_and_preview(client, synced):
    r = client.get("/prompts/triage", headers=HTML)
    assert r.status_code == 200
    ctx = r.context
    assert [v.number for v in ctx["prompt"].versions] == [2, 1]
    assert ctx["prompt"].versions[0].source_path.endswith("triage.yaml")
    assert ctx["production"] == 1 and ctx["prompt"].labels == {"production": 1}
    assert (ctx["diff"]["a"], ctx["diff"]["b"]) == (1, 2)
    kinds = {k for k, _ in ctx["diff"]["lines"]}
    assert {"add", "del", "hunk", "file"} <= kinds
    preview = ctx["preview"]
    assert preview["version"] == 1 and preview["error"] is None
    assert [f["name"] for f in preview["fields"]] == ["message", "limit"]
    assert preview["result"].messages[1].content == "Text: sample message (3)"
    assert 'class="d-add"' in r.text and "Make production" in r.text  # auth off: admin


def test_prompt_preview_takes_variables_and_reports_problems(client, synced):
    r = client.get("/prompts/triage", params={"version": 2, "var.message": "<b>late</b>"}, headers=HTML)
    result = r.context["preview"]["result"]
    assert result.version == 2 and "Text: <b>late</b>" in result.messages[0].content
    assert "&lt;b&gt;late&lt;/b&gt;" in r.text and "<b>late</b>" not in r.text  # autoescaped
    r = client.get("/prompts/triage", params={"var.limit": "many"}, headers=HTML)
    assert r.status_code == 200 and "limit" in r.context["preview"]["error"]
    r = client.get("/prompts/triage", params={"a": 2, "b": 2}, headers=HTML)
    assert r.context["diff"]["lines"] == []


def test_unknown_pages_answer_an_html_error_page(client, synced):
    r = client.get("/prompts/nope", headers=HTML)
    assert r.status_code == 404 and r.template.name == "error.html"
    assert "nope" in r.context["message"]
    r = client.get("/experiments/99999999999999999999999", headers=HTML)
    assert r.status_code in (404, 422) and r.template.name == "error.html"
    assert client.get("/experiments/424242", headers=HTML).status_code == 404


@pytest.mark.parametrize(
    "path", ["/experiments/01", "/experiments/+1", "/evals/runs/%201", "/experiments/1_0"]
)
def test_only_the_canonical_spelling_of_a_page_id_is_found(client, synced, path):
    r = client.get(path, headers=HTML)
    assert r.status_code == 422 and r.template.name == "error.html", r.text
    assert client.get("/experiments/1", headers=HTML).status_code == 200


def test_experiment_page_shows_arms_charts_and_the_stopping_rule(client, busy):
    r = client.get(f"/experiments/{busy.id}", headers=HTML)
    assert r.status_code == 200
    ctx = r.context
    arms = ctx["arms"]
    assert [a.label for a in arms] == ["v1 main", "v2 few-shot"]
    assert sum(a.decisions for a in arms) == 1500
    assert all(a.n > 0 and a.mean is not None and a.p_best is not None for a in arms)
    assert all("%" in a.ci_text and "–" in a.ci_text for a in arms)
    assert sum(a.weight for a in arms) == pytest.approx(1.0)
    assert len(ctx["history"]) == busy.epoch + 1
    for name in ("density", "p_best", "weights", "cumulative"):
        svg = str(ctx["charts"][name])
        ET.fromstring(svg)  # well-formed
        assert svg.count("<path") >= 2, name
    rule = " ".join(ctx["rule"])
    challenger = arms[1]
    assert (
        "needs P(beats control) ≥ the boundary spending α = 0.05 over the checks (first check 99.79%)"
    ) in rule
    assert f"v2 few-shot is at {formats.fmt_pct(challenger.p_beats_control)}" in rule
    assert f"{busy.checks_done} of at most 40 stopping checks" in rule
    assert "Promote" in r.text and "Stop experiment" in r.text
    assert "Sample ratio mismatch" not in r.text


def test_experiment_page_raises_the_mismatch_alarm(client, ops, busy):
    with ops.ctx.tx() as s:
        snap = dict(s.get(ExperimentRow, busy.id).snapshot, srm_alarm=True, srm_p=1e-6)
        s.execute(update(ExperimentRow).where(ExperimentRow.id == busy.id).values(snapshot=snap))
    r = client.get(f"/experiments/{busy.id}", headers=HTML)
    assert r.context["exp"].srm_alarm is True
    assert "Sample ratio mismatch" in r.text and "1e-06" in r.text
    assert any("frozen" in line for line in r.context["rule"])


def test_experiment_page_shows_flags_guardrails_metrics_and_the_holdout(client, ops, busy):
    sentence = "blocked: v2 (terse) cost_usd +24% (+18% .. +31%) > 10% allowed"
    with ops.ctx.tx() as s:
        snap = dict(
            s.get(ExperimentRow, busy.id).snapshot,
            flags=[
                {
                    "flag": "feedback",
                    "sentence": "v2 (terse)'s feedback arrives later "
                    "than the window (80% late): lengthen `attribution_window_hours`",
                    "evidence": {"v2 (terse)": {"late": 321, "on_time": 80}},
                }
            ],
            metrics={"cost_usd": [{"mean": 0.001, "ci_low": 0.0009, "ci_high": 0.0011, "n": 400}] * 2},
            guardrails=[
                {
                    "arm": 1,
                    "metric": "cost_usd",
                    "state": "blocked",
                    "diff": 0.2,
                    "diff_low": 0.1,
                    "diff_high": 0.3,
                    "relative": True,
                    "sentence": sentence,
                }
            ],
            holdout={"p_old_better": 0.42, "reason": "holdout running"},
        )
        s.execute(
            update(ExperimentRow)
            .where(ExperimentRow.id == busy.id)
            .values(
                snapshot=snap,
                status="holdout",
                holdout={"new": 1, "old": 0, "started_at": 0.0, "decisions_at_start": 0},
            )
        )
    r = client.get(f"/experiments/{busy.id}", headers=HTML)
    assert r.status_code == 200, r.text
    text = html.unescape(" ".join(r.text.split()))
    assert "Promotion frozen (feedback mismatch).</strong> v2 (terse)'s feedback arrives" in text
    assert "late 321" in text
    assert sentence in text
    assert "0.001 (0.0009 – 0.0011), n 400" in text
    assert "<strong>Holdout.</strong> Version 2 is production; version 1 keeps a share" in text
    assert r.context["rule"][0].startswith("Guarded rollout: version 2 was promoted")
    assert "P(version 1 is better) is 42" in r.context["rule"][0]


def _into_rollout(ops, exp_id: int, *, started: float, ended: float | None, status: str) -> None:
    """Put an experiment into its guarded rollout at `started` (v2 promoted, v1 holding 20%), and
    end it at `ended` with `status` if given, as the epoch update does."""
    with ops.ctx.tx() as s:
        row = s.get(ExperimentRow, exp_id)
        s.add(
            EpochRow(
                experiment_id=exp_id,
                idx=row.epoch + 1,
                started_at=started,
                weights=[0.2, 0.8],
                matured_at_start=row.matured_total,
                summary={"holdout": True},
            )
        )
        snap = dict(row.snapshot, holdout={"p_old_better": 0.97, "reason": "v1 beats v2 on the holdout"})
        s.execute(
            update(ExperimentRow)
            .where(ExperimentRow.id == exp_id)
            .values(
                status=status,
                epoch=row.epoch + 1,
                winner_arm=1,
                snapshot=snap,
                ended_at=ended,
                end_reason="P(v1 better) 97% on the holdout" if ended else None,
                holdout={"new": 1, "old": 0, "started_at": started, "decisions_at_start": 1500},
            )
        )


def test_experiment_page_draws_the_holdout_on_the_time_charts(client, ops, clock, busy):
    started = clock() - 1800
    _into_rollout(ops, busy.id, started=started, ended=None, status="holdout")
    r = client.get(f"/experiments/{busy.id}", headers=HTML)
    assert r.status_code == 200, r.text
    assert '<span class="status holdout">holdout: guarded rollout</span>' in r.text
    assert r.context["history"][-1].holdout
    for name in ("p_best", "weights"):
        svg = str(r.context["charts"][name])
        tree = ET.fromstring(svg)
        marks = [g for g in tree.iter("{http://www.w3.org/2000/svg}g") if "marker" in g.get("class", "")]
        assert [g.get("class") for g in marks] == ["marker holdout"], name
        label = marks[0].find("{http://www.w3.org/2000/svg}text")
        assert label is not None and label.text == "holdout: v2 80% / v1 20%", name
        assert "holdout: v2 80% / v1 20%" in tree.find("{http://www.w3.org/2000/svg}desc").text
    # the weights chart holds the split from the marker on
    assert "rolled back" not in r.text


def test_experiment_page_marks_a_rollback(client, ops, clock, busy):
    now = clock()
    _into_rollout(ops, busy.id, started=now - 3600, ended=now - 600, status="rolled_back")
    r = client.get(f"/experiments/{busy.id}", headers=HTML)
    assert r.status_code == 200, r.text
    assert '<span class="status rolled_back">rolled back</span>' in r.text
    assert r.context["rule"] == [
        "Rolled back: version 2 was promoted, then version 1 proved better on its holdout share; "
        "production moved back to version 1. P(v1 better) 97% on the holdout."
    ]
    for name in ("p_best", "weights"):
        tree = ET.fromstring(str(r.context["charts"][name]))
        marks = {
            g.get("class"): g
            for g in tree.iter("{http://www.w3.org/2000/svg}g")
            if "marker" in g.get("class", "")
        }
        assert set(marks) == {"marker holdout", "marker rollback"}, name
        line = marks["marker rollback"].find("{http://www.w3.org/2000/svg}line")
        label = marks["marker rollback"].find("{http://www.w3.org/2000/svg}text")
        assert label is not None and label.text == "rolled back to v1"
        assert line is not None and line.get("stroke") == charts.MARKER_COLORS["rollback"]
        # the rollback is drawn after the holdout's start
        start = marks["marker holdout"].find("{http://www.w3.org/2000/svg}line")
        assert start is not None and float(start.get("x1")) < float(line.get("x1"))
    overview = client.get("/", headers=HTML)
    assert [e.id for e in overview.context["recent"]] == [busy.id]
    assert "rolled back</span>" in overview.text


def test_rollout_markers_sit_at_their_times():
    exp = three_arms()
    hold = {"new_version": 2, "old_version": 1, "started_at": 3600.0, "p_old_better": None, "reason": None}
    history = [
        EpochView(0, 0.0, [0.4, 0.3, 0.3], 0, None, None, False),
        EpochView(1, 3600.0, [0.2, 0.8, 0.0], 900, None, None, False, holdout=True),
    ]
    ended = replace(exp, status="rolled_back", holdout=hold, ended_at=7200.0, started_at=0.0)
    assert charts.rollout_markers(ended, history) == [
        charts.Marker(3600.0, "holdout: v2 80% / v1 20%"),
        charts.Marker(7200.0, "rolled back to v1", "rollback"),
    ]
    completed = replace(ended, status="completed")
    assert charts.rollout_markers(completed, history)[1] == charts.Marker(7200.0, "holdout over: v2 stays")
    assert charts.rollout_markers(replace(exp, holdout=None), history) == []
    svg = str(charts.experiment_charts(ended, history, now=7200.0)["weights"])
    # two hours on the axis: the holdout starts halfway across the plot, the rollback at its end
    half = charts.LEFT + (charts.WIDTH - charts.LEFT - charts.RIGHT) / 2
    assert f'<line x1="{half:.1f}" y1="{charts.TOP}"' in svg
    assert f'<line x1="{charts.WIDTH - charts.RIGHT:.1f}" y1="{charts.TOP}"' in svg
    assert formats.status_text("rolled_back") == "rolled back" and formats.status_text("running") == "running"


def test_pages_read_aggregates_never_the_decision_log(client, ops, busy):
    statements: list[str] = []

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement.lower())

    event.listen(ops.ctx.engine, "before_cursor_execute", record)
    try:
        for path in ("/", "/prompts/triage", f"/experiments/{busy.id}", "/audit"):
            assert client.get(path, headers=HTML).status_code == 200, path
    finally:
        event.remove(ops.ctx.engine, "before_cursor_execute", record)
    assert statements
    log = [s for s in statements if re.search(r"\b(from|join)\s+(decisions|feedback)\b", s)]
    assert not log, log


def test_audit_page_pages_and_filters(client, ops, synced):
    for v in (2, 1, 2, 1):
        ops.registry.move_label("triage", v, "staging", actor="t")
    r = client.get("/audit", headers=HTML)
    ctx = r.context
    assert ctx["prompts"] == ["triage"] and ctx["more"] is False
    actions = [e.action for e in ctx["entries"]]
    assert actions.count("label.move") == 5, actions
    assert client.get("/audit", params={"prompt": "triage"}, headers=HTML).context["prompt"] == "triage"
    old = pages.AUDIT_PAGE
    pages.AUDIT_PAGE = 2
    try:
        first = client.get("/audit", headers=HTML).context
        second = client.get("/audit", params={"offset": 2}, headers=HTML).context
    finally:
        pages.AUDIT_PAGE = old
    assert first["more"] is True and len(first["entries"]) == 2
    assert {e.id for e in first["entries"]}.isdisjoint(e.id for e in second["entries"])


# -- actions and auth -----------------------------------------------------------------------
def test_promote_moves_production_and_records_evidence(client, ops, busy):
    path = f"/experiments/{busy.id}"
    r = client.post(
        f"{path}/promote", data={"version": "2", "csrf": csrf(client, path)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == path
    page = client.get(path, headers=HTML)
    assert page.context["flash"] == {
        "kind": "ok",
        "message": f"Experiment {busy.id} promoted version 2 to production.",
    }
    assert ops.registry.resolve("triage").number == 2
    assert page.context["exp"].status == "completed" and "Promote" not in page.text
    moves = [(e, ev) for e, ev in page.context["audit"] if e.action == "label.move"]
    assert len(moves) == 1 and moves[0][0].actor == "local (auth off)"
    assert [row["label"] for row in moves[0][1]["rows"]] == ["v1 main", "v2 few-shot"]
    assert "Evidence" in page.text
    assert client.get(path, headers=HTML).context["flash"] is None  # shown once
    again = client.post(f"{path}/promote", data={"csrf": csrf(client, path)})
    assert again.status_code == 200 and again.context["flash"]["kind"] == "error"


def test_promote_with_a_malformed_version_is_refused_not_the_leader(client, ops, busy):
    path = f"/experiments/{busy.id}"
    token = csrf(client, path)
    for version in ("abc", "-1", "0", "1.5", "\uff11"):  # the last is a full-width digit one
        r = client.post(f"{path}/promote", data={"version": version, "csrf": token})
        assert r.status_code == 200 and "choose a version" in r.text, (version, r.text)
    assert ops.experiments.get(busy.id).status == "running"


def test_stop_and_rollback(client, ops, busy):
    path = f"/experiments/{busy.id}"
    client.post(f"{path}/stop", data={"csrf": csrf(client, path)})
    assert ops.experiments.get(busy.id).status == "stopped"
    token = csrf(client, "/prompts/triage")
    r = client.post("/prompts/triage/production", data={"version": "2", "csrf": token})
    assert r.context["flash"]["message"] == "production: version 1 → 2."
    assert r.context["production"] == 2
    r = client.post("/prompts/triage/production", data={"version": "9", "csrf": token})
    assert r.context["flash"]["kind"] == "error" and r.context["production"] == 2


def test_posts_without_a_valid_csrf_token_are_refused(client, ops, busy):
    path = f"/experiments/{busy.id}"
    csrf(client, path)
    for data in ({}, {"csrf": "forged"}, {"csrf": "é"}, {"csrf": "\x00"}):  # non-ASCII: no 500
        for url in (f"{path}/promote", f"{path}/stop", "/prompts/triage/production", "/login", "/logout"):
            r = client.post(url, data=data, headers=HTML)
            assert r.status_code == 403 and "CSRF" in r.text, (url, r.text)
    assert ops.experiments.get(busy.id).status == "running"


def test_anonymous_visitors_are_sent_to_sign_in(client, keyed):
    r = client.get("/prompts/triage?a=1", headers=HTML, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fprompts%2Ftriage%3Fa%3D1"
    page = client.get("/login", params={"next": "//evil.example"}, headers=HTML)
    assert page.context["next"] == "/" and "Authentication is off" not in page.text
    r = client.post("/login", data={"key": "po_admin_wrong", "csrf": page.context["csrf"]})
    assert r.status_code == 401 and "not valid" in r.text
    r = client.post("/login", data={"key": keyed["admin"]}, follow_redirects=False)
    assert r.status_code == 403  # the sign-in form needs its token too


def test_admin_session_cookie_and_actions(client, ops, keyed, synced):
    r = sign_in(client, keyed["admin"])
    cookie = r.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert keyed["admin"] not in cookie
    page = client.get(f"/experiments/{synced.id}", headers=HTML)
    assert page.context["viewer"].is_admin and "Promote" in page.text
    r = client.post(f"/experiments/{synced.id}/stop", data={"csrf": page.context["csrf"]})
    assert r.context["exp"].status == "stopped"
    assert r.context["audit"][0][0].actor == f"key:{keyed['admin'][:12]}"
    r = client.post("/logout", data={"csrf": r.context["csrf"]}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/", headers=HTML, follow_redirects=False).status_code == 303


def test_serve_keys_see_read_only_pages(client, ops, keyed, synced):
    sign_in(client, keyed["serve"])
    path = f"/experiments/{synced.id}"
    page = client.get(path, headers=HTML)
    assert page.status_code == 200 and page.context["viewer"].role == "serve"
    assert "Stop experiment" not in page.text and "read-only" in page.text
    assert "Make production" not in client.get("/prompts/triage", headers=HTML).text
    r = client.post(f"{path}/stop", data={"csrf": page.context["csrf"]}, headers=HTML)
    assert r.status_code == 403 and "admin key" in r.text
    assert ops.experiments.get(synced.id).status == "running"


# -- helpers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, text",
    [
        pytest.param(0.971, "97.1%", id="plain"),
        pytest.param(0.995, "99.5%", id="threshold"),
        pytest.param(0.99532, "99.53%", id="near-one"),
        pytest.param(0.004, "0.4%", id="near-zero"),
        pytest.param(None, "—", id="none"),
    ],
)
def test_percentages(value, text):
    assert formats.fmt_pct(value) == text


def test_durations_and_times():
    assert formats.fmt_duration(3 * 86400 + 4 * 3600 + 60) == "3d 4h"
    assert formats.fmt_duration(5 * 3600 + 12 * 60) == "5h 12m"
    assert formats.fmt_time(1_800_000_000) == "2027-01-15 08:00:00Z"


def three_arms() -> ExperimentView:
    arm = ArmView(
        version=2,
        variant="b",
        decisions=1000,
        feedback=900,
        reward_sum=90.0,
        n=900,
        mean=0.1,
        sd=0.01,
        ci_low=None,
        ci_high=None,
        p_best=0.4,
        expected_loss=0.002,
        p_beats_control=0.971,
        weight=0.3,
        is_control=False,
        **NO_USAGE.as_dict(),
    )
    return ExperimentView(
        id=1,
        prompt="triage",
        status="running",
        winner=None,
        metric="reward",
        reward="binary",
        strategy="thompson",
        auto_promote=True,
        source="api",
        control_version=1,
        production_at_start=1,
        control_is_production=True,
        created_at=0.0,
        started_at=0.0,
        ended_at=None,
        end_reason=None,
        epoch=3,
        matured=2700,
        last_update_at=None,
        policy={
            "min_samples_per_arm": 500,
            "min_hours": 0,
            "alpha": 0.005,
            "loss_threshold": 0.01,
            "control_p_best": 0.99,
            "max_decisions": 100000,
            "max_checks": 40,
            "max_days": 30,
        },
        missing_feedback="zero",
        reason="collecting outcomes",
        srm_alarm=False,
        srm_p=None,
        value_remaining=None,
        checks_done=3,
        arms=(
            replace(arm, is_control=True, version=1, variant="a", p_beats_control=None),
            arm,
            replace(arm, version=3, variant="c", expected_loss=0.01),
        ),
    )


def test_stopping_rule_in_words_for_three_arms():
    exp = three_arms()
    text = pages.stopping_rule(exp, now=7200.0)
    assert text[0] == (
        "To promote a challenger it needs P(beats control) ≥ the boundary "
        "spending α = 0.005/2 over the checks (first check 99.99%); v2 b is at "
        "97.1%."
    )
    assert "0.2% now, limit 0.1%" in text[1]
    assert "(3,000 decisions, 0.1 days so far)" in text[-2]
    assert pages.stopping_rule(replace(exp, status="inconclusive", end_reason="limit"), 0.0) == [
        "Ended inconclusive: limit."
    ]


def test_the_density_chart_draws_each_arm_with_the_sd_of_the_snapshot():
    exp = three_arms()
    exp = replace(exp, arms=(replace(exp.arms[0], sd=0.02), *exp.arms[1:]))
    svg = str(charts.experiment_charts(exp, [], now=7200.0)["density"])
    fmt = formats.value_format("binary")
    assert f"v1 a: mean {fmt(0.1)}, sd {fmt(0.02)}" in svg
    assert f"v2 b: mean {fmt(0.1)}, sd {fmt(0.01)}" in svg


def test_charts_escape_labels_and_handle_empty_data():
    svg = charts.line_chart(
        "x",
        [charts.Series("<v1>", [(0, 0.1), (1, 0.5)])],
        title="t & t",
        x_fmt=str,
        x_title="hours",
        y_fmt=str,
    )
    ET.fromstring(str(svg))
    assert "&lt;v1&gt;" in svg and "t &amp; t" in svg
    assert "no data yet" in charts.line_chart("y", [], title="t", x_fmt=str, x_title="h", y_fmt=str)
    assert "no matured" in charts.density_chart("z", [("a", 0.1, 0.0)], title="t", x_fmt=str, x_title="m")
    assert charts.nice_ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert "&lt;b&gt;" in charts.legend(["<b>"])


def test_web_folder_is_found():
    root = dashboard.web_dir()
    assert (root / "templates" / "base.html").is_file()
    assert (root / "static" / "dashboard.css").is_file()


def test_pages_say_when_content_or_control_is_not_what_production_was(client, ops, prompts_dir):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(prompts_dir), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "ada@example.com")
    git("config", "user.name", "Ada")
    (prompts_dir / "triage.yaml").write_text(PROMPT, encoding="utf-8")
    git("add", "triage.yaml")
    git("commit", "-qm", "add")
    ops.sync()
    (prompts_dir / "triage.yaml").write_text(PROMPT.replace("Answer with", "Reply with"))
    ops.sync()  # main is now v3, uncommitted; the new experiment's control is v3
    (prompts_dir / "other.yaml").write_text(PROMPT.replace("name: triage", "name: other"))
    ops.sync()
    client.app.state.runtime.refresh(force=True)
    page = client.get("/prompts/triage", headers=HTML).text
    assert "uncommitted changes" in page and "untracked" not in page
    assert "untracked in git" in client.get("/prompts/other", headers=HTML).text
    exp = next(e for e in ops.experiments.list_experiments(prompt="triage") if e.status == "running")
    page = client.get(f"/experiments/{exp.id}", headers=HTML).text
    assert "production at the start was version 1" in page


def test_experiment_page_shows_the_adopt_command_after_a_variant_wins(client, ops, synced):
    r = client.get(f"/experiments/{synced.id}", headers=HTML)
    assert r.context["adopt"] is None and "promptops adopt" not in r.text
    ops.experiments.promote(synced.id, version=2, actor="test")
    r = client.get(f"/experiments/{synced.id}", headers=HTML)
    assert r.context["adopt"] == "promptops adopt triage", r.context["adopt"]
    assert "<code>promptops adopt triage</code>" in r.text
    ops.registry.move_label("triage", 1, "production", actor="test")  # rolled back by hand
    r = client.get(f"/experiments/{synced.id}", headers=HTML)
    assert r.context["adopt"] is None
