"""An HTML template for ``dvc plots show/diff`` that works without internet.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN (its ``{scripts}``
placeholder). This template leaves that placeholder out and inlines one bundle of all three
instead, made by the ``vl-convert-python`` package (which ships them), so the page renders
offline::

    python -m glomx.evaluation.offline_plots dvc_plots/offline.html
    dvc plots show --html-template dvc_plots/offline.html
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

VEGA_LITE = "5.21"  # dvc-render's templates declare the Vega-Lite v5 schema

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  {refresh_tag}
  <title>glomx plots</title>
  <script>
{bundle}
  </script>
  <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def html_template(vl_version: str = VEGA_LITE) -> str:
    """The template text: DVC's placeholders ``{plot_divs}``/``{refresh_tag}`` plus the bundle."""
    try:
        import vl_convert
    except ImportError as err:
        raise RuntimeError(
            "offline plots need the vl-convert-python package (it ships Vega, Vega-Lite and "
            "Vega-Embed): pip install vl-convert-python"
        ) from err
    bundle = vl_convert.javascript_bundle(vl_version=vl_version)  # type: ignore[call-arg]
    if "</script" in bundle.lower():
        raise RuntimeError("the Vega bundle contains '</script' and cannot be inlined")
    return PAGE.format(bundle=bundle, refresh_tag="{refresh_tag}", plot_divs="{plot_divs}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="template to write, e.g. dvc_plots/offline.html")
    parser.add_argument("--vl-version", default=VEGA_LITE)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(html_template(args.vl_version), encoding="utf-8")
    print(f"wrote {args.out}; use: dvc plots show --html-template {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
