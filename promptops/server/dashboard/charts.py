"""Server-drawn SVG charts for the dashboard, and the experiment page's four charts.

Why SVG drawn here rather than a vendored JavaScript chart library: the pages stay readable with
JavaScript off, nothing has to be vendored, licensed or updated, the strict Content-Security-Policy
needs no exception, and the charts show in the same response as the numbers they explain. Colours
are passed as SVG presentation attributes (not `style=`), which that policy allows.

The time charts (P(best), weights) mark the moments of the guarded rollout: when the holdout
started, with its split, and when production rolled back (or the holdout ended).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from html import escape
from typing import Any

from markupsafe import Markup

from promptops.domain import ExperimentStatus
from promptops.server.dashboard.formats import arm_label, fmt_share, value_format
from promptops.services.views import EpochView, ExperimentView

# The Okabe-Ito palette: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999", "#000000")
WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 14, 42

Format = Callable[[float], str]


def color(i: int) -> str:
    """The colour of the i-th series."""
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class Marker:
    """A moment on a time chart: a dashed vertical line with a short label."""

    x: float
    label: str
    kind: str = "holdout"  # holdout (its start or end) or rollback: the line's colour


MARKER_COLORS = {"holdout": "#44515d", "rollback": "#b3261e"}


@dataclass(frozen=True)
class Series:
    """One line of a chart: a label and its (x, y) points."""

    label: str
    points: Sequence[tuple[float, float]]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def nice_ceiling(value: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times 10^k) >= value."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(value))
    return next(m * mag for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * mag >= value)


def hours_format(span_hours: float) -> tuple[Format, str]:
    """A tick format for elapsed hours, and the axis title that goes with it."""
    if span_hours > 72:
        return (lambda h: f"{h / 24:g}"), "days since start"
    return (lambda h: f"{h:g}"), "hours since start"


class _Frame:
    """Maps data coordinates to the plot area and draws axes and grid lines."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float]) -> None:
        self.x0, self.x1 = x if x[1] > x[0] else (x[0], x[0] + 1)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0], y[0] + 1)

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    def axes(
        self, x_ticks: list[float], y_ticks: list[float], x_fmt: Format, y_fmt: Format, x_title: str
    ) -> list[str]:
        out = []
        for t in y_ticks:
            y = self.py(t)
            out.append(
                f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
                'stroke="#e3e6ea" stroke-width="1"/>'
            )
            out.append(
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                f'font-size="11" fill="#555">{escape(y_fmt(t))}</text>'
            )
        base = HEIGHT - BOTTOM
        out.append(
            f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#888" stroke-width="1"/>'
        )
        for t in x_ticks:
            x = self.px(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" '
                'stroke="#888" stroke-width="1"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{base + 17}" text-anchor="middle" '
                f'font-size="11" fill="#555">{escape(x_fmt(t))}</text>'
            )
        out.append(
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 6}" '
            f'text-anchor="middle" font-size="11" fill="#555">{escape(x_title)}</text>'
        )
        return out


def _markers(frame: _Frame, markers: Sequence[Marker]) -> list[str]:
    """Each marker's line across the plot and its label at the top, on the side with room."""
    out = []
    for i, m in enumerate(markers):
        x = frame.px(min(max(m.x, frame.x0), frame.x1))
        stroke = MARKER_COLORS.get(m.kind, MARKER_COLORS["holdout"])
        left = x > (LEFT + WIDTH - RIGHT) / 2
        out.append(
            f'<g class="marker {escape(m.kind)}"><line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" '
            f'y2="{HEIGHT - BOTTOM}" stroke="{stroke}" stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{x - 4 if left else x + 4:.1f}" y="{TOP + 11 + 13 * i}" '
            f'text-anchor="{"end" if left else "start"}" font-size="11" fill="{stroke}">'
            f"{escape(m.label)}</text></g>"
        )
    return out


def _marked(desc: str, markers: Sequence[Marker]) -> str:
    return "; ".join([desc, *(m.label for m in markers)]) if markers else desc


def _svg(chart_id: str, title: str, desc: str, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")


def line_chart(
    chart_id: str,
    series: Sequence[Series],
    *,
    title: str,
    x_fmt: Format,
    x_title: str,
    y_fmt: Format,
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    markers: Sequence[Marker] = (),
) -> Markup:
    """Lines with point markers of several series on one plot (and `markers` across it)."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return _svg(chart_id, title, "no data yet", [])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    y_range = y_range or (0.0, nice_ceiling(max(ys)))
    frame = _Frame(x_range or (min(xs), max(xs)), y_range)
    body = frame.axes(nice_ticks(frame.x0, frame.x1, 6), nice_ticks(*y_range, 4), x_fmt, y_fmt, x_title)
    for i, s in enumerate(series):
        path = " ".join(
            f"{'L' if j else 'M'}{frame.px(x):.1f},{frame.py(y):.1f}" for j, (x, y) in enumerate(s.points)
        )
        body.append(
            f'<path d="{path}" fill="none" stroke="{color(i)}" stroke-width="2" stroke-linejoin="round"/>'
        )
        body.extend(
            f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.5" fill="{color(i)}"/>'
            for x, y in s.points
        )
    body.extend(_markers(frame, markers))
    desc = "; ".join(f"{s.label}: last {y_fmt(s.points[-1][1])}" for s in series if s.points)
    return _svg(chart_id, title, _marked(desc, markers), body)


def stacked_steps(
    chart_id: str,
    labels: Sequence[str],
    starts: Sequence[float],
    shares: Sequence[Sequence[float]],
    *,
    end: float,
    title: str,
    x_fmt: Format,
    x_title: str,
    y_fmt: Format,
    markers: Sequence[Marker] = (),
) -> Markup:
    """Shares that sum to one, held from each start until the next (allocation weights per epoch).

    Stacked rather than overlaid, so equal weights (the burn-in, or two arms under top-two
    sampling) do not hide one line behind another.
    """
    if not starts:
        return _svg(chart_id, title, "no data yet", [])
    frame = _Frame((starts[0], max(end, starts[-1])), (0.0, 1.0))
    body = frame.axes(nice_ticks(frame.x0, frame.x1, 6), nice_ticks(0.0, 1.0, 4), x_fmt, y_fmt, x_title)
    ends = [*starts[1:], max(end, starts[-1])]
    for i in range(len(labels)):
        top: list[tuple[float, float]] = []
        bottom: list[tuple[float, float]] = []
        for t0, t1, row in zip(starts, ends, shares, strict=True):
            lo = sum(row[:i])
            hi = lo + (row[i] if i < len(row) else 0.0)
            top += [(t0, hi), (t1, hi)]
            bottom += [(t0, lo), (t1, lo)]
        d = " ".join(
            f"{'L' if j else 'M'}{frame.px(x):.1f},{frame.py(y):.1f}"
            for j, (x, y) in enumerate(top + bottom[::-1])
        )
        body.append(
            f'<path d="{d} Z" fill="{color(i)}" fill-opacity="0.8" stroke="#fff" stroke-width="0.5"/>'
        )
    body.extend(_markers(frame, markers))
    desc = "; ".join(
        f"{label}: {y_fmt(shares[-1][i] if i < len(shares[-1]) else 0.0)}" for i, label in enumerate(labels)
    )
    return _svg(chart_id, title, _marked(f"latest weights: {desc}", markers), body)


def normal_pdf(x: float, mean: float, sd: float) -> float:
    """The Gaussian density at x."""
    z = (x - mean) / sd
    return math.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))


def density_chart(
    chart_id: str,
    arms: Sequence[tuple[str, float, float]],
    *,
    title: str,
    x_fmt: Format,
    x_title: str,
    bounds: tuple[float, float] = (0.0, 1.0),
    samples: int = 160,
) -> Markup:
    """Gaussian posterior densities, one per (label, mean, sd), on a shared axis."""
    arms = [a for a in arms if a[2] > 0 and math.isfinite(a[1]) and math.isfinite(a[2])]
    if not arms:
        return _svg(chart_id, title, "no matured outcomes yet", [])
    lo = max(bounds[0], min(m - 4 * sd for _, m, sd in arms))
    hi = min(bounds[1], max(m + 4 * sd for _, m, sd in arms))
    if hi <= lo:
        lo, hi = bounds
    xs = [lo + (hi - lo) * k / (samples - 1) for k in range(samples)]
    curves = [[normal_pdf(x, m, sd) for x in xs] for _, m, sd in arms]
    top = max(max(c) for c in curves) * 1.08
    frame = _Frame((lo, hi), (0.0, top))
    body = frame.axes(nice_ticks(lo, hi, 6), [], x_fmt, x_fmt, x_title)
    base = frame.py(0)
    for i, ((_, mean, _), ys) in enumerate(zip(arms, curves, strict=True)):
        line = " ".join(
            f"{'L' if k else 'M'}{frame.px(x):.1f},{frame.py(y):.1f}"
            for k, (x, y) in enumerate(zip(xs, ys, strict=True))
        )
        area = f"{line} L{frame.px(xs[-1]):.1f},{base:.1f} L{frame.px(xs[0]):.1f},{base:.1f} Z"
        body.append(f'<path d="{area}" fill="{color(i)}" fill-opacity="0.15" stroke="none"/>')
        body.append(f'<path d="{line}" fill="none" stroke="{color(i)}" stroke-width="2"/>')
        mx = frame.px(mean)
        body.append(
            f'<line x1="{mx:.1f}" y1="{base:.1f}" x2="{mx:.1f}" '
            f'y2="{frame.py(normal_pdf(mean, mean, arms[i][2])):.1f}" '
            f'stroke="{color(i)}" stroke-dasharray="3 3" stroke-width="1"/>'
        )
    desc = "; ".join(f"{label}: mean {x_fmt(m)}, sd {x_fmt(sd)}" for label, m, sd in arms)
    return _svg(chart_id, title, desc, body)


def legend(labels: Sequence[str]) -> Markup:
    """An HTML legend whose swatches match the series colours."""
    items = "".join(
        f'<li><svg width="14" height="14" aria-hidden="true"><rect width="14" height="14" '
        f'rx="3" fill="{color(i)}"/></svg> {escape(label)}</li>'
        for i, label in enumerate(labels)
    )
    return Markup(f'<ul class="legend">{items}</ul>')


def experiment_charts(exp: ExperimentView, history: list[EpochView], now: float) -> dict[str, Any]:
    """The four charts of an experiment page, as inline SVG."""
    labels = [arm_label(a) for a in exp.arms]
    fmt = value_format(exp.reward)
    dens = [
        (labels[i], a.mean, a.sd) for i, a in enumerate(exp.arms) if a.mean is not None and a.sd is not None
    ]
    start = exp.started_at or (history[0].started_at if history else now)
    end = exp.ended_at or now
    x_fmt, x_title = hours_format((end - start) / 3600)
    unit = 3600 * (24 if x_title.startswith("days") else 1)
    x_end = (end - start) / unit

    def x(t: float) -> float:
        return (t - start) / unit

    p_best = []
    cumulative = []
    for i, (label, arm) in enumerate(zip(labels, exp.arms, strict=True)):
        pts = [
            (x(e.started_at), p)
            for e in history
            if e.p_best and i < len(e.p_best) and (p := e.p_best[i]) is not None
        ]
        if arm.p_best is not None:
            pts.append((x_end, arm.p_best))
        p_best.append(Series(label, pts))
        total, steps = 0.0, []
        for e in history:
            steps.append((x(e.started_at), total))
            total += e.assigned[i] if i < len(e.assigned) else 0
        steps.append((x_end, float(arm.decisions)))
        cumulative.append(Series(label, steps))
    epochs = [e for e in history if len(e.weights or []) == len(labels)]
    markers = [replace(m, x=x(m.x)) for m in rollout_markers(exp, history)]
    return {
        "labels": labels,
        "density": density_chart(
            "density",
            dens,
            title="Posterior of each arm's mean",
            x_fmt=lambda v: fmt(v),
            x_title=f"mean {exp.metric}",
        ),
        "p_best": line_chart(
            "pbest",
            p_best,
            title="P(best) over time",
            x_fmt=x_fmt,
            x_title=x_title,
            y_fmt=fmt_share,
            y_range=(0.0, 1.0),
            x_range=(0.0, x_end),
            markers=markers,
        ),
        "weights": stacked_steps(
            "weights",
            labels,
            [x(e.started_at) for e in epochs],
            [e.weights for e in epochs],
            end=x_end,
            title="Allocation weight per epoch",
            x_fmt=x_fmt,
            x_title=x_title,
            y_fmt=fmt_share,
            markers=markers,
        ),
        "cumulative": line_chart(
            "cumulative",
            cumulative,
            title="Cumulative decisions",
            x_fmt=x_fmt,
            x_title=x_title,
            y_fmt=lambda v: f"{v:,.0f}",
            x_range=(0.0, x_end),
        ),
    }


def rollout_markers(exp: ExperimentView, history: list[EpochView]) -> list[Marker]:
    """The guarded rollout's moments, at their times: the holdout's start with its split, and a
    rollback (or the end of the holdout)."""
    hold = exp.holdout
    if not hold or hold.get("started_at") is None:
        return []
    new, old = hold["new_version"], hold["old_version"]
    index = {a.version: i for i, a in enumerate(exp.arms)}
    split = next((e.weights for e in history if e.holdout and e.weights), None)
    if (
        split is not None
        and index.get(new, len(split)) < len(split)
        and index.get(old, len(split)) < len(split)
    ):
        shares = f"v{new} {fmt_share(split[index[new]])} / v{old} {fmt_share(split[index[old]])}"
    else:
        shares = f"v{new} and v{old}"
    out = [Marker(float(hold["started_at"]), f"holdout: {shares}")]
    if exp.ended_at is not None and exp.status == ExperimentStatus.ROLLED_BACK:
        out.append(Marker(exp.ended_at, f"rolled back to v{old}", "rollback"))
    elif exp.ended_at is not None:
        out.append(Marker(exp.ended_at, f"holdout over: v{new} stays"))
    return out
