"""The slide report as one self-contained HTML page: what a pathologist reads after
``glomx predict``.

Everything is inline (CSS, the forest plot as SVG, thumbnails as base64 JPEG), so the file
opens offline and fetches nothing: no script, no font, no CDN. The page is built from plain
data (:class:`SlideView`, :class:`Thumb`); reading predictions, images and the registry is the
caller's job (:mod:`glomx.report`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from PIL import Image

from glomx.data.images import DEFAULT_MAX_PIXELS, ImageError, decode
from glomx.evaluation.prevalence import CUTOFFS

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.2em;margin:1.4em 0 .4em}
h3{font-size:1.05em;margin:1.2em 0 .3em;border-top:1px solid #ccc;padding-top:.6em}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}
.facts th{color:#555;font-weight:normal}.flag{color:#b00020}.note{color:#555}
.grid{display:flex;flex-wrap:wrap;gap:6px;margin:.2em 0 .6em}.grid .grid{margin:0;gap:2px}
figure{margin:0;text-align:center;font-size:11px;width:100px}
figure img{display:block;width:96px;height:96px;object-fit:cover;border:2px solid #999}
figure.pos img{border-color:#b00020}.problems td{font-size:12px}
"""
ROW, LEFT, WIDTH = 18, 230, 900  # forest plot: row height, label column, total width (px)
THUMB_PX, JPEG_QUALITY = 96, 80


@dataclass(frozen=True)
class Thumb:
    """One patch shown: its file name, P(sclerotic), label, JPEG thumbnail and, for a
    doubtful patch of a Keras model, its Grad-CAM overlay."""

    name: str
    probability: float
    label: int
    jpeg: bytes
    gradcam: bytes | None = None


@dataclass(frozen=True)
class SlideView:
    """One slide's row of ``<out>_slides.csv`` and the patches chosen to show."""

    slide: str
    n: int
    sclerotic: int
    errors: int
    percent: float | None  # corrected %GS, None when nothing was predicted
    low: float | None
    high: float | None
    flags: list[str]
    called: list[Thumb] = field(default_factory=list)  # most confident called sclerotic
    doubtful: list[Thumb] = field(default_factory=list)  # nearest the threshold


def thumbnail(path: str) -> bytes | str:
    """A JPEG of at most :data:`THUMB_PX` px a side, or why the file cannot be shown. Here,
    not beside the report's model code, so that the processes making thumbnails import no
    model framework."""
    try:
        image = Image.fromarray(decode(Path(path), 3, DEFAULT_MAX_PIXELS))
    except ImageError as err:
        return str(err)
    image.thumbnail((THUMB_PX, THUMB_PX))
    return jpeg(image)


def jpeg(image: Image.Image) -> bytes:
    """The page's thumbnail encoding."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data).decode()}" alt="{alt}">'


def _figure(thumb: Thumb, overlay: bool = False) -> str:
    name = escape(thumb.name, quote=True)
    data = thumb.gradcam if overlay and thumb.gradcam else thumb.jpeg
    cls = ' class="pos"' if thumb.label == 1 else ""
    what = "Grad-CAM" if overlay else f"p = {thumb.probability:.3f}"
    return f'<figure{cls} title="{name}">{_img(data, name)}{what}</figure>'


def forest_svg(slides: Sequence[SlideView]) -> str:
    """%GS per slide with its 95 % interval, one row each, with dashed lines at the
    :data:`CUTOFFS`; a flagged slide is drawn red."""
    rows = [s for s in slides if s.percent is not None]
    plot = WIDTH - LEFT - 20
    height = ROW * (len(rows) + 2)

    def x(percent: float) -> float:
        return LEFT + plot * min(max(percent, 0.0), 100.0) / 100

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-size="11" role="img" '
        'aria-label="%GS per slide with 95 % intervals">'
    ]
    bottom = ROW * (len(rows) + 0.5)
    for tick in range(0, 101, 10):
        for y in (bottom + 12, 10):  # the axis under the plot and over it: it can be long
            parts.append(
                f'<text x="{x(tick):.1f}" y="{y:.0f}" text-anchor="middle" fill="#555">'
                f"{tick}{' %' if tick == 100 else ''}</text>"
            )
    for cut in CUTOFFS:
        parts.append(
            f'<line x1="{x(cut):.1f}" y1="{ROW / 2:.0f}" x2="{x(cut):.1f}" y2="{bottom:.0f}" '
            'stroke="#888" stroke-dasharray="4 3"/>'
        )
    for i, s in enumerate(rows):
        assert s.percent is not None and s.low is not None and s.high is not None
        y = ROW * (i + 1)
        colour = "#b00020" if s.flags else "#1f4e9c"
        parts.append(
            f'<a href="#slide-{escape(s.slide, quote=True)}"><text x="{LEFT - 6}" y="{y + 4}" '
            f'text-anchor="end">{escape(s.slide)} (n={s.n})</text></a>'
            f'<line x1="{x(s.low):.1f}" y1="{y}" x2="{x(s.high):.1f}" y2="{y}" '
            f'stroke="{colour}" stroke-width="2"/>'
            f'<circle cx="{x(s.percent):.1f}" cy="{y}" r="3.5" fill="{colour}">'
            f"<title>{escape(s.slide)}: {s.percent:.1f} % [{s.low:.1f}, {s.high:.1f}]</title>"
            "</circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _slide_section(s: SlideView, threshold: float | None) -> str:
    gs = (
        f"%GS {s.percent:.1f} % (95 % interval {s.low:.1f}–{s.high:.1f})"
        if s.percent is not None
        else "nothing predicted"
    )
    flags = f' <span class="flag">⚑ {escape("; ".join(s.flags))}</span>' if s.flags else ""
    html = [
        f'<h3 id="slide-{escape(s.slide, quote=True)}">{escape(s.slide)}</h3>',
        f"<p>{s.n} glomeruli counted, {s.sclerotic} called sclerotic, {gs}"
        f"{f', {s.errors} unreadable' if s.errors else ''}.{flags}</p>",
    ]
    if s.called:
        near = sum(t.label == 1 for t in s.doubtful)
        hidden = s.sclerotic - len(s.called) - near
        html.append(
            f"<p>Called sclerotic, most confident first: {len(s.called)} shown"
            + (f", {hidden} more not shown" if hidden > 0 else "")
            + (f", {near} among those nearest the threshold below" if near else "")
            + ":</p>"
        )
        html.append('<div class="grid">' + "".join(_figure(t) for t in s.called) + "</div>")
    if s.doubtful:
        cut = f" {threshold:.3g}" if threshold is not None else ""
        html.append(
            f"<p>Nearest the threshold{cut} (red frame: called sclerotic)"
            + (", each with its Grad-CAM" if any(t.gradcam for t in s.doubtful) else "")
            + ":</p>"
        )
        figures = [  # a patch and its Grad-CAM stay side by side
            f'<div class="grid">{_figure(t)}{_figure(t, overlay=True)}</div>'
            if t.gradcam
            else _figure(t)
            for t in s.doubtful
        ]
        html.append('<div class="grid">' + "".join(figures) + "</div>")
    return "\n".join(html)


def render(
    title: str,
    facts: Sequence[tuple[str, str]],
    slides: Sequence[SlideView],
    problems: Sequence[tuple[str, str, str, str]],
    notes: Sequence[str],
    threshold: float | None,
) -> str:
    """The whole page: ``facts`` (label, value) on top, the forest plot, one section per
    slide, then every problem row (name, slide, error, note) and the report's own ``notes``."""
    fact_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    problem_rows = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in problems
    )
    problems_html = (
        f"<table class='problems'><tr><th>file</th><th>slide</th><th>error</th><th>note</th>"
        f"</tr>{problem_rows}</table>"
        if problems
        else "<p>None: every file was read.</p>"
    )
    notes_html = "".join(f"<li class='note'>{escape(n)}</li>" for n in notes)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f"<table class='facts'>{fact_rows}</table>",
            f"<ul>{notes_html}</ul>" if notes else "",
            "<h2>%GS per slide</h2>",
            "<p>Point: %GS corrected for the model's sensitivity and specificity "
            "(Rogan–Gladen); bar: 95 % interval; dashed: the 10 % and 20 % cut-offs; red: "
            "flagged (fewer than 25 glomeruli, or the interval crosses a cut-off). A slide's "
            "name leads to its patches.</p>",
            forest_svg(slides),
            "<h2>Slides</h2>",
            *(_slide_section(s, threshold) for s in slides),
            f"<h2>Unreadable files and notes ({len(problems)})</h2>",
            problems_html,
            "</body></html>",
        ]
    )
