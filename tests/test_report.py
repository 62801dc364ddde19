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

from pipeline import dvcfile, tracking
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
    "attrs": {"blur": {"ok": True, "top": 0.9}, "brightness": {"ok": False, "top": 0.1}}}))
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

REFERENCES = {
    "schema": 1,
    "comparable_profiles": ["micro"],
    "experiments": [
        {"id": "alpha", "title": "Alpha (Someone, 2024)", "stages": ["make_a"], "numbers": [
            {"id": "a_within", "what": "score", "value": 2.0, "source": "Table 1", "protocol": "p",
             "tolerance": {"abs": 0.5}, "metric": {"stage": "make_a", "file": "a/metrics.json", "key": "score"}},
            {"id": "a_outside", "what": "score", "value": 1.0, "source": "Table 1", "protocol": "p",
             "tolerance": {"rel": 0.1}, "better": "lower",
             "metric": {"stage": "make_a", "file": "a/metrics.json", "key": "score"}},
            {"id": "a_unknown", "what": "score", "value": "unknown", "source": "Table 2", "protocol": "p",
             "metric": {"stage": "make_a", "file": "a/metrics.json", "key": "score"}},
            {"id": "a_protocol", "what": "score at 50k", "value": 2.2, "source": "Table 1", "protocol": "50k",
             "tolerance": {"abs": 0.1}, "metric": {"stage": "make_a", "file": "a/metrics.json", "key": "score"},
             "comparable": {"requires": {"num_images": 50000}}},
            {"id": "a_none", "what": "gFID", "value": 2.77, "source": "README", "protocol": "ADM",
             "tolerance": {"abs": 0.3}, "metric": None}]},
        {"id": "beta", "title": "Beta (Other, 2025)", "stages": ["make_b", "never_added"], "numbers": [
            {"id": "b_loss", "what": "loss", "value": 0.2, "source": "Fig. 3", "protocol": "q",
             "tolerance": {"abs": 0.01}, "metric": {"stage": "make_b", "file": "b/metrics.json", "key": "loss"},
             "comparable": {"profiles": ["paper"]}},
            {"id": "b_renamed", "what": "old key", "value": 1.0, "source": "Fig. 3", "protocol": "q",
             "tolerance": {"abs": 0.1}, "metric": {"stage": "make_b", "file": "b/metrics.json", "key": "old"}},
            {"id": "b_notrun", "what": "later stage", "value": 3.0, "source": "Fig. 4", "protocol": "q",
             "tolerance": {"abs": 0.1}, "metric": {"stage": "never_added", "file": "c/metrics.json", "key": "x"}}]},
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
    (repo / "params.yaml").write_text(params_mod.dump(params_mod.validate(params_mod.resolve_profile("micro"))))
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
    assert "not comparable at this profile (metrics num_images is 12" in rows["a_protocol"]
    assert "not measured by this pipeline" in rows["a_none"]
    assert "not comparable at this profile (profile micro" in rows["b_loss"]
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

    summary = json.loads((finished / "results/report/summary.json").read_text())
    assert summary["numbers"]["within"] == 1 and summary["numbers"]["outside"] == 1
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


def _entry(value, tolerance=None, **kw):
    return references.Number.model_validate(
        {"id": "x", "what": "w", "value": value, "source": "s", "protocol": "p", "tolerance": tolerance,
         "metric": {"stage": "s", "file": "s/metrics.json", "key": "m.fid", **kw.pop("metric", {})}, **kw})


@pytest.mark.parametrize(("measured", "paper", "tolerance", "status"), [
    (2.30, 2.21, {"abs": 0.25}, "within"),
    (2.46, 2.21, {"abs": 0.25}, "within"),
    (2.47, 2.21, {"abs": 0.25}, "outside"),
    (1.90, 2.21, {"abs": 0.25}, "outside"),
    (9.0, 8.2, {"rel": 0.15}, "within"),
    (9.5, 8.2, {"rel": 0.15}, "outside"),
])
def test_status_against_tolerance(tmp_path, measured, paper, tolerance, status):
    (tmp_path / "s").mkdir()
    (tmp_path / "s/metrics.json").write_text(json.dumps({"m": {"fid": measured}}))
    row = evaluate.evaluate_number(_entry(paper, tolerance, better="lower"), tmp_path, "paper", {}, ["paper"])
    assert row["status"] == status and row["reproduced"] == measured
    if status == "outside":
        assert row["reason"] == ("worse than the paper" if measured > paper else "better than the paper")


def test_status_scale_profile_params_and_unknown(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s/metrics.json").write_text(json.dumps({"m": {"fid": 0.556}}))
    scaled = _entry(55.6, {"abs": 0.5}, metric={"scale": 100})
    assert evaluate.evaluate_number(scaled, tmp_path, "paper", {}, ["paper"])["status"] == "within"
    demo = evaluate.evaluate_number(scaled, tmp_path, "demo", {}, ["paper"])
    assert demo["status"] == "not_comparable" and demo["reproduced"] == pytest.approx(55.6)
    needs = _entry(55.6, {"abs": 0.5}, metric={"scale": 100}, comparable={"params": {"image_size": 256}})
    row = evaluate.evaluate_number(needs, tmp_path, "paper", {"image_size": 64}, ["paper"])
    assert row["status"] == "not_comparable" and "params.yaml image_size is 64" in row["reason"]
    unknown = evaluate.evaluate_number(_entry("unknown"), tmp_path, "paper", {}, ["paper"])
    assert unknown["status"] == "unknown" and unknown["value"] == 0.556
    assert render._paper_text(unknown) == "unknown"
    missing = evaluate.evaluate_number(_entry("unknown"), tmp_path / "nowhere", "paper", {}, ["paper"])
    assert missing["status"] == "unknown" and missing["reason"].startswith("stage not run")


def test_a_row_shows_only_what_the_run_measured_with_its_feature_space_and_chance(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s/metrics.json").write_text(json.dumps(
        {"m": {"fid": 41.7, "top1": 0.11}, "num_tokens": 32, "feature_space": "clip-demo", "chance": 0.1}))
    other = evaluate.evaluate_number(_entry(1.70, {"abs": 0.25}, measures={"num_tokens": 64}), tmp_path, "paper", {},
                                   ["paper"])
    assert other["status"] == "not_measured" and other["value"] is None  # another tokenizer's row: no value
    assert "this run measured num_tokens = 32" in other["reason"] and render._reproduced_text(other) == "n/a"
    same = evaluate.evaluate_number(_entry(2.21, {"abs": 0.25}, measures={"num_tokens": 32},
                                         metric={"space": "feature_space"}), tmp_path, "demo", {}, ["paper"])
    assert same["value"] == 41.7 and render._reproduced_text(same) == "41.7, in clip-demo features"
    probe = evaluate.evaluate_number(_entry(55.6, {"abs": 3.0}, metric={"key": "m.top1", "chance": "chance"}),
                                   tmp_path, "demo", {}, ["paper"])
    assert render.at_chance(probe) and "AT CHANCE (0.1)" in render._reproduced_text(probe)
    from_params = evaluate.evaluate_number(_entry(9.0, {"rel": 0.1}, metric={"space": "fid.feature_space"}), tmp_path,
                                         "demo", {"fid": {"feature_space": "inception"}}, ["paper"])
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
    for n in numbers.values():
        assert n.source and n.protocol
        assert n.value == "unknown" or n.tolerance, n.id


def _references_error(tmp_path, refs: dict) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(refs))
    with pytest.raises(references.ReferencesError) as err:
        references.load_references(path)
    return str(err.value)


def test_references_reject_bad_entries(tmp_path):
    bad = {"experiments": [{"id": "e", "title": "t", "numbers": [
        {"id": "n", "what": "w", "value": 2.0, "source": "s", "protocol": "p"}]}]}
    assert f"{tmp_path / 'r.yaml'}: experiments.e.numbers.n: tolerance: missing" in _references_error(tmp_path, bad)
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
    assert lines[2] == (f"{path}: extra: unknown key (allowed here: schema, comparable_profiles, experiments, "
                        "ground_truth_checks)")


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
