"""`dvc plots` and `dvc metrics` as a person uses them: the plots page draws offline, every training stage
writes its training curve as a DVC plot, and each stage's metrics file holds a short headline (its
details.json the full record)."""

import configparser
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, pipeline_env
from PIL import Image

from pipeline import plots_page
from pipeline.io import write_curve, write_metrics

# stage -> its training curves, relative to paths.results
CURVES = {
    "train_vqgan": ["train_vqgan/curve.csv"],
    "train_titok": ["train_titok/curve_stage1.csv", "train_titok/curve_stage2.csv"],
    "train_clip": ["train_clip/curve_objective.csv", "train_clip/curve_judge.csv"],
    "train_alit": ["train_alit/curve_stage1.csv", "train_alit/curve_stage2.csv"],
}
HEADLINE_MAX = 12  # scalars per metrics.json: `dvc metrics show` prints each one as a column


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
    write_curve(repo / "curve.csv", [{"step": s, "loss": 1 / s, "images_per_s": 100.0} for s in (2, 4, 6)])
    Image.new("RGB", (4, 4), (200, 30, 30)).save(repo / "figure.png")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"curve.csv": {"x": "step", "y": "loss"}},
                                                             "figure.png"]}))
    _dvc(["plots", "show", "-o", str(tmp_path / "out")], repo)
    page = (tmp_path / "out" / "index.html").read_text()
    _assert_offline(page)
    assert page.count("vegaEmbed('#") == 1 and '"loss": "0.5"' in page  # the curve, drawn by the inlined library
    assert '<img src="static/' in page and len(list((tmp_path / "out" / "static").glob("*.png"))) == 1


# --- training curves and headline metrics ------------------------------------------------------------


def test_curve_and_metrics_writers(tmp_path):
    write_curve(tmp_path / "c.csv", [{"step": 2, "loss": 0.5, "lr": 1e-4, "codebook/usage": 0.25},
                                     {"step": 4, "loss": 0.25, "lr": 5e-5, "codebook/usage": 0.5}])
    assert (tmp_path / "c.csv").read_text() == "step,loss,codebook/usage,lr\n2,0.5,0.25,0.0001\n4,0.25,0.5,5e-05\n"
    write_curve(tmp_path / "none.csv", [])  # nothing trained: the header only, which DVC draws as no plot
    assert (tmp_path / "none.csv").read_text() == "step,loss\n"

    details = {"val": {"psnr": 20.5, "per_class": [1, 2]}, "train/loss": 0.1, "name": "m"}
    shown = write_metrics(tmp_path, details, {"psnr": "val.psnr", "loss": "train/loss", "absent": "val.ssim"})
    assert shown == {"psnr": 20.5, "loss": 0.1} == json.loads((tmp_path / "metrics.json").read_text())
    assert json.loads((tmp_path / "details.json").read_text()) == details
    with pytest.raises(ValueError, match="scalars"):
        write_metrics(tmp_path, details, {"val": "val"})


def test_dvc_yaml_declares_curves_details_and_headlines():
    """Every training stage declares its curves as plots (x: step, in git); every stage with a metrics file
    declares its details.json as a plain output; the grouped plots read only declared curves."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage, curves in CURVES.items():
        plots = {next(iter(p)): next(iter(p.values())) for p in stages["stages"][stage]["plots"]}
        for curve in curves:
            props = plots[f"${{paths.results}}/{curve}"]
            assert props["cache"] is False and props["x"] == "step" and props["y"] == "loss", (stage, curve)
    declared = {f"${{paths.results}}/{c}" for cs in CURVES.values() for c in cs}
    for name, st in stages["stages"].items():
        for metrics in st.get("metrics") or []:
            path = next(iter(metrics))
            if path.endswith("/metrics.json"):
                details = path.replace("/metrics.json", "/details.json")
                assert {details: {"cache": False}} in st["outs"], f"{name}: declare {details} (cache: false)"
    grouped = [p for entry in stages["plots"] for p in entry.values()]
    assert {f for p in grouped for f in p["y"]} <= declared and all(p["x"] == "step" for p in grouped)


@pytest.mark.slow
def test_micro_run_curves_headlines_and_offline_plots(micro_repro, tmp_path):
    """On the micro run: each training stage's curves (expected columns, increasing steps, one row per
    log_every steps), a short metrics.json per stage, and `dvc plots show` drawing all of it offline."""
    results = micro_repro.repo / "results"
    ran = {}
    for curves in CURVES.values():
        for curve in curves:
            rows = list(csv.DictReader(io.StringIO((results / curve).read_text())))
            header = (results / curve).read_text().splitlines()[0].split(",")
            assert header[:2] == ["step", "loss"], curve
            steps = [int(r["step"]) for r in rows]
            assert steps == sorted(set(steps)), curve  # strictly increasing
            ran[curve] = (header, steps)
    # micro profile (conf/micro.yaml): 6 steps logged every 2; ALIT 4 every 2 then 2 every 1; TiTok has no
    # stage 2 (its curve is the header alone); CLIP: 2 epochs of 3 steps, logged every 10 from step 0
    assert ran["train_vqgan/curve.csv"][1] == [2, 4, 6] and ran["train_titok/curve_stage1.csv"][1] == [2, 4, 6]
    assert ran["train_alit/curve_stage1.csv"][1] == [2, 4] and ran["train_alit/curve_stage2.csv"][1] == [1, 2]
    assert ran["train_titok/curve_stage2.csv"] == (["step", "loss"], [])
    assert ran["train_clip/curve_objective.csv"] == (["step", "loss", "images_per_s"], [0])
    for curve in ("train_vqgan/curve.csv", "train_titok/curve_stage1.csv"):
        assert {"codebook/usage", "lr", "grad_norm", "images_per_s"} <= set(ran[curve][0]), curve

    for metrics in sorted(results.glob("*/metrics.json")):
        headline = json.loads(metrics.read_text())
        assert 0 < len(headline) <= HEADLINE_MAX, (metrics, headline)
        assert all(isinstance(v, int | float) for v in headline.values()), metrics  # flat scalars
    for metrics in sorted(results.glob("*/details.json")):
        assert metrics.with_name("metrics.json").is_file()

    copy = tmp_path / "repo"  # dvc writes its own state under .dvc/tmp: not in the shared run
    shutil.copytree(micro_repro.repo, copy, symlinks=True)
    shown = _dvc(["metrics", "show"], copy).stdout
    width = max(len(line) for line in shown.splitlines())
    print(f"dvc metrics show: {len(shown.splitlines())} lines, {width} characters wide")
    _dvc(["plots", "show", "-o", str(tmp_path / "plots")], copy)
    page = (tmp_path / "plots" / "index.html").read_text()
    _assert_offline(page)
    for curve in ("train_vqgan/curve.csv", "train_clip/curve_judge.csv", "train_alit/curve_stage2.csv"):
        assert f"vegaEmbed('#results_{curve.replace('/', '_').replace('.', '_')}'" in page, curve
    for grouped in ("codebook_usage", "images_per_s"):
        assert f"vegaEmbed('#{grouped}'" in page
