"""Server-rendered SVG charts for the ops dashboard: no JavaScript, no external asset, works offline.

Each function takes plain data and returns inline SVG markup (safe to put in a template). Every
text that reaches the SVG is escaped; every bar carries a <title>, the browser's own tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Colours (also used by the template's legends and badges).
RED = "#c62828"
GREEN = "#2e7d32"
BLUE = "#1565c0"
GREY = "#9e9e9e"
AMBER = "#ef8f00"
PURPLE = "#6a1b9a"
AXIS = "#616161"
GRID = "#e0e0e0"

FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """One named series of a chart, with its colour."""

    label: str
    values: Sequence[float]
    color: str


def nice_ticks(high: float, *, count: int = 4) -> list[float]:
    """0 and round steps (1, 2, 5 x 10^n, at least 1: the charts count leads) up to at least `high`."""
    if high <= 0:
        return [0, 1]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(1, next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))
    top = step * math.ceil(high / step)
    return [step * i for i in range(int(round(top / step)) + 1)]


def _fmt(value: float) -> str:
    value = float(value)
    if abs(value) >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _svg(width: int, height: int, label: str, body: list[str]) -> SafeString:
    # Inline SVG in HTML needs no xmlns; leaving it out keeps every URL out of the page.
    return mark_safe(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'role="img" aria-label="{escape(label)}" {FONT}><title>{escape(label)}</title>'
        + "".join(body)
        + "</svg>"
    )


def _y_axis(ticks: list[float], *, x0: float, x1: float, y_of, right: bool = False) -> list[str]:
    parts = []
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        tx, anchor = (x1 + 4, "start") if right else (x0 - 4, "end")
        parts.append(f'<text x="{tx}" y="{y + 4:.1f}" text-anchor="{anchor}" fill="{AXIS}">{_fmt(tick)}</text>')
    return parts


def _empty(width: int, height: int, label: str, message: str) -> SafeString:
    return _svg(width, height, label, [
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="{GRID}"/>',
        f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{AXIS}">{escape(message)}</text>',
    ])


def _legend(series: Sequence[Series], *, x: float, y: float, width: float) -> list[str]:
    """Legend entries in rows from (x, y), wrapping when they do not fit in `width`."""
    return _legend_rows(series, x=x, y=y, width=width)[0]


def _legend_rows(series: Sequence[Series], *, x: float, y: float, width: float) -> tuple[list[str], float]:
    """The legend's parts and the baseline of its last row."""
    parts, cx, cy = [], x, y
    for s in series:
        item = 18 + 6.5 * len(s.label) + 14
        if cx + item > x + width and cx > x:
            cx, cy = x, cy + 16
        parts.append(f'<rect x="{cx:.1f}" y="{cy - 9:.1f}" width="12" height="10" fill="{s.color}"/>')
        parts.append(f'<text x="{cx + 16:.1f}" y="{cy:.1f}" fill="#212121">{escape(s.label)}</text>')
        cx += item
    return parts, cy


def daily_trend_chart(days: Sequence[dict], *, width: int = 760, height: int = 290) -> SafeString:
    """The red backlog at each day's end (line, top panel) over the leads entering (bars up) and
    leaving it (bars down) that day (bottom panel). `days`: rows of the daily metrics view."""
    label = "Red KPI backlog per day, with leads in and out"
    if not days:
        return _empty(width, height, label, "No leads yet")
    left, right, top = 52, 12, 24
    split = top + (height - top - 30) * 0.5   # the two panels share the x axis
    gap = 28
    n = len(days)
    slot = (width - left - right) / n

    def x_mid(i: int) -> float:
        return left + slot * (i + 0.5)

    body = _legend([Series("Backlog (day end)", [], BLUE), Series("In", [], RED), Series("Out (drained)", [], GREEN)],
                   x=left, y=14, width=width - left)
    # Top panel: backlog line.
    backlog = [d["backlog_end"] for d in days]
    ticks = nice_ticks(max(backlog), count=3)
    low_b, high_b = top + 6, split - gap / 2

    def y_backlog(v: float) -> float:
        return high_b - (high_b - low_b) * v / ticks[-1]

    body += _y_axis(ticks, x0=left, x1=width - right, y_of=y_backlog)
    points = " ".join(f"{x_mid(i):.1f},{y_backlog(v):.1f}" for i, v in enumerate(backlog))
    body.append(f'<polyline class="series-backlog" points="{points}" fill="none" stroke="{BLUE}" stroke-width="2"/>')
    for i, d in enumerate(days):
        body.append(
            f'<circle cx="{x_mid(i):.1f}" cy="{y_backlog(d["backlog_end"]):.1f}" r="2.5" fill="{BLUE}">'
            f'<title>{escape(_day(d["metric_date"]))}: backlog {d["backlog_end"]:,}</title></circle>')
    # Bottom panel: in above, out below a zero line.
    flow_top, flow_bottom = split + gap / 2, height - 30
    peak = max(max(d["new_backlog_in"] for d in days), max(d["matched_out"] for d in days), 1)
    flow_ticks = nice_ticks(peak, count=2)
    zero = (flow_top + flow_bottom) / 2
    half = (flow_bottom - flow_top) / 2

    def y_flow(v: float) -> float:
        return zero - half * v / flow_ticks[-1]

    for tick in flow_ticks[1:]:
        for sign in (1, -1):
            y = y_flow(sign * tick)
            body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
            body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}">'
                        f'{"" if sign > 0 else "-"}{_fmt(tick)}</text>')
    bar = max(slot * 0.7, 1)
    for i, d in enumerate(days):
        x = x_mid(i) - bar / 2
        day = escape(_day(d["metric_date"]))
        h_in, h_out = zero - y_flow(d["new_backlog_in"]), zero - y_flow(d["matched_out"])
        body.append(f'<rect class="bar-in" x="{x:.1f}" y="{zero - h_in:.1f}" width="{bar:.1f}" height="{h_in:.1f}" '
                    f'fill="{RED}"><title>{day}: {d["new_backlog_in"]:,} in</title></rect>')
        body.append(f'<rect class="bar-out" x="{x:.1f}" y="{zero:.1f}" width="{bar:.1f}" height="{h_out:.1f}" '
                    f'fill="{GREEN}"><title>{day}: {d["matched_out"]:,} out</title></rect>')
    body.append(f'<line x1="{left}" x2="{width - right}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="{AXIS}"/>')
    # x labels: about six dates.
    every = max(1, math.ceil(n / 6))
    for i in range(0, n, every):
        body.append(f'<text x="{x_mid(i):.1f}" y="{height - 10}" text-anchor="middle" fill="{AXIS}">'
                    f'{escape(_day(days[i]["metric_date"], short=True))}</text>')
    return _svg(width, height, label, body)


def stacked_bar_chart(categories: Sequence[str], series: Sequence[Series], *, label: str, width: int = 600,
                      height: int = 270) -> SafeString:
    """Vertical bars per category, each stacked from the series' values (in series order, bottom up)."""
    totals = [sum(s.values[i] for s in series) for i in range(len(categories))]
    if not categories or not any(totals):
        return _empty(width, height, label, "No leads yet")
    left, right, bottom = 44, 8, 30
    body, legend_y = _legend_rows(series, x=left, y=14, width=width - left - right)
    top = legend_y + 16
    ticks = nice_ticks(max(totals))
    plot_h = height - top - bottom

    def y_of(v: float) -> float:
        return top + plot_h - plot_h * v / ticks[-1]

    body += _y_axis(ticks, x0=left, x1=width - right, y_of=y_of)
    slot = (width - left - right) / len(categories)
    bar = slot * 0.7
    for i, category in enumerate(categories):
        x, base = left + slot * i + (slot - bar) / 2, 0.0
        for s in series:
            value = s.values[i]
            if value:
                y0, y1 = y_of(base), y_of(base + value)
                body.append(f'<rect class="bar" x="{x:.1f}" y="{y1:.1f}" width="{bar:.1f}" height="{y0 - y1:.1f}" '
                            f'fill="{s.color}"><title>{escape(category)}: {escape(s.label)} {value:,}</title></rect>')
            base += value
    every = max(1, math.ceil(len(categories) / 8))
    for i in range(0, len(categories), every):
        body.append(f'<text x="{left + slot * (i + 0.5):.1f}" y="{height - 10}" text-anchor="middle" '
                    f'fill="{AXIS}">{escape(categories[i])}</text>')
    return _svg(width, height, label, body)


def horizontal_bar_chart(items: Sequence[tuple[str, float]], *, label: str, color: str = RED, width: int = 400,
                         row: int = 26, empty: str = "Nothing to show") -> SafeString:
    """One horizontal bar per (name, value), in the given order, with the value at its end."""
    if not items:
        return _empty(width, 2 * row + 20, label, empty)
    left = min(12 + 7 * max(len(name) for name, _ in items), width // 2)
    right, top = 56, 8
    height = top + row * len(items) + 8
    high = max(value for _, value in items) or 1
    span = width - left - right
    body = []
    for i, (name, value) in enumerate(items):
        y = top + row * i
        w = span * value / high
        body.append(f'<text x="{left - 6}" y="{y + row / 2 + 4:.1f}" text-anchor="end" fill="#212121">'
                    f'{escape(name)}</text>')
        body.append(f'<rect class="bar" x="{left}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row - 8}" '
                    f'fill="{color}"><title>{escape(name)}: {value:,}</title></rect>')
        body.append(f'<text x="{left + w + 4:.1f}" y="{y + row / 2 + 4:.1f}" fill="{AXIS}">{_fmt(value)}</text>')
    return _svg(width, height, label, body)


def _pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f} %"


def _estimate_panel(months: Sequence[dict], keys: tuple[str, str, str], *, name: str, color: str, x_of,
                    y_of, x0: float, x1: float, ticks: Sequence[float]) -> list[str]:
    """One panel of quality_chart: for each month with an estimate an error bar (its 95 % interval) and
    a point; a band over the interval and a line through the points of consecutive months."""
    value, low, high = keys
    body = []
    for tick in ticks:
        y = y_of(tick)
        body.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}">{_pct(tick, 0)}</text>')
    segments, current = [], []  # consecutive months with an estimate
    for i, m in enumerate(months):
        if m[value] is None:
            segments, current = segments + [current], []
        else:
            current.append(i)
    for segment in (s for s in [*segments, current] if len(s) > 1):
        upper = [f"{x_of(i):.1f},{y_of(months[i][high]):.1f}" for i in segment]
        lower = [f"{x_of(i):.1f},{y_of(months[i][low]):.1f}" for i in reversed(segment)]
        body.append(f'<polygon class="band-{name}" points="{" ".join(upper + lower)}" fill="{color}" '
                    f'fill-opacity="0.15" stroke="none"/>')
        points = " ".join(f"{x_of(i):.1f},{y_of(months[i][value]):.1f}" for i in segment)
        body.append(f'<polyline class="series-{name}" points="{points}" fill="none" stroke="{color}" '
                    'stroke-width="2"/>')
    for i, m in enumerate(months):
        if m[value] is None:
            continue
        x, y_low, y_high = x_of(i), y_of(m[low]), y_of(m[high])
        body.append(f'<line class="interval-{name}" x1="{x:.1f}" x2="{x:.1f}" y1="{y_low:.1f}" y2="{y_high:.1f}" '
                    f'stroke="{color}" stroke-width="1.5"/>')
        for y in (y_low, y_high):
            body.append(f'<line x1="{x - 4:.1f}" x2="{x + 4:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}"/>')
        body.append(f'<circle class="point-{name}" cx="{x:.1f}" cy="{y_of(m[value]):.1f}" r="3" fill="{color}">'
                    f'<title>{escape(m["month"])}: {_pct(m[value], 2)} (95 % interval {_pct(m[low], 2)} to '
                    f'{_pct(m[high], 2)})</title></circle>')
    return body


def quality_chart(months: Sequence[dict], *, target: float, width: int = 760, height: int = 300) -> SafeString:
    """Per month (recovery.dashboard.audit_quality's `months`): the estimated precision of the automatic
    links with its 95 % interval and the target as a dashed line (top panel), and the estimated share of
    true matches left below the threshold, the missed links, with its interval (bottom panel; recall is
    1 - that share). The precision axis starts near the lowest bound, so an interval around 99 % shows."""
    label = "Estimated precision and missed-link share per month, with 95 % intervals"
    if not months:
        return _empty(width, height, label, "No audited links yet")
    left, right, top = 56, 12, 24
    split = top + (height - top - 30) * 0.55
    gap = 30
    n = len(months)
    slot = (width - left - right) / n

    def x_of(i: int) -> float:
        return left + slot * (i + 0.5)

    body = _legend([Series("Precision (95 % interval)", [], BLUE), Series("Target", [], RED),
                    Series("Missed-link share (95 % interval)", [], AMBER)], x=left, y=14, width=width - left)
    # Top panel: precision from a round floor under every lower bound and the target, up to 100 %.
    lows = [m["precision_low"] for m in months if m["precision_low"] is not None] + [target]
    step = 0.01 if min(lows) >= 0.95 else 0.05 if min(lows) >= 0.5 else 0.25
    floor = max(0.0, math.floor(min(lows) / step - 1e-9) * step)
    p_ticks = [round(floor + step * i, 4) for i in range(int(round((1 - floor) / step)) + 1)]
    p_top, p_bottom = top + 6, split - gap / 2

    def y_precision(v: float) -> float:
        return p_bottom - (p_bottom - p_top) * (v - floor) / (1 - floor)

    body += _estimate_panel(months, ("precision", "precision_low", "precision_high"), name="precision", color=BLUE,
                            x_of=x_of, y_of=y_precision, x0=left, x1=width - right, ticks=p_ticks)
    body.append(f'<text x="{left + 4}" y="{p_top + 10:.1f}" fill="{BLUE}" font-weight="600">Precision</text>')
    y_target = y_precision(target)
    body.append(f'<line class="target" x1="{left}" x2="{width - right}" y1="{y_target:.1f}" y2="{y_target:.1f}" '
                f'stroke="{RED}" stroke-width="1.5" stroke-dasharray="6 4"><title>Target: precision '
                f'{_pct(target, 2)} (CT4_AUDIT precision_target)</title></line>')
    # Bottom panel: missed-link share from 0 up to a round step over the highest upper bound.
    highs = [m["missed_high"] for m in months if m["missed_high"] is not None] or [0.0]
    m_step = 0.05 if max(highs) <= 0.2 else 0.25
    m_top_value = max(m_step, math.ceil(max(highs) / m_step - 1e-9) * m_step)
    m_ticks = [round(m_step * i, 4) for i in range(int(round(m_top_value / m_step)) + 1)]
    m_top, m_bottom = split + gap / 2, height - 30

    def y_missed(v: float) -> float:
        return m_bottom - (m_bottom - m_top) * v / m_top_value

    body += _estimate_panel(months, ("missed_share", "missed_low", "missed_high"), name="missed", color=AMBER,
                            x_of=x_of, y_of=y_missed, x0=left, x1=width - right, ticks=m_ticks)
    body.append(f'<text x="{left + 4}" y="{m_top + 10:.1f}" fill="{AMBER}" font-weight="600">'
                'Missed-link share (recall = 1 - share)</text>')
    every = max(1, math.ceil(n / 8))
    for i in range(0, n, every):
        body.append(f'<text x="{x_of(i):.1f}" y="{height - 10}" text-anchor="middle" fill="{AXIS}">'
                    f'{escape(months[i]["month"])}</text>')
    return _svg(width, height, label, body)


def _day(value, *, short: bool = False) -> str:
    if isinstance(value, date):
        return value.strftime("%d %b") if short else value.isoformat()
    return str(value)


# --- The ops dashboard's charts ---------------------------------------------------------

FUNNEL_COLORS = {
    "limbo_no_identity": RED,
    "limbo_no_driver": PURPLE,
    "limbo_no_trips_14d": AMBER,
    "limbo_trips_no_claim": BLUE,
    "limbo_ok": GREEN,
}


def dashboard_charts(data: dict) -> dict[str, SafeString]:
    """The dashboard's charts from recovery.dashboard.dashboard_read()'s data."""
    funnel = data["funnel"]
    queue_reasons = data["fail_reasons"]["queue"]
    return {
        "trend": daily_trend_chart(data["trend"]),
        "funnel": stacked_bar_chart(
            [_day(week["week_start"], short=True) for week in funnel],
            [Series(label, [week[column] for week in funnel], FUNNEL_COLORS[column])
             for column, label in data["funnel_stages"]],
            label="Leads per week by limbo stage",
        ),
        "fail_reasons": horizontal_bar_chart(
            list(queue_reasons.items()), label="Failed red-KPI queue rows by reason",
            empty="No failed queue rows",
        ),
        "quality": quality_chart(data["quality"]["months"], target=data["quality"]["target"]),
    }
