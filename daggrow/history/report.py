"""A self-contained HTML report of a run: one file, no external resources, inline SVG and CSS/JS.

The page shows a run summary, the architecture after each growth step (a step viewer: slider,
◀ ▶ buttons, arrow keys, or ``report.html#step=5`` in the address) with the step's details
beside it, plots of loss and accuracy against the number of parameters and against wall time
(a dashed cursor marks the viewed step), and the table of events. When its script has run to
the end, ``<body data-ready="1">``.

>>> write_report(History.load("runs/demo"), "runs/demo")     # doctest: +SKIP
PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

from ..atomic import write_file
from .drawings import StepDrawing, can_render, dot_to_svg, inline_svg
from .events import GrowthEvent
from .history import History
from .layout import layered_svg
from .plots import PLOT_CSS, svg_plot
from .sanitize import UnsafeSVGError, sanitize_svg


def write_report(history: History, run_dir: str | Path, *, render_svg: bool = True) -> Path:
    """Write ``run_dir/report.html`` for ``history`` and return its path.

    Step drawings come from ``run_dir/step_NNN.svg`` when it matches the history, else they are
    rendered with Graphviz ``dot`` (when installed and ``render_svg``), else drawn by the built-in
    layered layout (:func:`~daggrow.history.layout.layered_svg`). An SVG read from disk or made
    by ``dot`` is inlined only after :func:`~daggrow.history.sanitize.sanitize_svg`; every text
    from the history is escaped; a Content-Security-Policy allows only the page's own style and
    script (by hash) and no other resource. ``run_dir/config.json`` (written by ``daggrow grow``),
    when present, names the data set.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    events = history.events
    drawings = history.step_drawings()
    config = _run_config(folder)
    title = f"daggrow report: {config.get('dataset') or folder.resolve().name}"
    panels = "".join(_step_panel(folder, d, i, render_svg) for i, d in enumerate(drawings))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style></head>
<body data-ready="0">
<h1>daggrow growth report</h1><p class="path">{_e(str(folder))}</p>
<div class="summary">{_summary_cards(events, config)}</div>
<h2>Architecture, step by step</h2>
<div class="controls"><button id="prev" type="button" aria-label="previous step">◀</button>
<input id="step-slider" type="range" min="0" max="{max(len(drawings) - 1, 0)}" value="{max(len(drawings) - 1, 0)}"
 step="1" aria-label="growth step"><button id="next" type="button" aria-label="next step">▶</button>
<span id="step-label"></span></div>
<p class="hint">Orange: the neurons, nodes and edges added at the step shown. Arrow keys step too. Drawings fit the
width: the mouse wheel zooms, dragging pans, a double click fits again.</p>
<div id="steps">{panels or '<p class="empty">no architecture recorded</p>'}</div>
<h2>Loss and accuracy</h2><div class="plots">{_plots(events, drawings)}</div>
<h2>Events</h2><div class="events-wrap">{_events_table(events)}</div>
<script>{SCRIPT}</script>
</body></html>
"""
    out = folder / "report.html"
    write_file(out, page)  # atomic: a kill leaves the old report or the new one
    return out


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float | None, fmt: str = ".4g") -> str:
    if x is None:
        return "-"
    return format(x, fmt) if math.isfinite(x) else str(x)


def _last(events: Iterable[GrowthEvent], field: str) -> Any:
    """The last value of ``field`` that is not ``None`` (metrics are missing on some events)."""
    values = [getattr(e, field) for e in events if getattr(e, field) is not None]
    return values[-1] if values else None


def _run_config(folder: Path) -> dict:
    """``config.json`` of the run when there is a readable one; the report does without it."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _summary_cards(events: list[GrowthEvent], config: dict) -> str:
    if not events:
        return '<div class="card">events<b>none recorded</b></div>'
    first, last = events[0], events[-1]
    cards = [
        ("dataset", config.get("dataset")),
        ("growth steps", sum(e.is_growth for e in events)),
        ("strategy", _last(events, "strategy")),
        ("init", _last(events, "init")),
        ("parameters", f"{first.params_after:,} → {last.params_after:,}"),
        ("final train accuracy", _num(_last(events, "train_accuracy"))),
        ("final val accuracy", _num(_last(events, "val_accuracy"))),
        ("final val loss", _num(_last(events, "val_loss"))),
        ("test accuracy", _num(_last(events, "test_accuracy"))),
        ("test loss", _num(_last(events, "test_loss"))),
        ("declined steps", sum(e.action == "declined" for e in events) or None),
        ("wall time", f"{last.wall_time:.1f} s"),
    ]
    return "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in cards if v not in (None, "-"))


def _drawing(folder: Path, drawing: StepDrawing, index: int, render_svg: bool) -> str:
    """Inline SVG of the step's architecture: the saved ``step_NNN.svg`` when it was made from this
    very DOT, else Graphviz ``dot``, else the built-in layered drawing; SVG text that was read or
    rendered is sanitised (:func:`sanitize_svg`) before it enters the page."""
    dot = drawing.dot()
    svg_file, dot_file = folder / f"{drawing.stem}.svg", folder / f"{drawing.stem}.dot"
    candidates = []
    if svg_file.is_file() and dot_file.is_file() and dot_file.read_text(encoding="utf-8") == dot:
        candidates.append(lambda: svg_file.read_text(encoding="utf-8"))  # rendered by History.save from this DOT
    if render_svg and can_render():
        candidates.append(lambda: dot_to_svg(dot))
    for make in candidates:
        svg = make()
        if svg is None:
            continue
        try:
            return inline_svg(sanitize_svg(svg), f"s{index}-")
        except UnsafeSVGError:
            continue  # a damaged or foreign file: draw it afresh instead
    assert drawing.event.graph is not None
    return layered_svg(drawing.event.graph, highlight_step=drawing.highlight_step, title=drawing.title)


def _details(event: GrowthEvent) -> str:
    lam = ", ".join(_num(v, ".3g") for v in event.eigenvalues[:6])
    if len(event.eigenvalues) > 6:
        lam += f", … ({len(event.eigenvalues)} in all)"
    rows = [
        ("step", event.step), ("action", event.action), ("where", ", ".join(event.where) or "-"),
        ("sources → targets", f"{', '.join(event.sources) or '-'} → {', '.join(event.targets) or '-'}"),
        ("neurons added", event.neurons_added if event.directions_added is None else
         f"{event.neurons_added} ({event.directions_added} directions)"), ("eigenvalues λ", lam or "-"),
        ("amplitude γ*", _num(event.amplitude)),
        ("Δloss predicted / measured", f"{_num(event.predicted_loss_change)} / {_num(event.measured_loss_change)}"),
        ("parameters", f"{event.params_before:,} → {event.params_after:,}"),
        ("loss train / val", f"{_num(event.train_loss)} / {_num(event.val_loss)}"),
        ("accuracy train / val", f"{_num(event.train_accuracy)} / {_num(event.val_accuracy)}"),
        ("wall time (step took)", f"{event.wall_time:.2f} s ({event.duration:.2f} s)"),
        ("strategy / init", f"{event.strategy or '-'} / {event.init or '-'}"),
        ("seed", "-" if event.seed is None else event.seed),
        ("note", event.note or "-"),
    ]
    return "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)


def _step_panel(folder: Path, drawing: StepDrawing, index: int, render_svg: bool) -> str:
    return (f'<div class="step" data-index="{index}" data-step="{drawing.event.step}" hidden>'
            f'<div class="drawing">{_drawing(folder, drawing, index, render_svg)}</div>'
            f'<table class="details">{_details(drawing.event)}</table></div>')


def _series(events: list[GrowthEvent], x: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    series = {}
    for split in ("train", "val"):
        points = [(float(e.params_after if x == "params" else e.wall_time), float(getattr(e, f"{split}_{metric}")))
                  for e in events if getattr(e, f"{split}_{metric}") is not None]
        if points:
            series[split] = points
    return series


def _plots(events: list[GrowthEvent], drawings: list[StepDrawing]) -> str:
    by_params = [float(d.event.params_after) for d in drawings]
    by_time = [float(d.event.wall_time) for d in drawings]
    charts = [
        ("params", "loss", "loss vs parameters", "number of parameters", "loss", "top", by_params),
        ("params", "accuracy", "accuracy vs parameters", "number of parameters", "accuracy", "bottom", by_params),
        ("time", "loss", "loss vs wall time", "wall time (s)", "loss", "top", by_time),
        ("time", "accuracy", "accuracy vs wall time", "wall time (s)", "accuracy", "bottom", by_time),
    ]
    if not any(e.train_accuracy is not None or e.val_accuracy is not None for e in events):
        charts = [c for c in charts if c[1] != "accuracy"]  # a regression run: no empty accuracy panels
    return "".join(svg_plot(_series(events, x, metric), title=title, xlabel=xlabel, ylabel=ylabel, legend=legend,
                            cursor=cursor, standalone=False)
                   for x, metric, title, xlabel, ylabel, legend, cursor in charts)


def _events_table(events: list[GrowthEvent]) -> str:
    header = ("step", "action", "where", "+neurons", "params", "γ*", "Δloss pred", "Δloss meas",
              "train loss", "val loss", "val acc", "wall time (s)")
    rows = []
    for e in events:
        if e.action == "train":
            continue
        where = e.note if e.action == "declined" else ", ".join(e.where) or "-"  # a declined step: its reason
        cells = (e.step, e.action, where, e.neurons_added, f"{e.params_after:,}",
                 _num(e.amplitude), _num(e.predicted_loss_change), _num(e.measured_loss_change), _num(e.train_loss),
                 _num(e.val_loss), _num(e.val_accuracy), f"{e.wall_time:.2f}")
        rows.append(f'<tr data-step="{e.step}">' + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f'<table class="events"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


CSS = PLOT_CSS + """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#212529;max-width:1200px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
.path{color:#868e96;margin:0 0 12px;font-size:13px}.hint{color:#868e96;font-size:12px;margin:0 0 8px}
.summary{display:flex;gap:12px;flex-wrap:wrap}.card{background:#f1f3f5;border-radius:6px;padding:8px 12px;font-size:13px}
.card b{display:block;font-size:17px;margin-top:2px}
.controls{display:flex;align-items:center;gap:10px;margin:8px 0}.controls input{flex:1}
#step-label{min-width:150px;font-variant-numeric:tabular-nums}button{padding:3px 10px;cursor:pointer}
.step{display:flex;flex-direction:column;gap:12px}.step[hidden]{display:none}
.drawing{flex:1 1 auto;min-width:0;overflow:auto;border:1px solid #dee2e6;border-radius:6px;padding:6px;text-align:center}
.drawing svg{width:100%;height:auto;max-height:78vh;cursor:grab;touch-action:none}.drawing svg:active{cursor:grabbing}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #e9ecef;padding:3px 8px;text-align:left}
.details{width:100%;max-width:900px}.details th{color:#495057;white-space:nowrap;font-weight:600}.details td{word-break:break-word}
.events td{font-variant-numeric:tabular-nums}.events tr.current td{background:#fff4e6}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(400px,100%),1fr));gap:12px}
.plots svg{width:100%;height:auto;max-width:660px}.events-wrap{overflow-x:auto}
@media (max-width:900px){.step{flex-direction:column}.details{flex:none;width:100%}body{margin:10px}}
"""

SCRIPT = """
(function(){
  var steps=[].slice.call(document.querySelectorAll('#steps .step'));
  var slider=document.getElementById('step-slider'), label=document.getElementById('step-label');
  var plots=[].slice.call(document.querySelectorAll('svg.plot[data-cursor]'));
  var rows=[].slice.call(document.querySelectorAll('table.events tr[data-step]'));
  function show(i){
    if(!steps.length){label.textContent='no steps';return;}
    i=Math.max(0,Math.min(steps.length-1,i));
    var step=steps[i].getAttribute('data-step');
    steps.forEach(function(s,j){s.hidden=(j!==i);});
    slider.value=i;
    label.textContent='step '+step+' ('+(i+1)+' / '+steps.length+')';
    plots.forEach(function(p){
      var xs=p.getAttribute('data-cursor').split(' '), line=p.querySelector('line.cursor');
      if(line&&xs[i]!==undefined){line.setAttribute('x1',xs[i]);line.setAttribute('x2',xs[i]);}
    });
    rows.forEach(function(r){r.classList.toggle('current',r.getAttribute('data-step')===step);});
  }
  function current(){return +slider.value;}
  [].forEach.call(document.querySelectorAll('.drawing > svg'),function(svg){
    // fit to width, wheel zooms around the pointer, drag pans, double click fits again: all on the viewBox
    var vb0=(svg.getAttribute('viewBox')||'').trim().split(/[\\s,]+/).map(Number);
    if(vb0.length!==4||vb0.some(isNaN)){vb0=[0,0,parseFloat(svg.getAttribute('width'))||100,parseFloat(svg.getAttribute('height'))||100];}
    var vb=vb0.slice(), drag=null;
    function set(){svg.setAttribute('viewBox',vb.join(' '));}
    svg.removeAttribute('width');svg.removeAttribute('height');set();
    svg.addEventListener('wheel',function(e){
      e.preventDefault();
      var r=svg.getBoundingClientRect(), fx=(e.clientX-r.left)/r.width, fy=(e.clientY-r.top)/r.height;
      var k=e.deltaY<0?0.8:1.25, w=vb[2]*k, h=vb[3]*k;
      vb=[vb[0]+(vb[2]-w)*fx,vb[1]+(vb[3]-h)*fy,w,h];set();
    },{passive:false});
    svg.addEventListener('pointerdown',function(e){drag=[e.clientX,e.clientY,vb[0],vb[1]];});
    svg.addEventListener('pointermove',function(e){
      if(!drag)return;
      var r=svg.getBoundingClientRect();
      vb[0]=drag[2]-(e.clientX-drag[0])*vb[2]/r.width;vb[1]=drag[3]-(e.clientY-drag[1])*vb[3]/r.height;set();
    });
    ['pointerup','pointerleave'].forEach(function(t){svg.addEventListener(t,function(){drag=null;});});
    svg.addEventListener('dblclick',function(){vb=vb0.slice();set();});
  });
  slider.addEventListener('input',function(){show(current());});
  document.getElementById('prev').addEventListener('click',function(){show(current()-1);});
  document.getElementById('next').addEventListener('click',function(){show(current()+1);});
  document.addEventListener('keydown',function(e){
    if(e.target===slider)return;  // the slider moves itself
    if(e.key==='ArrowLeft')show(current()-1);
    if(e.key==='ArrowRight')show(current()+1);
  });
  var start=steps.length-1, wanted=/step=(\\d+)/.exec(window.location.hash);
  if(wanted){steps.forEach(function(s,j){if(s.getAttribute('data-step')===wanted[1])start=j;});}
  show(start);
  document.body.setAttribute('data-ready','1');
})();
"""


def _source_hash(text: str) -> str:
    """The CSP source expression of an inline ``<style>``/``<script>`` body: ``'sha256-<base64>'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# nothing may load or run but the page's own style and script, identified by their hashes
CSP = (f"default-src 'none'; style-src {_source_hash(CSS)}; script-src {_source_hash(SCRIPT)}; "
       "img-src 'none'; base-uri 'none'; form-action 'none'")
