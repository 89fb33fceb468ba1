"""Inline SVG line charts: tick choice, data → pixel mapping, labels, legend, cursor, escaping."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from daggrow.history.plots import MARGIN, format_number, nice_ticks, svg_plot, tick_labels


@given(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6), st.floats(-12, 12))
def test_ticks_are_round_evenly_spaced_and_inside(lo, relative_span, exponent):
    scale = 10.0 ** exponent
    lo, span = lo * scale, relative_span * max(abs(lo), 1.0) * scale
    hi = lo + span
    ticks = nice_ticks(lo, hi)
    assert 3 <= len(ticks) <= 11
    tol = 1e-9 * max(abs(lo), abs(hi), span)
    assert all(lo - tol <= t <= hi + tol for t in ticks)
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    step = steps[0]
    assert all(math.isclose(s, step, rel_tol=1e-6, abs_tol=tol) for s in steps)
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))
    assert len(set(tick_labels(ticks))) == len(ticks)


def test_tick_text():
    assert [format_number(x) for x in (0, 0.25, 150, 15000, 2.5e6, 2e-5)] == ["0", "0.25", "150", "15k", "2.5M",
                                                                             "2e-05"]
    assert nice_ticks(3, 3) == [3] and nice_ticks(float("nan"), 1) == []


def _circles(svg: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]


def test_points_land_where_their_values_say():
    w, h = 440, 280
    svg = svg_plot({"train": [(100, 0.0), (200, 1.0), (150, 0.5)]}, title="t", xlabel="x", ylabel="y",
                   width=w, height=h)
    ET.fromstring(svg)  # well-formed
    left, top = MARGIN["left"], MARGIN["top"]
    pw, ph = w - left - MARGIN["right"], h - top - MARGIN["bottom"]
    pad = 0.05  # 5% of the y range above and below
    expected = [(left, top + ph * (1 - pad / (1 + 2 * pad))), (left + pw, top + ph * (pad / (1 + 2 * pad))),
                (left + pw / 2, top + ph / 2)]
    for (x, y), (ex, ey) in zip(_circles(svg), expected):
        assert abs(x - ex) <= 0.06 and abs(y - ey) <= 0.06


def test_axes_ticks_labels_legend_and_escaping():
    svg = svg_plot({"train": [(1, 2), (3, 4)], "val": [(1, 3), (3, float("nan"))]},
                   title="loss <&> \"q\"", xlabel="number of parameters", ylabel="loss")
    ET.fromstring(svg)
    assert "loss &lt;&amp;&gt; &quot;q&quot;" in svg and "<&>" not in svg
    assert ">number of parameters</text>" in svg and 'rotate(-90)' in svg
    assert svg.count('class="tick"') >= 6 and 'class="legend-box"' in svg
    assert ">train</text>" in svg and ">val</text>" in svg
    assert len(_circles(svg)) == 3  # the NaN point is left out
    assert "#1c7ed6" in svg and "#e8590c" in svg


def test_empty_series_say_no_data():
    svg = svg_plot({}, title="accuracy", xlabel="s", ylabel="a")
    ET.fromstring(svg)
    assert "no data" in svg and "<circle" not in svg


def test_cursor_positions_follow_the_x_values():
    svg = svg_plot({"val": [(0, 1), (10, 2)]}, title="t", xlabel="x", ylabel="y", cursor=[0, 5, 10, 99])
    left, pw = MARGIN["left"], 440 - MARGIN["left"] - MARGIN["right"]
    xs = [float(v) for v in re.search(r'data-cursor="([^"]*)"', svg)[1].split()]
    assert xs == [left, left + pw / 2, left + pw, left + pw]  # clamped to the frame
    assert re.search(r'<line class="cursor" x1="([\d.]+)"', svg)[1] == f"{left + pw:.1f}"  # starts at the last


def test_standalone_files_carry_namespace_and_style_and_fragments_do_not():
    series = {"train": [(1, 2), (3, 4)]}
    root = ET.fromstring(svg_plot(series, title="t", xlabel="x", ylabel="y"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    style = root.find("{http://www.w3.org/2000/svg}style")
    assert style is not None and ".plot .frame{fill:none" in style.text
    fragment = svg_plot(series, title="t", xlabel="x", ylabel="y", standalone=False)
    assert "://" not in fragment and "<style>" not in fragment
