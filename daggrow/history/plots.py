"""Line charts as inline SVG text, drawn in Python: axes, ticks, labels, legend, a step cursor.

>>> svg = svg_plot({"train": [(10, 1.0), (20, 0.5)]}, title="loss", xlabel="parameters", ylabel="loss")
>>> svg.startswith('<svg class="plot"') and "train" in svg
True
"""

from __future__ import annotations

import html
import math

COLORS = {"train": "#1c7ed6", "val": "#e8590c"}
OTHER_COLORS = ("#2b8a3e", "#7048e8", "#c2255c", "#495057")
MARGIN = {"left": 62, "right": 14, "top": 30, "bottom": 44}
PLOT_CSS = """
.plot{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;background:#fff}
.plot .frame{fill:none;stroke:#adb5bd}.plot .grid{stroke:#e9ecef}.plot .cursor{stroke:#868e96;stroke-dasharray:4 3}
.plot .tick{font-size:10px;fill:#495057}.plot .label{font-size:11px;fill:#212529}
.plot .title{font-size:13px;font-weight:600}.plot .legend{font-size:11px}.plot .empty{fill:#868e96;font-size:12px}
.plot .legend-box{fill:#fff;fill-opacity:.85;stroke:#dee2e6}
"""


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values inside ``[lo, hi]``: the step of 1, 2, 2.5 or 5 × 10^k nearest ``(hi − lo)/n``.

    >>> nice_ticks(0, 1)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(13, 161)
    [25.0, 50.0, 75.0, 100.0, 125.0, 150.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(math.log(s / raw)))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    decimals = 3 - math.floor(math.log10(step))  # k·step without float noise such as 0.30000000000000004
    return [round(k * step, decimals) + 0.0 for k in range(first, last + 1)]


def format_number(x: float, digits: int = 4) -> str:
    """Short tick text: ``15000`` → ``"15k"``, ``2e6`` → ``"2M"``, ``0.25`` → ``"0.25"``, ``2e-5`` → ``"2e-05"``."""
    if x == 0:
        return "0"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.{digits - 1}g}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.{digits - 1}g}k"
    if abs(x) < 1e-3:
        return f"{x:.{digits - 2}g}"
    return f"{x:.{digits}g}"


def tick_labels(ticks: list[float]) -> list[str]:
    """:func:`format_number` of each tick, with as many digits as it takes to tell them apart.

    >>> tick_labels([5.0, 5.00002, 5.00004])
    ['5', '5.00002', '5.00004']
    """
    for digits in range(4, 16):
        labels = [format_number(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def svg_plot(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
             width: int = 440, height: int = 280, legend: str = "top",
             cursor: list[float] | None = None, standalone: bool = True) -> str:
    """A line chart with markers, frame, grid, ticks, axis labels and a legend, as inline SVG.

    ``series`` maps a name to its ``(x, y)`` points (non-finite points are left out);
    ``legend`` is ``"top"`` or ``"bottom"`` (right corner). ``cursor`` lists x values (one per
    step of the report's step viewer): a dashed vertical line is drawn at the first, and the
    pixel position of each is kept in ``data-cursor`` for the page's script to move it.
    ``standalone=True`` gives a file of its own (SVG namespace and :data:`PLOT_CSS` inside);
    ``False`` a fragment for an HTML page that carries ``PLOT_CSS`` itself.
    """
    finite = {name: [(float(a), float(b)) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
              for name, pts in series.items()}
    points = [p for pts in finite.values() for p in pts]
    w, h = width, height
    left, right, top, bottom = MARGIN["left"], MARGIN["right"], MARGIN["top"], MARGIN["bottom"]
    pw, ph = w - left - right, h - top - bottom
    label = html.escape(title)
    head = f'<svg class="plot" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{label}"'
    if standalone:
        head += ' xmlns="http://www.w3.org/2000/svg"'
    out = [f"<style>{PLOT_CSS}</style>" if standalone else "",
           f'<text x="{w / 2}" y="18" text-anchor="middle" class="title">{label}</text>']
    if not points:
        out.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle" class="empty">no data</text>')
        return head + ">" + "".join(out) + "</svg>"

    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x0, x1 = x0 - max(abs(x0) * 0.1, 1.0), x1 + max(abs(x1) * 0.1, 1.0)
    if y1 == y0:
        y0, y1 = y0 - max(abs(y0) * 0.1, 1e-9), y1 + max(abs(y1) * 0.1, 1e-9)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    xticks, yticks = nice_ticks(x0, x1), nice_ticks(y0, y1)
    for t, text in zip(xticks, tick_labels(xticks)):
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">'
                   f'{text}</text>')
    for t, text in zip(yticks, tick_labels(yticks)):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{py(t) + 3:.1f}" text-anchor="end" class="tick">'
                   f'{text}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 6}" text-anchor="middle" class="label">{html.escape(xlabel)}</text>'
               f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle" class="label">'
               f'{html.escape(ylabel)}</text>')
    if cursor:
        xs = [min(max(px(v), left), left + pw) if math.isfinite(v) else left for v in cursor]
        head += f' data-cursor="{" ".join(f"{x:.1f}" for x in xs)}"'
        out.append(f'<line class="cursor" x1="{xs[-1]:.1f}" x2="{xs[-1]:.1f}" y1="{top}" y2="{top + ph}"/>')
    colors = {}
    for i, (name, pts) in enumerate(finite.items()):
        color = colors[name] = COLORS.get(name, OTHER_COLORS[i % len(OTHER_COLORS)])
        if pts:
            path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
            out.extend(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.6" fill="{color}"/>' for a, b in pts)
    out.append(_legend(colors, left + pw, top, ph, legend))
    return head + ">" + "".join(out) + "</svg>"


def _legend(colors: dict[str, str], right_edge: float, top: int, ph: int, where: str) -> str:
    longest = max((len(name) for name in colors), default=0)
    box_w, box_h = 30 + 6.5 * longest, 8 + 15 * len(colors)
    bx = right_edge - box_w - 6
    by = top + 6 if where == "top" else top + ph - box_h - 6
    out = [f'<rect x="{bx:.1f}" y="{by:.1f}" width="{box_w:.1f}" height="{box_h}" class="legend-box"/>']
    for i, (name, color) in enumerate(colors.items()):
        ly = by + 11 + 15 * i
        out.append(f'<line x1="{bx + 6:.1f}" x2="{bx + 22:.1f}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2.5"/>'
                   f'<text x="{bx + 26:.1f}" y="{ly + 4}" class="legend">{html.escape(name)}</text>')
    return "".join(out)
