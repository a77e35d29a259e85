"""The offline template for `dvc plots show --html-template`: no CDN, Vega inlined."""

from __future__ import annotations

from pathlib import Path

import vl_convert  # noqa: F401 - a declared dependency the offline page needs
from dvc_render import render_html
from dvc_render.vega import VegaRenderer

from glomx.evaluation import offline_plots


def test_dvc_renders_with_the_inlined_bundle(tmp_path: Path) -> None:
    template = tmp_path / "offline.html"
    assert offline_plots.main([str(template)]) == 0
    points = [
        {"fpr": 0.0, "tpr": 0.0, "rev": "workspace"},
        {"fpr": 1.0, "tpr": 1.0, "rev": "workspace"},
    ]
    renderer = VegaRenderer(points, "roc", template="simple", x="fpr", y="tpr")
    page = Path(
        render_html([renderer], tmp_path / "index.html", html_template=template)
    ).read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    assert "window.vegaEmbed=" in page and "vegaEmbed('#roc'" in page
    assert "{plot_divs}" not in page and "{refresh_tag}" not in page
