"""sanitize_svg keeps a drawing and drops anything that could run or load."""

from __future__ import annotations

import pytest

from daggrow.history.sanitize import UnsafeSVGError, sanitize_svg


def test_a_graphviz_like_drawing_survives():
    svg = ('<?xml version="1.0"?><!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd"><!-- c -->'
           '<svg width="8pt" viewBox="0 0 8 8" xmlns="http://www.w3.org/2000/svg"><g id="graph0" class="graph" '
           'transform="scale(1)"><title>g</title><polygon fill="white" points="0,0 1,1"/>'
           '<text text-anchor="middle" font-size="9">a &amp; b</text></g></svg>')
    assert sanitize_svg(svg) == ('<svg width="8pt" viewbox="0 0 8 8"><g id="graph0" class="graph" '
                                 'transform="scale(1)"><title>g</title><polygon fill="white" points="0,0 1,1">'
                                 '</polygon><text text-anchor="middle" font-size="9">a &amp; b</text></g></svg>')


@pytest.mark.parametrize("payload", [
    '<script>alert(1)</script>', '<g onclick="alert(1)"/>', '<g ONLOAD="alert(1)"/>',
    '<foreignObject><div>x</div></foreignObject>', '<a href="javascript:alert(1)"><text>t</text></a>',
    '<rect fill="url(http://evil/x)"/>', '<rect fill="java&#x0A;script:alert(1)"/>', '<image href="x.png"/>',
    '<style>*{background:url(http://evil)}</style>', '<use href="#a"/>', '<set attributeName="onclick" to="x"/>',
    '<g style="background:url(http://evil)"/>', '<g class="step"/>',
])
def test_payloads_are_dropped(payload):
    out = sanitize_svg(f"<svg>{payload}<text>kept</text></svg>")
    lowered = out.lower()
    for bad in ("script", "onclick", "onload", "foreignobject", "href", "http", "<image", "<style", "<use",
                "<set", "style=", "step"):
        assert bad not in lowered, (bad, out)
    assert "<text>kept</text>" in out


@pytest.mark.parametrize("bad", ['<!DOCTYPE svg [<!ENTITY a "b">]><svg>&a;</svg>', "<svg><g></svg>",
                                 "<html></html>", "<svg><![CDATA[x]]></svg>", "no svg at all"])
def test_malformed_or_declaring_svg_is_refused(bad):
    with pytest.raises(UnsafeSVGError):
        sanitize_svg(bad)


def test_local_references_stay():
    out = sanitize_svg('<svg><rect fill="url(#grad)" clip-path="url(#c1)"/></svg>')
    assert 'fill="url(#grad)"' in out and 'clip-path="url(#c1)"' in out
