"""The HTML page ``dvc plots show`` / ``dvc plots diff`` fill: Vega, Vega-Lite and Vega-Embed inlined, so the
plots draw offline (cluster nodes, a reviewer on a train).

DVC's default page loads the three libraries from a CDN (``cdn.jsdelivr.net``) and stays blank without
internet. DVC fills a custom page instead when ``plots.html_template`` names one (``.dvc/config``, committed):
it replaces ``{plot_divs}`` with the plots and ``{scripts}`` with its CDN ``<script>`` tags, so a page
without ``{scripts}`` that carries the libraries itself never asks the network for anything.

The libraries come from the locked environment, not from the internet: the snakemake wheel (pinned in
``uv.lock``) ships Vega 5.21.0, Vega-Lite 5.2.0 and Vega-Embed 6.20.8 for its own reports, with the
sha256 of each file in ``snakemake.assets.Assets.spec``, and the licences of everything bundled in
them. This module copies them byte for byte into the page, with those licences (BSD-3-Clause, ISC,
MIT, ...) as a comment. The page is committed (``PAGE``); after an upgrade of snakemake rewrite it
with ``python -m pipeline.plots_page`` (``tests/test_plots.py`` fails until the two agree).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from pipeline.io import write_text

PAGE = Path(".dvc/plots/offline.html")  # relative to the repository root
CONFIG_VALUE = "plots/offline.html"  # `dvc config plots.html_template`: DVC reads it relative to .dvc/
LIBRARIES = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")  # load order
_END_OF_BUNDLES = "prop-types/prop-types.min.js"  # the first asset of snakemake's spec after Vega's


# DVC writes `vegaEmbed('#<id>', {})` for a plots file without rows (the curve of a training phase that did
# not run is its header alone); Vega-Embed rejects the empty specification and leaves a blank box. Say why.
EMPTY_PLOTS = """
<script>
window.vegaEmbed = (function (embed) {
    return function (el, spec, options) {
        if (spec && Object.keys(spec).length) return embed(el, spec, options);
        var note = document.createElement("p");
        note.textContent = el.slice(1) + ": no data points (e.g. a training phase that did not run)";
        document.querySelector(el).appendChild(note);
        return Promise.resolve(null);
    };
})(window.vegaEmbed);
</script>"""


class AssetError(RuntimeError):
    """A library file of the snakemake wheel is missing or is not the file its spec pins."""


def _assets() -> tuple[Path, list[str]]:
    """snakemake's asset folder and, in its spec's order, the keys of Vega's bundles and their licences.

    The spec lists each library followed by the licences of what its bundle includes, Vega's three first
    and prop-types (not ours) right after them.
    """
    from snakemake.assets import Assets

    keys = list(Assets.spec)
    start, stop = keys.index(LIBRARIES[0]), keys.index(_END_OF_BUNDLES)
    return Path(str(Assets.base_path())), keys[start:stop]


def _read(base: Path, key: str) -> str:
    from snakemake.assets import Assets

    path = base / key
    if not path.is_file():  # snakemake would download it; we never do
        raise AssetError(f"{path}: missing from the installed snakemake; reinstall it with `uv sync --frozen`")
    data = path.read_bytes()
    pinned = Assets.spec[key].sha256
    if pinned is not None and hashlib.sha256(data).hexdigest() != pinned:
        raise AssetError(f"{path}: sha256 differs from the one snakemake pins ({pinned})")
    return data.decode("utf-8")


def render() -> str:
    """The page: DVC's placeholders ``{refresh_tag}`` and ``{plot_divs}``, the libraries inlined, no ``{scripts}``."""
    base, keys = _assets()
    from snakemake.assets import Assets

    versions = ", ".join(f"{k.split('/')[0]} {Assets.get_version(k)}" for k in LIBRARIES)
    notices = "\n\n".join(f"--- {key} ---\n{_read(base, key).strip()}".replace("\r\n", "\n")
                          for key in keys if key not in LIBRARIES)
    # A comment must not contain "--" sequences that end it early; licence texts hold none but be safe.
    notices = notices.replace("-->", "-- >")
    scripts = "\n".join(f"<script>\n{_read(base, key)}\n</script>" for key in LIBRARIES) + EMPTY_PLOTS
    return f"""<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Written by `python -m pipeline.plots_page` (do not edit): {versions}, copied from the snakemake
         wheel locked in uv.lock, so the plots draw without internet. Licences of the inlined code:

{notices}
    -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(root: Path | str = ".") -> int:
    """Write the page into the checkout at ``root``."""

    path = Path(root) / PAGE
    write_text(path, render())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); .dvc/config: plots.html_template = {CONFIG_VALUE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
