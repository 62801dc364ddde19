"""`dvc plots` as a person uses it: the plots page draws offline."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT, pipeline_env
from PIL import Image

from pipeline import plots_page
from pipeline.io import write_text


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=pipeline_env(cwd),
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _assert_offline(page: str) -> None:
    """The page loads nothing: no script, stylesheet or image from elsewhere, and the libraries are in it."""
    assert not re.search(r"<script[^>]*\ssrc\s*=", page), "a <script src=...>: loaded from elsewhere"
    assert not re.search(r"""\bsrc\s*=\s*["']?(https?:)?//""", page) and "<link" not in page
    assert "cdn.jsdelivr" not in page  # DVC's default page's CDN
    for library in ("global.vega = {}", "global.vegaLite = {}", "vegaEmbed"):  # vega, vega-lite, vega-embed
        assert library in page


# --- offline plots -----------------------------------------------------------------------------------


def test_plots_page_is_the_one_the_locked_environment_gives_and_dvc_config_uses_it():
    """The committed page is exactly what `python -m pipeline.plots_page` writes from the snakemake wheel
    (its files checked against the sha256 snakemake pins), and .dvc/config points DVC at it."""
    committed = (ROOT / plots_page.PAGE).read_bytes().decode("utf-8")  # byte for byte, line ends included
    assert committed == plots_page.render(), "run `uv run python -m pipeline.plots_page` and commit the page"
    assert "{plot_divs}" in committed and "{scripts}" not in committed  # no {scripts}: DVC's CDN tags dropped
    _assert_offline(committed)
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["plots"]["html_template"] == plots_page.CONFIG_VALUE
    assert (ROOT / ".dvc" / plots_page.CONFIG_VALUE).resolve() == (ROOT / plots_page.PAGE).resolve()


def test_dvc_plots_show_writes_a_page_that_needs_no_network(tmp_path):
    """`dvc plots show` in a repository with the committed config: curves inline, images as local files."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    (repo / ".dvc" / "plots").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy2(ROOT / plots_page.PAGE, repo / plots_page.PAGE)
    write_text(repo / "curve.csv", "step,loss\n2,0.5\n4,0.25\n6,0.166667\n")
    Image.new("RGB", (4, 4), (200, 30, 30)).save(repo / "figure.png")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"curve.csv": {"x": "step", "y": "loss"}},
                                                             "figure.png"]}))
    _dvc(["plots", "show", "-o", str(tmp_path / "out")], repo)
    page = (tmp_path / "out" / "index.html").read_text()
    _assert_offline(page)
    assert page.count("vegaEmbed('#") == 1 and '"loss": "0.5"' in page  # the curve, drawn by the inlined library
    assert '<img src="static/' in page and len(list((tmp_path / "out" / "static").glob("*.png"))) == 1
