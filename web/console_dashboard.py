"""The console's dashboard: totals per status for the last hour and day, events per minute over the last hour as
a server-rendered SVG chart, the oldest Retrying event, the webhooks failing most, and queue depths."""

from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web
from markupsafe import Markup

from hookpost.admin.insights import Minute
from hookpost.common.records import Role
from hookpost.web.console import insights_of, need, render, url_with

# colours of the status labels (static/console.css keeps the same ones)
COLOURS = {"Finished": "#1a7f37", "New": "#0969da", "Retrying": "#9a6700", "Failed": "#cf222e"}
STACK = ("Finished", "New", "Retrying", "Failed")
DASHBOARD_MAX_AGE = 3.0  # seconds a computed dashboard is shown again (several viewers cost one computation)


@dataclass(frozen=True)
class Bar:
    """One rectangle of the chart."""

    x: float
    y: float
    width: float
    height: float
    colour: str


def chart_svg(minutes: list[Minute], width: int = 720, height: int = 200) -> Markup:
    """Return the per-minute chart as inline SVG: stacked bars by status, a y scale, a time axis in UTC, and a
    ``<title>`` per minute (shown on hover). Presentation attributes only (the CSP allows no inline styles)."""
    left, bottom, top = 36, 22, 8
    plot_w, plot_h = width - left - 4, height - bottom - top
    peak = max((m.total for m in minutes), default=0)
    scale_max = max(1, _nice(peak))
    slot = plot_w / max(1, len(minutes))
    parts: list[str] = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        value = round(scale_max * frac)
        parts.append(f'<line x1="{left}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de" '
                     f'stroke-width="1"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#57606a">{value}</text>')
    for i, minute in enumerate(minutes):
        x = left + i * slot
        y = top + plot_h
        tip = ", ".join(f"{s} {minute.by_status[s]}" for s in STACK if minute.by_status.get(s))
        title = f"{minute.start:%H:%M} UTC: {minute.total} events" + (f" ({tip})" if tip else "")
        rects = []
        for status in STACK:
            n = minute.by_status.get(status, 0)
            if not n:
                continue
            h = plot_h * n / scale_max
            y -= h
            rects.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, slot - 2):.1f}" height="{h:.1f}" '
                         f'fill="{COLOURS[status]}"/>')
        parts.append(f'<g><title>{Markup.escape(title)}</title>'
                     f'<rect x="{x:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" fill="transparent"/>'
                     + "".join(rects) + "</g>")
        last = i == len(minutes) - 1
        if i % 15 == 0 or last:
            anchor, tx = ("end", x + slot) if last else ("start", x) if i == 0 else ("middle", x + slot / 2)
            parts.append(f'<text x="{tx:.1f}" y="{height - 6}" text-anchor="{anchor}" font-size="11" '
                         f'fill="#57606a">{minute.start:%H:%M}</text>')
    total = sum(m.total for m in minutes)
    label = f"Webhook events per minute over the last hour: {total} in all, at most {peak} in one minute"
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{Markup.escape(label)}" '
                  f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>")


def _nice(n: int) -> int:
    """Round up to 1, 2 or 5 times a power of ten (a readable top of the scale)."""
    if n <= 0:
        return 1
    power = 1
    while True:
        for step in (1, 2, 5):
            if step * power >= n:
                return step * power
        power *= 10


async def dashboard_page(request: web.Request) -> web.Response:
    """The dashboard."""
    need(request, Role.VIEWER)
    dash = await insights_of(request).dashboard(max_age=DASHBOARD_MAX_AGE)
    # the same windows as the totals, as times the filter form can show (UTC: tz=0)
    starts = {"1h": dash.at - timedelta(hours=1), "24h": dash.at - timedelta(days=1)}
    links = {(window, s): url_with("/events", {"status": [s], "since": f"{start:%Y-%m-%dT%H:%M:%S}", "tz": 0})
             for window, start in starts.items() for s in COLOURS}
    return await render(request, "dashboard.html", {
        "dash": dash, "chart": chart_svg(dash.per_minute), "colours": COLOURS, "links": links,
        "stack": STACK, "total_hour": sum(dash.last_hour.values()), "total_day": sum(dash.last_day.values()),
        "per_minute_total": sum(m.total for m in dash.per_minute),
    })


def add_routes(app: web.Application) -> None:
    """Register the dashboard (the console's home page)."""
    app.router.add_get("/", dashboard_page)
