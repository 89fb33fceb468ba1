"""A self-contained HTML report of a run: no external resources, inline SVG and a little JS.

The page shows a summary, the architecture after each growth step (step through them with a
slider or the arrow keys), the event table, and plots of loss and accuracy against the number
of parameters and against wall time. When its script has run, ``<body data-ready="1">``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from .events import GrowthEvent
from .history import History, step_file

COLORS = {"train": "#1c7ed6", "val": "#e8590c"}


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(x: float) -> str:
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.1e}"
    return f"{x:,.4g}"


def svg_plot(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
             width: int = 440, height: int = 280, legend: str = "top") -> str:
    """A line chart with markers, axes, ticks and a legend (``legend="top"`` or ``"bottom"``), as inline SVG."""
    points = [p for s in series.values() for p in s if all(map(math.isfinite, p))]
    left, right, top, bottom = 62, 14, 30, 44
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{width / 2}" y="18" text-anchor="middle" class="title">{html.escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - abs(y0) * 0.1 - 1e-9, y1 + abs(y1) * 0.1 + 1e-9
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def X(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{X(t):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{Y(t) + 3:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="label">{html.escape(xlabel)}</text>'
               f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle" class="label">'
               f'{html.escape(ylabel)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        pts = [p for p in pts if all(map(math.isfinite, p))]
        color = COLORS.get(name, "#2b8a3e")
        if pts:
            path = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
            out.extend(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="2.6" fill="{color}"/>' for a, b in pts)
        lx = left + pw - 70
        ly = top + 12 + 15 * i if legend == "top" else top + ph - 12 - 15 * (len(series) - 1 - i)
        out.append(f'<line x1="{lx}" x2="{lx + 16}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2.5"/>'
                   f'<text x="{lx + 20}" y="{ly + 4}" class="legend">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _series(events: list[GrowthEvent], x: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for split in ("train", "val"):
        pts = [(float(e.params_after if x == "params" else e.wall_time), float(getattr(e, f"{split}_{metric}")))
               for e in events if getattr(e, f"{split}_{metric}") is not None]
        if pts:
            out[split] = pts
    return out


def _step_panel(folder: Path, event: GrowthEvent, index: int) -> str:
    svg_file = folder / f"{step_file(event, index)}.svg"
    dot_file = folder / f"{step_file(event, index)}.dot"
    if svg_file.exists():
        svg = svg_file.read_text()
        body = svg[svg.find("<svg"):]  # drop the XML prolog and doctype
    elif dot_file.exists():
        body = f"<pre>{html.escape(dot_file.read_text())}</pre>"
    else:
        body = "<p>no drawing</p>"
    lam = ", ".join(f"{v:.3g}" for v in event.eigenvalues[:6]) or "-"
    rows = [("step", event.step), ("action", event.action), ("where", ", ".join(event.where) or "-"),
            ("sources → targets", f"{', '.join(event.sources) or '-'} → {', '.join(event.targets) or '-'}"),
            ("neurons added", event.neurons_added), ("λ", lam),
            ("amplitude γ*", "-" if event.amplitude is None else f"{event.amplitude:.4g}"),
            ("Δloss predicted / measured",
             f"{'-' if event.predicted_loss_change is None else f'{event.predicted_loss_change:.4g}'} / "
             f"{'-' if event.measured_loss_change is None else f'{event.measured_loss_change:.4g}'}"),
            ("parameters", f"{event.params_before:,} → {event.params_after:,}"),
            ("val accuracy", "-" if event.val_accuracy is None else f"{event.val_accuracy:.4f}"),
            ("wall time", f"{event.wall_time:.2f} s")]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return (f'<div class="step" data-index="{index}" hidden><div class="drawing">{body}</div>'
            f'<table class="details">{table}</table></div>')


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#212529;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
.summary{display:flex;gap:14px;flex-wrap:wrap}.card{background:#f1f3f5;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:18px}.controls{display:flex;align-items:center;gap:10px;margin:8px 0}
.controls input{flex:1}.step{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}.step[hidden]{display:none}
.drawing{flex:1;min-width:420px;overflow:auto;border:1px solid #dee2e6;border-radius:6px;padding:6px}
.drawing svg{max-width:100%;height:auto}table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e9ecef;padding:3px 8px;text-align:left}.details th{color:#495057}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot .frame{fill:none;stroke:#adb5bd}.plot .grid{stroke:#f1f3f5}
.plot .tick{font-size:10px;fill:#495057}.plot .label{font-size:11px;fill:#212529}.plot .title{font-size:13px;font-weight:600}
.plot .legend{font-size:11px}button{padding:3px 10px}
"""

SCRIPT = """
(function(){
  var steps=document.querySelectorAll('.step'), slider=document.getElementById('step-slider'),
      label=document.getElementById('step-label');
  function show(i){
    i=Math.max(0,Math.min(steps.length-1,i));
    steps.forEach(function(s,j){s.hidden=(j!==i);});
    slider.value=i; label.textContent=(i+1)+' / '+steps.length;
  }
  slider.max=Math.max(steps.length-1,0);
  slider.addEventListener('input',function(){show(+slider.value);});
  document.getElementById('prev').addEventListener('click',function(){show(+slider.value-1);});
  document.getElementById('next').addEventListener('click',function(){show(+slider.value+1);});
  document.addEventListener('keydown',function(e){
    if(e.key==='ArrowLeft')show(+slider.value-1); if(e.key==='ArrowRight')show(+slider.value+1);});
  if(steps.length)show(steps.length-1);
  document.body.setAttribute('data-ready','1');
})();
"""


def write_report(history: History, run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` for ``history`` (step drawings are read from ``run_dir``)."""
    folder = Path(run_dir)
    events = history.events
    arch = history.architecture_events()
    measured = [e for e in events if e.train_loss is not None or e.val_loss is not None]
    last = events[-1] if events else None
    first = events[0] if events else None
    strategy = next((e.strategy for e in events if e.strategy), "-")
    init = next((e.init for e in events if e.init), "-")
    growth = [e for e in events if e.is_growth]
    cards = [("growth steps", len(growth)), ("strategy", strategy), ("init", init),
             ("parameters", f"{first.params_after:,} → {last.params_after:,}" if last else "-"),
             ("final val accuracy", "-" if not measured or measured[-1].val_accuracy is None
              else f"{measured[-1].val_accuracy:.4f}"),
             ("final val loss", "-" if not measured or measured[-1].val_loss is None else f"{measured[-1].val_loss:.4f}"),
             ("wall time", f"{last.wall_time:.1f} s" if last else "-")]
    summary = "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(str(v))}</b></div>' for k, v in cards)
    panels = "".join(_step_panel(folder, e, i) for i, e in enumerate(arch))
    plots = "".join([
        svg_plot(_series(measured, "params", "loss"), title="loss vs parameters", xlabel="parameters", ylabel="loss"),
        svg_plot(_series(measured, "params", "accuracy"), title="accuracy vs parameters", xlabel="parameters",
                 ylabel="accuracy", legend="bottom"),
        svg_plot(_series(measured, "time", "loss"), title="loss vs wall time", xlabel="seconds", ylabel="loss"),
        svg_plot(_series(measured, "time", "accuracy"), title="accuracy vs wall time", xlabel="seconds",
                 ylabel="accuracy", legend="bottom"),
    ])
    header = ("step", "action", "where", "+neurons", "params", "γ*", "Δloss pred", "Δloss meas", "val loss", "val acc")

    def cell(x, fmt=".4g"):
        return "-" if x is None else format(x, fmt)

    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            e.step, e.action, ", ".join(e.where) or "-", e.neurons_added, f"{e.params_after:,}", cell(e.amplitude),
            cell(e.predicted_loss_change), cell(e.measured_loss_change), cell(e.val_loss), cell(e.val_accuracy))) + "</tr>"
        for e in events if e.action != "train")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>daggrow report: {html.escape(folder.name)}</title>
<style>{CSS}</style></head>
<body data-ready="0">
<h1>daggrow growth report</h1><p>{html.escape(str(folder))}</p>
<div class="summary">{summary}</div>
<h2>Architecture, step by step</h2>
<div class="controls"><button id="prev" type="button">◀</button>
<input id="step-slider" type="range" min="0" value="0" step="1" aria-label="growth step">
<button id="next" type="button">▶</button><span id="step-label"></span></div>
<div id="steps">{panels or '<p>no architecture recorded</p>'}</div>
<h2>Loss and accuracy</h2><div class="plots">{plots}</div>
<h2>Events</h2><table class="events"><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in header)}</tr>{rows}</table>
<script>{SCRIPT}</script>
</body></html>
"""
    out = folder / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
