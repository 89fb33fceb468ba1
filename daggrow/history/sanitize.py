"""SVG made safe to inline in the report: an allow-list of drawing elements and attributes.

A run folder is data, possibly from someone else: a ``step_NNN.svg`` in it may carry a
``<script>``, an ``onload=`` handler, a ``<foreignObject>`` with HTML or a ``javascript:`` link.
:func:`sanitize_svg` parses the SVG (no DOCTYPE is accepted, so no entity can be defined or
expanded) and writes it back with only the elements and attributes a drawing needs: shapes,
text, groups, titles; geometry, colours and fonts. Everything else is dropped with its content
(script, style, foreignObject, a, image, use, animation ...), and so is every event handler,
every link (``href``) and every value that names a URL other than a local ``url(#id)``. Text and
attribute values are escaped again on the way out.

>>> sanitize_svg('<svg onload="alert(1)"><script>alert(2)</script><g id="a"><text>x &lt; y</text></g></svg>')
'<svg><g id="a"><text>x &lt; y</text></g></svg>'
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

ELEMENTS = frozenset({"svg", "g", "title", "desc", "path", "polygon", "polyline", "ellipse", "circle", "rect",
                      "line", "text", "tspan", "defs", "lineargradient", "radialgradient", "stop", "clippath",
                      "marker"})
ATTRIBUTES = frozenset({
    "id", "class", "transform", "viewbox", "width", "height", "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r",
    "rx", "ry", "points", "d", "fill", "fill-opacity", "fill-rule", "stroke", "stroke-width", "stroke-opacity",
    "stroke-dasharray", "stroke-linecap", "stroke-linejoin", "stroke-miterlimit", "opacity", "font-family",
    "font-size", "font-weight", "font-style", "text-anchor", "dominant-baseline", "preserveaspectratio", "role",
    "aria-label", "offset", "stop-color", "stop-opacity", "clip-path", "marker-end", "marker-start", "markerwidth",
    "markerheight", "refx", "refy", "orient", "gradientunits", "dx", "dy", "text-decoration", "letter-spacing",
})
CLASSES = frozenset({"graph", "node", "edge", "cluster"})  # Graphviz's
_LOCAL_URL = re.compile(r"url\(#[\w.:-]+\)")
_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)


class UnsafeSVGError(ValueError):
    """An SVG text that cannot be parsed as a plain SVG drawing."""


def _local(name: str) -> str:
    """``{namespace}tag`` → ``tag``, lower-cased (SVG in HTML is case-insensitive for these names)."""
    return name.rsplit("}", 1)[-1].lower()


def _safe_value(value: str) -> bool:
    """No script, no external reference: ``javascript:``, ``data:``, ``url(...)`` other than ``url(#id)``."""
    lowered = re.sub(r"[\s\x00-\x1f]", "", value).lower()
    if any(scheme in lowered for scheme in ("javascript:", "vbscript:", "data:", "expression(", "@import")):
        return False
    return "url(" not in _LOCAL_URL.sub("", lowered)


def _write(element: ET.Element, out: list[str]) -> None:
    tag = _local(element.tag)
    attrs = []
    for name, value in element.attrib.items():
        key = _local(name)
        if key == "class" and value not in CLASSES:
            continue  # a class of the page's own (``step``, ``drawing``) would steer its script
        if key in ATTRIBUTES and not key.startswith("on") and _safe_value(value):
            attrs.append(f' {key}="{html.escape(value, quote=True)}"')
    out.append(f"<{tag}{''.join(attrs)}>")
    out.append(html.escape(element.text or "", quote=False))
    for child in element:
        if _local(child.tag) in ELEMENTS:
            _write(child, out)
        out.append(html.escape(child.tail or "", quote=False))  # text after a dropped child stays text
    out.append(f"</{tag}>")


def sanitize_svg(svg_text: str) -> str:
    """``svg_text`` reduced to the allow-listed drawing (see the module docstring).

    Raises :class:`UnsafeSVGError` when the text is not one well-formed ``<svg>`` element
    (a DOCTYPE or entity declaration inside it counts as malformed).
    """
    body = _PROLOG.sub("", svg_text, count=1)
    if "<!" in re.sub(r"<!--.*?-->", "", body, flags=re.S):
        raise UnsafeSVGError("the SVG declares a DOCTYPE, entity or CDATA section inside its <svg> element")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as err:
        raise UnsafeSVGError(f"not well-formed SVG: {err}") from None
    if _local(root.tag) != "svg":
        raise UnsafeSVGError(f"the root element is <{_local(root.tag)}>, not <svg>")
    out: list[str] = []
    _write(root, out)
    return "".join(out)
