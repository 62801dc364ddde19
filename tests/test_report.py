"""The reviewer's report and `verify`: a micro DVC checkout with two trivial stages, then unit checks of
the status logic and of references/paper_numbers.yaml."""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest
import yaml
from conftest import ROOT, pipeline_env

from pipeline import dvcfile, profiles, tracking
from pipeline import params as params_mod
from pipeline.report import evaluate, references, render
from pipeline.report.document import to_html, to_markdown


def _png(value: int) -> bytes:
    """A valid 2x2 grey PNG (no matplotlib: the fake stages must start fast)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([value, value]) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


STAGE_A = """
import json, pathlib, sys
sys.path.insert(0, ".")
from tests_png import png
out = pathlib.Path("results/a")
(out / "figures").mkdir(parents=True, exist_ok=True)
(out / "figures" / "curve.png").write_bytes(png(40))
(out / "metrics.json").write_text(json.dumps({"score": 2.2, "num_images": 12, "stage_seconds": 0.5,
    "attrs": {"blur": {"ok": True, "top": 0.9}, "brightness": {"ok": False, "top": 0.1}},
    "protocol": {"score": {"samples": 12, "features": "clip:tiny", "pixels": "rendered"}}}))
"""

STAGE_B = """
import json, pathlib, sys
sys.path.insert(0, ".")
from tests_png import png
from pipeline.tracking import stage_run
out = pathlib.Path("results/b")
out.mkdir(parents=True, exist_ok=True)
with stage_run("make_b", {"x": 1}) as run:
    (out / "plot.png").write_bytes(png(200))
    (out / "metrics.json").write_text(json.dumps({"loss": 0.25}))
"""

DVC_YAML = """
stages:
  make_a:
    cmd: python make_a.py
    deps: [make_a.py]
    outs: [results/a/figures]
    metrics: [{results/a/metrics.json: {cache: false}}]
  make_b:
    cmd: python make_b.py
    deps: [make_b.py]
    outs: [results/b/plot.png]
    metrics: [{results/b/metrics.json: {cache: false}}]
  report:
    cmd: python -m pipeline report
    deps: [results/a/metrics.json, results/a/figures, results/b/metrics.json, results/b/plot.png,
           references/paper_numbers.yaml]
    outs: [results/report/report.md, results/report/report.html, results/report/report.json]
    metrics: [{results/report/summary.json: {cache: false}}]
"""

P12 = {"text": "12 images", "source": "Table 1 notes", "samples": 12, "features": "clip:tiny"}  # make_a's record
SCORE = {"stage": "make_a", "file": "a/metrics.json", "key": "score", "protocol": "protocol.score"}
REFERENCES = {
    "schema": 1,
    "experiments": [
        {"id": "alpha", "title": "Alpha (Someone, 2024)", "stages": ["make_a"], "numbers": [
            {"id": "a_within", "what": "score", "value": 2.0, "source": "Table 1", "protocol": P12,
             "tolerance": {"abs": 0.5}, "metric": SCORE},
            {"id": "a_outside", "what": "score", "value": 1.0, "source": "Table 1", "protocol": P12,
             "tolerance": {"rel": 0.1}, "better": "lower", "metric": SCORE},
            {"id": "a_unknown", "what": "score", "value": "unknown", "source": "Table 2", "protocol": P12,
             "metric": SCORE},
            {"id": "a_protocol", "what": "score at 50k", "value": 2.2, "source": "Table 1",
             "protocol": {**P12, "text": "50k", "samples": 50000, "features": "inception"},
             "tolerance": {"abs": 0.1}, "metric": SCORE},
            {"id": "a_requires", "what": "score of 13 images", "value": 2.2, "source": "Table 1", "protocol": P12,
             "tolerance": {"abs": 0.1}, "metric": SCORE, "comparable": {"requires": {"num_images": 13}}},
            {"id": "a_none", "what": "gFID", "value": 2.77, "source": "README",
             "protocol": {"text": "ADM", "source": "README", "samples": 50000}, "tolerance": {"abs": 0.3},
             "metric": None}]},
        {"id": "beta", "title": "Beta (Other, 2025)", "stages": ["make_b", "never_added"], "numbers": [
            {"id": "b_loss", "what": "loss", "value": 0.2, "source": "Fig. 3", "protocol": P12,
             "tolerance": {"abs": 0.01},
             "metric": {"stage": "make_b", "file": "b/metrics.json", "key": "loss", "protocol": "protocol.loss"}},
            {"id": "b_renamed", "what": "old key", "value": 1.0, "source": "Fig. 3", "protocol": P12,
             "tolerance": {"abs": 0.1},
             "metric": {"stage": "make_b", "file": "b/metrics.json", "key": "old", "protocol": "protocol"}},
            {"id": "b_notrun", "what": "later stage", "value": 3.0, "source": "Fig. 4", "protocol": P12,
             "tolerance": {"abs": 0.1},
             "metric": {"stage": "never_added", "file": "c/metrics.json", "key": "x", "protocol": "protocol"}}]},
    ],
    "ground_truth_checks": {"profiles": ["micro"], "checks": [
        {"id": "attrs_ok", "title": "Attributes found", "stage": "make_a", "file": "a/metrics.json",
         "key": "attrs.*.ok", "expect": {"op": "==", "value": True}, "show": {"top": "attrs.*.top"}},
        {"id": "later", "title": "Later stage", "stage": "never_added", "file": "c/metrics.json", "key": "y",
         "expect": {"op": ">", "value": 0}}]},
}


def _run(args, cwd, check=True):
    env = pipeline_env(cwd)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, args))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished micro checkout: two trivial stages and the report, run by `dvc repro`."""
    repo = tmp_path_factory.mktemp("checkout")
    (repo / "tests_png.py").write_text(f"import struct, zlib\n{textwrap.dedent(_png_source())}\npng = _png\n")
    (repo / "make_a.py").write_text(STAGE_A)
    (repo / "make_b.py").write_text(STAGE_B)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "references").mkdir()
    (repo / "references" / "paper_numbers.yaml").write_text(yaml.safe_dump(REFERENCES, sort_keys=False))
    (repo / "params.yaml").write_text(profiles.dump(params_mod.validate(profiles.resolve_profile("micro"))))
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n__pycache__/\n")
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "micro"], repo)
    _run(["dvc", "repro"], repo)
    return repo


def _png_source() -> str:
    import inspect

    return inspect.getsource(_png)


def test_report_has_every_section(finished):
    md = (finished / "results/report/report.md").read_text()
    for section in ("# Reproduction report", "## Summary", "## Alpha (Someone, 2024)", "## Beta (Other, 2025)",
                    "### Reproduced vs paper", "Sources and protocols:", "### Figures", "## Demo ground-truth checks",
                    "## Provenance", "### Stages", "### Outputs cited (hash as recorded in dvc.lock)"):
        assert section in md, section
    # the checks apply at this profile (micro): they come first, above the paper tables
    assert md.index("## Demo ground-truth checks") < md.index("## Alpha (Someone, 2024)")
    lock = yaml.safe_load((finished / "dvc.lock").read_text())["stages"]
    for stage in ("make_a", "make_b"):
        for out in lock[stage]["outs"]:
            assert f"| {out['path']} | {out['md5']} |" in md  # every output with its dvc.lock md5
    assert "![results/a/figures/curve.png](../a/figures/curve.png)" in md
    assert "Stages not in dvc.yaml: never_added." in md
    commit = _run(["git", "rev-parse", "HEAD"], finished).stdout.strip()
    assert commit in md
    assert "profile: `micro`" in md

    rows = {line.split("`")[1]: line for line in md.splitlines() if line.startswith("| `")}
    assert "within tolerance" in rows["a_within"]
    assert "outside tolerance (worse than the paper)" in rows["a_outside"]
    assert "| unknown |" in rows["a_unknown"] and "unknown paper value" in rows["a_unknown"]
    assert "| not comparable (samples 12 vs 50000; features clip:tiny vs inception) |" in rows["a_protocol"]
    assert "| not comparable (num_images 12 vs 13) |" in rows["a_requires"]
    assert "not measured by this pipeline" in rows["a_none"]
    # metrics written before the stage recorded its protocol: never compared
    assert "| not comparable (protocol unknown: protocol.loss not recorded in b/metrics.json) |" in rows["b_loss"]
    assert "metric not in metrics file" in rows["b_renamed"]
    assert "stage not run" in rows["b_notrun"]
    assert "| pass |" in rows["attrs_ok[blur]"] and "| fail |" in rows["attrs_ok[brightness]"]
    assert "stage not run" in rows["later"]

    # wall time and MLflow run id per stage
    stage_table = md.split("### Stages")[1].split("### Outputs cited")[0]
    stages = {line.split(" | ")[0][2:]: line for line in stage_table.splitlines() if line.startswith("| make_")}
    assert "| 0.5 |" in stages["make_a"] and "not recorded" in stages["make_a"]
    data = json.loads((finished / "results/report/report.json").read_text())
    run_b = next(s for s in data["provenance"]["stages"] if s["stage"] == "make_b")
    assert 0 < run_b["seconds"] < 60 and len(run_b["mlflow_run_id"]) == 32  # stage_run's wall time
    assert run_b["mlflow_run_id"] in stages["make_b"]

    page = (finished / "results/report/report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 2
    assert page.index("<h2>Demo ground-truth checks</h2>") < page.index("<h2>Alpha (Someone, 2024)</h2>")
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "unknown paper value" in page

    # the sources say which protocol each value followed and how it compares
    bullets = {line.split("`")[1]: line for line in md.splitlines() if line.startswith("- `")}
    assert ("Paper's protocol parts: samples 12; features clip:tiny (source of the protocol: Table 1 notes). "
            "This run (results/a/metrics.json: protocol.score): samples 12; features clip:tiny; pixels rendered. "
            "Matches every part the paper's declares.") in bullets["a_within"]
    assert "Differs from the paper's in: samples 12 vs 50000; features clip:tiny vs inception." in bullets["a_protocol"]
    assert "This run: protocol unknown (protocol.loss not recorded in results/b/metrics.json)." in bullets["b_loss"]
    assert bullets["a_none"].endswith("Paper's protocol parts: samples 50000 (source of the protocol: README).")

    summary = json.loads((finished / "results/report/summary.json").read_text())
    assert summary["numbers"]["within"] == 1 and summary["numbers"]["outside"] == 1
    assert summary["numbers"]["not_comparable"] == 3
    assert summary["numbers"]["unknown"] == 1 and summary["ground_truth"]["pass"] == 1
    assert set(summary) == {"numbers", "ground_truth"}  # the headline: the values are in report.json
    assert "Data and pipelines are up to date." in _run(["dvc", "status"], finished).stdout


def test_report_names_the_run_behind_dvc_lock(finished, monkeypatch):
    """A later run of a stage whose outputs were not committed to dvc.lock is not the one cited."""
    from pipeline.tracking import stage_run

    monkeypatch.chdir(finished)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{finished / 'mlflow.db'}")
    lock_outs, _ = dvcfile.read_lock(finished, without="report")
    locked, _ = tracking.runs_matching_lock(["make_b"], lock_outs)
    assert locked["make_b"]["matched"] and locked["make_b"]["run_id"]

    metrics = finished / "results/b/metrics.json"
    original = metrics.read_bytes()
    try:
        with stage_run("make_b", {"x": 2}):  # a trial run with other parameters, never locked
            metrics.write_text(json.dumps({"loss": 0.5}))
    finally:
        metrics.write_bytes(original)
    again, _ = tracking.runs_matching_lock(["make_b"], lock_outs)
    assert again["make_b"]["run_id"] == locked["make_b"]["run_id"]

    stale = {"make_b": {k: "0" * 32 for k in lock_outs["make_b"]}}
    none, _ = tracking.runs_matching_lock(["make_b"], stale)
    assert none["make_b"]["run_id"] is None and not none["make_b"]["matched"]
    row = render._stage_row({"stage": "make_b", "seconds": None, "mlflow_run_id": None, "mlflow_matched": False,
                             "host": None, "in_lock": True}, "n/a")
    assert "no run matches dvc.lock" in row


def test_report_is_deterministic(finished, monkeypatch):
    """Built again later in another process, everything but the provenance is byte-identical."""
    monkeypatch.setattr(evaluate, "runs_matching_lock", lambda stages, lock: ({}, "not recorded (test)"))
    monkeypatch.setattr(evaluate, "hardware", lambda: {})
    monkeypatch.chdir(finished)
    data = evaluate.build(finished)
    again = to_markdown(render.document(data, finished, finished / "results/report"))
    written = (finished / "results/report/report.md").read_text()
    assert again.split("## Provenance")[0] == written.split("## Provenance")[0]
    assert evaluate.summary(data) == json.loads((finished / "results/report/summary.json").read_text())


def test_verify_passes_then_catches_tampering(finished, tmp_path, capsys):
    from pipeline import verify

    ok = _run([sys.executable, "-m", "pipeline.verify"], finished)
    assert "verify: every cited output matches" in ok.stdout

    repo = tmp_path / "tampered"
    shutil.copytree(finished, repo, symlinks=True)
    metrics = repo / "results/a/metrics.json"
    metrics.write_text(metrics.read_text().replace("2.2", "2.3"))
    bad = _run([sys.executable, "-m", "pipeline.verify"], repo, check=False)
    assert bad.returncode == 1
    assert "MISMATCH results/a/metrics.json: content md5" in bad.stdout
    assert "MISMATCH results/a/metrics.json: score is 2.3, the report shows 2.2" in bad.stdout

    shutil.copy2(finished / "results/a/metrics.json", metrics)
    (repo / "results/a/figures/curve.png").write_bytes(_png(41))
    assert verify.main(repo) == 1
    out = capsys.readouterr().out
    assert "MISMATCH results/a/figures: content md5" in out
    assert "MISMATCH results/a/figures/curve.png: figure md5" in out

    shutil.copy2(finished / "results/a/figures/curve.png", repo / "results/a/figures/curve.png")
    md = repo / "results/report/report.md"
    md.write_text(md.read_text().replace("| 2.2 |", "| 1.9 |", 1))
    assert verify.main(repo) == 1
    assert "results/report/report.md: row a_within does not show score = 2.2" in capsys.readouterr().out

    (repo / "results/report/report.md").unlink()
    (repo / "results/b/plot.png").unlink()
    assert verify.main(repo) == 1
    out = capsys.readouterr().out
    assert "MISMATCH results/b/plot.png: missing (stage make_b)" in out


def test_verify_catches_an_edited_document_and_a_forged_verdict(finished, tmp_path, capsys):
    from pipeline import verify

    repo = tmp_path / "edited"
    shutil.copytree(finished, repo, symlinks=True)
    html = repo / "results/report/report.html"
    html.write_text(html.read_text().replace("Reproduction report</h1>", "Reproduction report (all good)</h1>"))
    assert verify.main(repo) == 1
    assert "MISMATCH results/report/report.html: differs from what report.json renders to" in capsys.readouterr().out

    shutil.copy2(finished / "results/report/report.html", html)
    data_path = repo / "results/report/report.json"
    data = json.loads(data_path.read_text())
    row = next(r for e in data["experiments"] for r in e["rows"] if r["id"] == "a_outside")
    assert row["status"] == "outside"
    row["status"] = "within"  # a forged verdict, documents re-rendered to match it
    data_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    out_dir = repo / "results/report"
    document = render.document(data, repo, out_dir)
    (out_dir / "report.md").write_text(to_markdown(document))
    html.write_text(to_html(document))
    (out_dir / "summary.json").write_text(json.dumps(evaluate.summary(data), indent=2, sort_keys=True) + "\n")
    monkey_cwd = os.getcwd()
    try:
        os.chdir(repo)
        assert verify.main(repo) == 1
    finally:
        os.chdir(monkey_cwd)
    out = capsys.readouterr().out
    assert "row a_outside says within, recomputed from the metrics and paper numbers: a_outside outside" in out


# --- unit checks -------------------------------------------------------------------------------------


# The paper's protocol of the unit checks, and a run's record that matches it part for part.
PAPER = {"samples": 50000, "train_samples": 1281167, "reference": "same images",
         "dataset": "imagenet val, 1000 classes", "image_size": 256, "crop": "center", "uint8": "round",
         "features": "inception"}
RUN = {"samples": 300, "train_samples": 600, "reference": "adm:VIRTUAL_imagenet256_labeled.npz",
       "dataset": "demo val, 10 classes", "image_size": 64, "crop": "none", "uint8": "none",
       "features": "clip:clip_judge_demo"}  # every part different


def _entry(value, tolerance=None, protocol=None, **kw):
    parts = {"samples": 50000} if protocol is None else protocol
    return references.Number.model_validate(
        {"id": "x", "what": "w", "value": value, "source": "s", "protocol": {"text": "p", "source": "ps", **parts},
         "tolerance": tolerance,
         "metric": {"stage": "s", "file": "s/metrics.json", "key": "m.fid", "protocol": "protocol",
                    **kw.pop("metric", {})}, **kw})


def _metrics(tmp_path, metrics: dict) -> None:
    (tmp_path / "s").mkdir(exist_ok=True)
    (tmp_path / "s/metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize(("measured", "paper", "tolerance", "status"), [
    (2.30, 2.21, {"abs": 0.25}, "within"),
    (2.46, 2.21, {"abs": 0.25}, "within"),
    (2.47, 2.21, {"abs": 0.25}, "outside"),
    (1.90, 2.21, {"abs": 0.25}, "outside"),
    (9.0, 8.2, {"rel": 0.15}, "within"),
    (9.5, 8.2, {"rel": 0.15}, "outside"),
])
def test_status_against_tolerance(tmp_path, measured, paper, tolerance, status):
    _metrics(tmp_path, {"m": {"fid": measured}, "protocol": {"samples": 50000}})
    row = evaluate.evaluate_number(_entry(paper, tolerance, better="lower"), tmp_path, {})
    assert row["status"] == status and row["reproduced"] == measured
    if status == "outside":
        assert row["reason"] == ("worse than the paper" if measured > paper else "better than the paper")


def test_a_matching_protocol_is_comparable(tmp_path):
    """Every part the paper declares, recorded alike by the run: the value is compared with the paper's."""
    _metrics(tmp_path, {"m": {"fid": 2.3}, "protocol": {**PAPER, "pixels": "full JPEG decode, stored as png"}})
    row = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, protocol=PAPER), tmp_path, {})
    assert row["status"] == "within" and row["protocol_differences"] == [] and row["reason"] == ""
    assert "Matches every part the paper's declares" in render.protocol_text(row | {"metric": {
        **row["metric"], "path": "results/s/metrics.json"}})
    # a part the paper does not declare is not compared (only the declared ones are)
    only_samples = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}), tmp_path, {})
    assert only_samples["status"] == "within"


@pytest.mark.parametrize("part", references.PROTOCOL_PARTS)
def test_each_differing_part_of_the_protocol_is_named(tmp_path, part):
    _metrics(tmp_path, {"m": {"fid": 2.3}, "protocol": {**PAPER, part: RUN[part]}})
    row = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, protocol=PAPER), tmp_path, {})
    assert row["status"] == "not_comparable" and row["value"] == 2.3  # the value is shown, not compared
    assert row["reason"] == f"{part} {evaluate.fmt(RUN[part])} vs {evaluate.fmt(PAPER[part])}"
    assert render._status_text(row) == f"not comparable ({row['reason']})"


def test_every_differing_part_is_named_at_once(tmp_path):
    _metrics(tmp_path, {"m": {"fid": 41.7}, "protocol": RUN})
    row = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, protocol=PAPER), tmp_path, {})
    assert row["status"] == "not_comparable"
    assert row["reason"] == ("samples 300 vs 50000; train_samples 600 vs 1281167; reference "
                             "adm:VIRTUAL_imagenet256_labeled.npz vs same images; dataset demo val, 10 classes vs "
                             "imagenet val, 1000 classes; image_size 64 vs 256; crop none vs center; uint8 none vs "
                             "round; features clip:clip_judge_demo vs inception")


def test_an_unrecorded_or_unknown_part_is_never_comparable(tmp_path):
    _metrics(tmp_path, {"m": {"fid": 2.3}, "protocol": {k: v for k, v in PAPER.items() if k != "crop"}})
    row = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, protocol=PAPER), tmp_path, {})
    assert row["status"] == "not_comparable" and row["reason"] == "crop not recorded vs center"
    _metrics(tmp_path, {"m": {"fid": 2.3}, "protocol": PAPER})
    unknown = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, protocol={**PAPER, "samples": "unknown"}),
                                       tmp_path, {})
    assert unknown["status"] == "not_comparable" and unknown["reason"] == "samples 50000 vs unknown"
    _metrics(tmp_path, {"m": {"fid": 2.3}})  # metrics written before the stage recorded a protocol
    none = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}), tmp_path, {})
    assert none["status"] == "not_comparable" and none["run_protocol"] is None
    assert none["reason"] == "protocol unknown: protocol not recorded in s/metrics.json"


def test_status_scale_requires_and_unknown(tmp_path):
    _metrics(tmp_path, {"m": {"fid": 0.556}, "init": "random", "protocol": {"samples": 50000}})
    scaled = _entry(55.6, {"abs": 0.5}, metric={"scale": 100})
    row = evaluate.evaluate_number(scaled, tmp_path, {})
    assert row["status"] == "within" and row["reproduced"] == pytest.approx(55.6)
    needs = _entry(55.6, {"abs": 0.5}, metric={"scale": 100}, comparable={"requires": {"init": "seed"}})
    row = evaluate.evaluate_number(needs, tmp_path, {})
    assert row["status"] == "not_comparable" and row["reason"] == "init random vs seed"
    unknown = evaluate.evaluate_number(_entry("unknown"), tmp_path, {})
    assert unknown["status"] == "unknown" and unknown["value"] == 0.556
    assert unknown["protocol_differences"] == []  # shown beside the unknown value
    assert render._paper_text(unknown) == "unknown"
    missing = evaluate.evaluate_number(_entry("unknown"), tmp_path / "nowhere", {})
    assert missing["status"] == "unknown" and missing["reason"].startswith("stage not run")


def test_a_row_shows_only_what_the_run_measured_with_its_feature_space_and_chance(tmp_path):
    _metrics(tmp_path, {"m": {"fid": 41.7, "top1": 0.11}, "num_tokens": 32, "feature_space": "clip-demo",
                        "chance": 0.1, "protocol": {"samples": 300}})
    other = evaluate.evaluate_number(_entry(1.70, {"abs": 0.25}, measures={"num_tokens": 64}), tmp_path, {})
    assert other["status"] == "not_measured" and other["value"] is None  # another tokenizer's row: no value
    assert "this run measured num_tokens = 32" in other["reason"] and render._reproduced_text(other) == "n/a"
    older = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, measures={"num_tokens": 32, "legacy": True}),
                                     tmp_path, {})  # metrics written before the stage recorded `legacy`
    assert older["status"] == "not_measured" and older["value"] is None
    assert older["reason"] == "this run did not record legacy; this row is about legacy = true"
    same = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, measures={"num_tokens": 32},
                                           metric={"space": "feature_space"}), tmp_path, {})
    assert same["value"] == 41.7 and render._reproduced_text(same) == "41.7, in clip-demo features"
    assert same["status"] == "not_comparable" and same["reason"] == "samples 300 vs 50000"
    probe = evaluate.evaluate_number(_entry(55.6, {"abs": 3.0}, metric={"key": "m.top1", "chance": "chance"}),
                                     tmp_path, {})
    assert render.at_chance(probe) and "AT CHANCE (0.1)" in render._reproduced_text(probe)
    from_params = evaluate.evaluate_number(_entry(9.0, {"rel": 0.1}, metric={"space": "fid.feature_space"}), tmp_path,
                                           {"fid": {"feature_space": "inception"}})
    assert render._reproduced_text(from_params).endswith("in inception features")


def test_every_metric_key_of_the_references_is_read_by_at_most_one_row():
    refs = references.load_references(ROOT / references.REFERENCES)
    keys = [(n.metric.file, n.metric.key, json.dumps(n.measures, sort_keys=True),
             json.dumps(n.comparable.requires, sort_keys=True))
            for e in refs.experiments for n in e.numbers if n.metric]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]


def test_reference_numbers_file():
    refs = references.load_references(ROOT / references.REFERENCES)
    numbers = {n.id: n for e in refs.experiments for n in e.numbers}
    assert numbers["titok_l32_rfid"].value == 2.21 and numbers["titok_b64_rfid"].value == 1.70
    assert numbers["titok_s128_rfid"].value == 1.71 and numbers["titok_l32_gfid"].value == 2.77
    assert numbers["tokenopt_seed_fid"].value == "unknown"
    # issue 18's numbers: the generation table's B-64 IS, L-32 without guidance (Table 5), the README's
    # single-stage tokenizers, MaskGIT-VQGAN (maintainer, issue 5), each once
    assert numbers["titok_b64_is"].value == 214.7 and numbers["titok_l32_gfid_no_guidance"].value == 3.15
    single_stage = {"titok_bl64_vq_rfid": 2.06, "titok_bl128_vq_rfid": 1.49, "titok_sl256_vq_rfid": 1.03,
                    "titok_ll32_vae_rfid": 1.61, "titok_bl64_vae_rfid": 1.25, "titok_bl128_vae_rfid": 0.84}
    assert {k: numbers[k].value for k in single_stage} == single_stage
    assert [n.id for n in numbers.values() if n.value == 2.28] == ["maskgit_vqgan_rfid"]
    assert "issues/5" in numbers["maskgit_vqgan_rfid"].source and "Table 5" in numbers[
        "titok_l32_gfid_no_guidance"].source
    for n in numbers.values():
        assert n.source and n.protocol.text and n.protocol.source
        assert n.value == "unknown" or n.tolerance, n.id
    # the official protocols: 50k val images for rFID, ADM's reference batch and 50k samples for gFID
    rfid, gfid = numbers["titok_l32_rfid"].protocol.parts(), numbers["titok_l32_gfid"].protocol.parts()
    assert rfid == {"samples": 50000, "reference": "same images", "dataset": "imagenet val, 1000 classes",
                    "image_size": 256, "crop": "center", "uint8": "round", "features": "inception"}
    assert gfid == {"samples": 50000, "reference": "adm:VIRTUAL_imagenet256_labeled.npz", "image_size": 256,
                    "features": "inception"}
    assert numbers["alit_in100_fid_32"].protocol.crop == "center-no-resize"


def test_the_stages_record_their_protocol_in_the_references_words():
    """What the measuring stages write (fid.fidelity_protocol, shards.image_protocol) uses the words the
    references declare, so a run that follows the paper's protocol can match it."""
    from typing import get_args

    from pipeline.data.shards import image_protocol
    from pipeline.metrics.fid import FeatureSpace, fidelity_protocol

    imagenet = {"source": "imagenet_folder", "image_size": 256, "image_format": "png",
                "params": {"jpeg_draft": False, "jpeg_quality": 95}, "classes": [{}] * 1000}
    space = FeatureSpace("inception-v3-local", "2048", "logits_unbiased", label="inception")
    run = fidelity_protocol(space, 50000, "same images") | image_protocol(imagenet, "val")
    paper = references.load_references(ROOT / references.REFERENCES)
    titok = next(n for e in paper.experiments for n in e.numbers if n.id == "titok_l32_rfid")
    assert evaluate.protocol_differences(titok.protocol, run) == []
    assert run["pixels"] == "full JPEG decode, stored as png"
    demo = image_protocol({"source": "demo", "image_size": 64, "image_format": "png", "params": {},
                           "classes": [{}] * 10}, "val")
    assert demo["dataset"] == "demo val, 10 classes" and demo["crop"] == "none"
    assert image_protocol(imagenet, None)["dataset"] == "imagenet, 1000 classes"
    assert {run["crop"], demo["crop"]} <= set(get_args(references.Crop))
    assert run["uint8"] in get_args(references.Uint8)


def _references_error(tmp_path, refs: dict) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(refs))
    with pytest.raises(references.ReferencesError) as err:
        references.load_references(path)
    return str(err.value)


def test_references_reject_bad_entries(tmp_path):
    bad = {"experiments": [{"id": "e", "title": "t", "numbers": [
        {"id": "n", "what": "w", "value": 2.0, "source": "s", "protocol": {"text": "p", "source": "ps"}}]}]}
    assert f"{tmp_path / 'r.yaml'}: experiments.e.numbers.n: tolerance: missing" in _references_error(tmp_path, bad)
    number = bad["experiments"][0]["numbers"][0]
    number.update(tolerance={"abs": 1}, metric={"stage": "s", "file": "f.json", "key": "k"})
    assert "experiments.e.numbers.n: protocol: declares none of samples" in _references_error(tmp_path, bad)
    number["protocol"] = {"text": "p", "source": "ps", "samples": 50000, "crop": "centre"}
    assert ("experiments.e.numbers.n.protocol.crop: expected 'center', 'center-no-resize', 'none' or 'unknown', "
            "found 'centre'") in _references_error(tmp_path, bad)
    number["protocol"]["crop"] = "center"
    assert "experiments.e.numbers.n: metric.protocol: missing" in _references_error(tmp_path, bad)
    number["protocol"]["samples"] = "50k"
    assert ("experiments.e.numbers.n.protocol.samples: expected a positive integer or 'unknown', found '50k'"
            in _references_error(tmp_path, bad))
    number["protocol"] = "50k val images"  # the old prose-only protocol
    assert "experiments.e.numbers.n.protocol: " in _references_error(tmp_path, bad)
    del number["metric"]
    number["protocol"] = {"text": "p", "source": "ps"}
    number.pop("tolerance")
    bad["experiments"][0]["numbers"][0].update(value="about 2", tolerance={"abs": 1})
    assert ("experiments.e.numbers.n.value: expected a number or 'unknown', found 'about 2' (str)"
            in _references_error(tmp_path, bad))
    bad["experiments"][0]["numbers"][0].update(value=2.0, tolerance={"abs": 1, "rel": 0.1})
    assert "experiments.e.numbers.n.tolerance: expected exactly one of" in _references_error(tmp_path, bad)
    bad["experiments"][0]["numbers"][0]["tolerance"] = {"abs": 1}
    bad["experiments"].append({"id": "f", "title": "t", "numbers": bad["experiments"][0]["numbers"]})
    assert "experiments: number id 'n' is used twice (in e and f)" in _references_error(tmp_path, bad)


def test_references_errors_name_the_file_and_the_key(tmp_path):
    """A misspelt key or a value of the wrong type stops the report with the file and the dotted key, as
    params.yaml's errors do; list items are named by their id."""
    path = tmp_path / "r.yaml"
    refs = yaml.safe_load((ROOT / references.REFERENCES).read_text())
    refs["experiments"][0]["numbers"][0]["tolerence"] = {"abs": 0.25}
    refs["experiments"][0]["numbers"][1]["metric"]["scale"] = "ten"
    refs["ground_truth_checks"]["checks"][0]["expect"]["op"] = "=>"
    lines = _references_error(tmp_path, refs).splitlines()
    assert lines == [
        f"{path}: experiments.titok.numbers.titok_l32_rfid.tolerence: unknown key (allowed here: id, what, value, "
        "unit, source, protocol, tolerance, better, metric, measures, comparable)",
        f"{path}: experiments.titok.numbers.titok_b64_rfid.metric.scale: expected a number, found 'ten' (str)",
        f"{path}: ground_truth_checks.checks.clip_zero_shot.expect.op: expected one of ==, >, >=, <, <=, "
        "found '=>'"]
    refs = {"schema": 1, "experiments": [{"id": "e", "title": 3, "numbers": []}], "extra": True}
    lines = _references_error(tmp_path, refs).splitlines()
    assert lines[0] == f"{path}: experiments.e.title: expected a valid string, found 3 (int)"
    assert lines[1].startswith(f"{path}: experiments.e.numbers: expected List should have at least 1 item")
    assert lines[2] == f"{path}: extra: unknown key (allowed here: schema, experiments, ground_truth_checks)"


def test_the_report_stage_stops_on_invalid_references_with_the_error(finished, tmp_path):
    repo = tmp_path / "broken"
    shutil.copytree(finished, repo, symlinks=True)
    path = repo / "references/paper_numbers.yaml"
    refs = yaml.safe_load(path.read_text())
    refs["experiments"][0]["numbers"][3]["valeu"] = 3
    path.write_text(yaml.safe_dump(refs))
    proc = _run([sys.executable, "-m", "pipeline", "report"], repo, check=False)
    assert proc.returncode == 2
    assert "experiments.alpha.numbers.a_protocol.valeu: unknown key" in proc.stderr


def test_report_warns_when_params_yaml_did_not_produce_the_outputs(tmp_path):
    """After `configure paper` without a rerun, the report and verify must not describe demo outputs as paper."""
    lock = {"schema": "2.0", "stages": {
        "train": {"cmd": "x", "params": {"params.yaml": {"image_size": 64, "train": {"steps": 10, "lr": "3e-05"}}}},
        "report": {"cmd": "y", "params": {"params.yaml": {"profile": "demo"}}}}}
    # as DVC writes it: 3e-05 without a dot (PyYAML would read it as a string, DVC as a float)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock).replace("'3e-05'", "3e-05"))
    same = {"profile": "demo", "image_size": 64, "train": {"steps": 10, "lr": 3e-05}}  # DVC's 3e-05 is a float
    assert dvcfile.lock_param_mismatches(tmp_path, same, "report") == []
    paper = {"profile": "paper", "image_size": 256, "train": {"steps": 10, "lr": 3e-05}}  # not the report's own
    assert dvcfile.lock_param_mismatches(tmp_path, paper, "report") == [
        "train: image_size: dvc.lock 64, params.yaml 256"]
    gone = dvcfile.lock_param_mismatches(tmp_path, {"profile": "demo", "image_size": 64}, "report")
    assert gone == ['train: train: dvc.lock {"lr": 3e-05, "steps": 10}, params.yaml missing']

    data = {"profile": "paper", "params_mismatches": ["train: image_size: dvc.lock 64, params.yaml 256"],
            "experiments": [], "ground_truth": {"profiles": ["demo"], "rows": []},
            "provenance": {"git_commit": "c", "dvc_lock_sha256": "h", "dvc_lock_hash_note": "n", "profile": "paper",
                           "params_sha256": "p", "references_sha256": "r", "mlflow": "m", "hardware": {},
                           "stages": [], "outputs": []}}
    document = render.document(data, tmp_path, tmp_path)
    md = to_markdown(document)
    assert md.index("Warning: the outputs were not produced by params.yaml") < md.index("## Summary")
    assert "- train: image_size: dvc.lock 64, params.yaml 256" in md
    assert "Warning: the outputs were not produced by params.yaml" in to_html(document)


def test_report_shows_the_spread_of_a_seed_sweep_of_this_checkout(finished, tmp_path, monkeypatch):
    """A sweep summary whose experiments ran this dvc.lock's params and code: mean ± std beside the number and
    the experiments named; one of other params: not shown, and the param named."""
    from pipeline import sweep

    repo = tmp_path / "repo"
    shutil.copytree(finished, repo)
    monkeypatch.setattr(evaluate, "runs_matching_lock", lambda stages, lock: ({}, "not recorded (test)"))
    monkeypatch.chdir(repo)
    lock = dvcfile.load_lock(repo)

    def write_summary(lock: dict) -> None:
        exps = [sweep.Experiment(f"sweep-t-seed{s}", s, f"{s:040d}", "b" * 40, lock, f"{s:064d}",
                                 {"results/a/metrics.json": {"score": 2.0 + s}}) for s in (0, 1, 2)]
        summary = sweep.summarise("t", exps, ["make_a"], {"make_a": ["results/a/metrics.json"]})
        (repo / "results/sweep").mkdir(parents=True, exist_ok=True)
        (repo / "results/sweep/summary.json").write_text(json.dumps(summary))

    write_summary(lock)
    data = evaluate.build(repo)
    md = to_markdown(render.document(data, repo, repo / "results/report"))
    assert "run of seed **0**" in md and "`sweep-t-seed2` seed 2" in md
    (row,) = [r for e in data["experiments"] for r in e["rows"] if r["id"] == "a_within"]
    assert row["spread"] == {"mean": 3.0, "std": 1.0, "min": 2.0, "max": 4.0, "n": 3}
    assert "2.2; seeds: mean 3 ± 1 (n 3, 2 to 4)" in md

    other = json.loads(json.dumps(lock))
    other["stages"]["make_a"]["deps"][0]["md5"] = "0" * 32  # make_a.py edited since the sweep
    write_summary(other)
    data = evaluate.build(repo)
    md = to_markdown(render.document(data, repo, repo / "results/report"))
    assert data["sweep"]["status"] == "other" and "seeds: mean" not in md
    assert "Seed sweep not shown" in md and "make_a: dep make_a.py" in md
