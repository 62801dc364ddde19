"""What the report says, as data: every paper number beside the run's value, the ground-truth checks, provenance.

:func:`build` collects it into one JSON-ready dict (``report.json``); :func:`summary` derives the DVC
metrics from it, and :mod:`pipeline.report.render` the two documents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.dvcfile import dvc_stages, file_md5, lock_param_mismatches, read_lock
from pipeline.io import MISSING, lookup
from pipeline.layout import REPORT_STAGE, paths_of, report_dir, results_root
from pipeline.report.references import OPS, REFERENCES, UNKNOWN, Check, Number, Protocol, Tolerance, load_references
from pipeline.report.spread import spread_of, sweep_record
from pipeline.tracking import git_commit, hardware, runs_matching_lock

STATUS_TEXT = {
    "within": "within tolerance",
    "outside": "outside tolerance",
    "not_comparable": "not comparable",
    "unknown": "unknown paper value",
    "not_run": "stage not run",
    "missing_key": "metric not in metrics file",
    "not_measured": "not measured by this pipeline",
}
CHECK_TEXT = {"pass": "pass", "fail": "fail", "not_run": "stage not run", "missing_key": "metric not in metrics file",
              "not_applicable": "not applicable at this profile"}


# ---------------------------------------------------------------------------------------------------
# small helpers


def expand(obj: Any, pattern: str) -> list[tuple[str | None, str]]:
    """The concrete keys matching ``pattern`` (at most one ``*``): ``[(matched part, key), ...]``."""
    if "*" not in pattern:
        return [(None, pattern)]
    head, _, tail = pattern.partition("*")
    parent = lookup(obj, head.rstrip(".")) if head else obj
    if not isinstance(parent, dict):
        return []
    return [(k, f"{head}{k}{tail}") for k in parent]


def fmt(value: Any) -> str:
    """How a value is written in report.md / report.html (verify searches for exactly this)."""
    if value is None or value is MISSING:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def read_json(path: Path) -> Any:
    """The parsed JSON file at ``path``; None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


def _as_written(entry: BaseModel | None) -> dict | None:
    """A references entry with the keys its file spells out, as report.json carries it."""
    return None if entry is None else entry.model_dump(exclude_unset=True)


# ---------------------------------------------------------------------------------------------------
# evaluation


def within_tolerance(reproduced: float, paper: float, tolerance: Tolerance) -> bool:
    """``|reproduced - paper| <= abs`` or ``<= rel * |paper|``."""
    limit = tolerance.abs if tolerance.abs is not None else tolerance.rel * abs(paper)
    return abs(reproduced - paper) <= limit + 1e-12


def _measured_other(measures: dict, metrics: dict) -> str:
    """Why the run's value is not this row's (``measures`` keys of the metrics file that differ), or ""."""
    for key, expected in measures.items():
        found = lookup(metrics, key)
        if found is MISSING:  # metrics older than the key: what was measured cannot be told
            return f"this run did not record {key}; this row is about {key} = {fmt(expected)}"
        if found != expected:
            return f"this run measured {key} = {fmt(found)}; this row is about {fmt(expected)}"
    return ""


def protocol_differences(paper: Protocol, run: Any) -> list[str]:
    """Every declared part of the paper's protocol the run's record does not match, as ``"part run vs paper"``.

    ``run`` is the run's protocol record (a dict). A part the run did not record, or that the paper's
    side only knows as ``unknown``, is a difference: a match must be shown, not assumed.
    """
    diffs = []
    for part, expected in paper.parts().items():
        found = run.get(part, MISSING) if isinstance(run, dict) else MISSING
        shown = "not recorded" if found is MISSING else fmt(found)
        if expected == UNKNOWN or found is MISSING or found != expected:
            diffs.append(f"{part} {shown} vs {fmt(expected)}")
    return diffs


def _found(key: str | None, metrics: dict, params: dict) -> Any:
    """``key`` looked up in the metrics file, else in params.yaml; None when absent or not asked for."""
    if key is None:
        return None
    value = lookup(metrics, key)
    value = lookup(params, key) if value is MISSING else value
    return None if value is MISSING else value


def evaluate_number(entry: Number, results: Path, params: dict) -> dict:
    """One "reproduced vs paper" row: the reproduced value, the protocol it followed, the status and why.

    A measured value is compared with the paper's only when its metrics file records what the row
    requires (``comparable.requires``) and a protocol that matches every part the paper's declares;
    otherwise the row is "not comparable" and the reason names each differing part.
    """
    row = {"id": entry.id, "what": entry.what, "paper": entry.value, "unit": entry.unit, "source": entry.source,
           "protocol": _as_written(entry.protocol), "tolerance": _as_written(entry.tolerance), "better": entry.better,
           "metric": _as_written(entry.metric), "value": None, "reproduced": None, "reason": "", "status": None,
           "space": None, "chance": None, "run_protocol": None, "protocol_differences": None}
    m = entry.metric
    metrics = read_json(results / m.file) if m else None
    if m is None:
        row["status"] = "not_measured"
    elif metrics is None:
        row["status"], row["reason"] = "not_run", f"{m.file} not found"
    else:
        value = lookup(metrics, m.key)
        other = _measured_other(entry.measures, metrics)
        if other:  # the run measured something else (another tokenizer, another judge): no value in this row
            row["status"], row["reason"] = "not_measured", other
        elif value is MISSING or not isinstance(value, int | float) or isinstance(value, bool):
            row["status"] = "missing_key"
            row["reason"] = f"{m.key} not in {m.file}" if value is MISSING else f"{m.key} is not a number"
        else:
            row["value"], row["reproduced"] = value, value * m.scale
            row["space"] = _found(m.space, metrics, params)
            row["chance"] = _found(m.chance, metrics, params)
            recorded = lookup(metrics, m.protocol) if m.protocol else MISSING
            row["run_protocol"] = recorded if isinstance(recorded, dict) else None
            row["protocol_differences"] = protocol_differences(entry.protocol, row["run_protocol"])
    if entry.value == UNKNOWN:  # decisive whatever the run measured; the run's state becomes the reason
        if row.get("status"):
            row["reason"] = STATUS_TEXT[row["status"]] + (f": {row['reason']}" if row["reason"] else "")
        row["status"] = "unknown"
        return row
    if row.get("status"):
        return row
    reasons = []
    for key, expected in entry.comparable.requires.items():
        found = lookup(metrics, key)
        if found is MISSING or found != expected:
            reasons.append(f"{key} {'not recorded' if found is MISSING else fmt(found)} vs {fmt(expected)}")
    if row["run_protocol"] is None:  # metrics written before stages recorded their protocol, or a renamed key
        reasons.append(f"protocol unknown: {m.protocol} not recorded in {m.file}")
    else:
        reasons += row["protocol_differences"]
    if reasons:
        row["status"], row["reason"] = "not_comparable", "; ".join(reasons)
        return row
    ok = within_tolerance(row["reproduced"], entry.value, entry.tolerance)
    row["status"] = "within" if ok else "outside"
    if not ok and entry.better:
        worse = row["reproduced"] > entry.value if entry.better == "lower" else row["reproduced"] < entry.value
        row["reason"] = "worse than the paper" if worse else "better than the paper"
    return row


def evaluate_check(check: Check, results: Path, profile: str, profiles: list[str]) -> list[dict]:
    """The rows of one ground-truth check (one per ``*`` match)."""
    base = {"check": check.id, "title": check.title, "claim": check.claim, "file": check.file, "stage": check.stage}
    if profile not in profiles:
        return [{**base, "id": check.id, "key": check.key, "status": "not_applicable", "value": None,
                 "expected": None, "shown": {}}]
    metrics = read_json(results / check.file)
    if metrics is None:
        return [{**base, "id": check.id, "key": check.key, "status": "not_run", "value": None,
                 "expected": None, "shown": {}}]
    matches = expand(metrics, check.key)
    if not matches:
        return [{**base, "id": check.id, "key": check.key, "status": "missing_key", "value": None,
                 "expected": None, "shown": {}}]
    rows = []
    exp = check.expect
    for part, key in matches:
        value = lookup(metrics, key)
        expected_key = exp.key.replace("*", part) if exp.key is not None and part is not None else exp.key
        expected = lookup(metrics, expected_key) if expected_key else exp.value
        shown = {label: {"key": k, "value": lookup(metrics, k)}
                 for label, pattern in check.show.items()
                 for k in [pattern.replace("*", part) if part is not None else pattern]
                 if lookup(metrics, k) is not MISSING}
        row = {**base, "id": f"{check.id}[{part}]" if part is not None else check.id, "key": key,
               "value": None if value is MISSING else value, "expected_key": expected_key,
               "expected": None if expected is MISSING else expected, "op": exp.op, "shown": shown}
        if value is MISSING or expected is MISSING or value is None or expected is None:
            row["status"] = "missing_key"
        else:
            try:
                row["status"] = "pass" if OPS[exp.op](value, expected) else "fail"
            except TypeError:
                row["status"] = "fail"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# the report


def build(root: Path, references: Path | None = None) -> dict:
    """Collect the whole report from the checkout at ``root`` (params.yaml, dvc.yaml, dvc.lock, results)."""
    root = Path(root)
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    profile = str(params.get("profile", "unknown"))
    paths = paths_of(params)
    results = root / results_root(paths)
    refs = load_references(references or root / REFERENCES)
    stages = {k: v for k, v in dvc_stages(root, params).items() if k != REPORT_STAGE}
    lock_outs, lock_sha = read_lock(root, without=REPORT_STAGE)

    # every output of every stage, with the md5 dvc.lock records for it
    outputs = []
    for stage, kinds in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for path in kinds[kind]:
                if path.startswith(os.path.normpath(os.path.relpath(root / report_dir(paths), root))):
                    continue
                outputs.append({"stage": stage, "kind": kind, "path": path,
                                "md5": (lock_outs.get(stage) or {}).get(path),
                                "exists": (root / path).exists()})

    def figures_of(stage: str) -> list[dict]:
        figs = []
        for out in outputs:
            if out["stage"] != stage or not out["exists"]:
                continue
            p = root / out["path"]
            files = [p] if p.is_file() and p.suffix == ".png" else sorted(p.rglob("*.png")) if p.is_dir() else []
            for f in files:
                figs.append({"stage": stage, "path": f.relative_to(root).as_posix(), "out": out["path"],
                             "out_md5": out["md5"], "md5": file_md5(f)})
        return figs

    sweep = sweep_record(root, paths)
    experiments = []
    for exp in refs.experiments:
        rows = [evaluate_number(n, results, params) for n in exp.numbers]
        for r in rows:
            if r["metric"]:
                r["metric"] = {**r["metric"], "path": os.path.relpath(results / r["metric"]["file"], root)}
            r["spread"] = spread_of(sweep, r["metric"]["path"], r["metric"]["key"]) if r["value"] is not None else None
        experiments.append({"id": exp.id, "title": exp.title, "stages": exp.stages, "rows": rows,
                            "stages_missing": [s for s in exp.stages if s not in stages],
                            "figures": [f for s in exp.stages for f in figures_of(s)]})

    gt = refs.ground_truth_checks
    checks = [row for c in gt.checks for row in evaluate_check(c, results, profile, gt.profiles)]
    for c in checks:
        c["path"] = os.path.relpath(results / c["file"], root)
        c["spread"] = spread_of(sweep, c["path"], c["key"]) if c["value"] is not None else None

    runs, runs_note = runs_matching_lock(list(stages), lock_outs)
    per_stage = []
    for stage in stages:
        run = runs.get(stage)
        seconds = run.get("seconds") if run else None
        if seconds is None:  # fall back on the stage's own record
            for m in stages[stage]["metrics"]:
                data = read_json(root / m) or {}
                for key in ("stage_seconds", "seconds"):
                    if isinstance(data.get(key), int | float):
                        seconds = data[key]
                        break
        per_stage.append({"stage": stage, "in_lock": stage in lock_outs, "seconds": seconds,
                          "mlflow_run_id": run["run_id"] if run else None,
                          "mlflow_matched": run["matched"] if run else None,
                          "host": run.get("host") if run else None,
                          "invocation": run.get("invocation") if run else None})

    params_file = root / "params.yaml"
    return {
        "profile": profile,
        "seed": params.get("seed"),
        "sweep": sweep,
        "params_mismatches": lock_param_mismatches(root, params, without=REPORT_STAGE),
        "experiments": experiments,
        "ground_truth": {"profiles": gt.profiles, "rows": checks},
        "provenance": {
            "git_commit": git_commit(root),
            "profile": profile,
            "params_sha256": hashlib.sha256(params_file.read_bytes()).hexdigest(),
            "dvc_lock_sha256": lock_sha,
            "dvc_lock_hash_note": "sha256 of dvc.lock as canonical JSON (sorted keys), without the report stage",
            "references_sha256": hashlib.sha256(Path(references or root / REFERENCES).read_bytes()).hexdigest(),
            "hardware": hardware(),
            "mlflow": runs_note or "recorded",
            "stages": per_stage,
            "outputs": outputs,
        },
    }


def counts(rows: list[dict], keys: dict[str, str]) -> dict[str, int]:
    """How many ``rows`` have each status of ``keys`` (zeros included, in ``keys``' order)."""
    return {k: sum(r["status"] == k for r in rows) for k in keys}


def summary(data: dict) -> dict:
    """``summary.json``, the report's headline (DVC metrics): how many paper numbers have each status and how
    many ground-truth checks have each outcome. Per experiment the counts are in report.md's summary table;
    each reproduced value is in report.json (its row) and in its stage's details.json."""
    all_rows = [r for e in data["experiments"] for r in e["rows"]]
    return {"numbers": counts(all_rows, STATUS_TEXT), "ground_truth": counts(data["ground_truth"]["rows"], CHECK_TEXT)}


def numbers_cited(data: dict) -> Iterator[dict]:
    """Every value the report shows that comes from a metrics file: ``{id, path, key, value}``."""
    for e in data["experiments"]:
        for r in e["rows"]:
            if r["value"] is not None:
                yield {"id": r["id"], "path": r["metric"]["path"], "key": r["metric"]["key"], "value": r["value"]}
    for r in data["ground_truth"]["rows"]:
        if r["value"] is not None:
            yield {"id": r["id"], "path": r["path"], "key": r["key"], "value": r["value"]}
        if r.get("expected_key") and r.get("expected") is not None:
            yield {"id": r["id"], "path": r["path"], "key": r["expected_key"], "value": r["expected"]}
        for v in r["shown"].values():
            yield {"id": r["id"], "path": r["path"], "key": v["key"], "value": v["value"]}
