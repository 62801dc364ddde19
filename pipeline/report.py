"""The reviewer's report: every reproduced number beside the paper's, the figures, and their provenance.

:func:`build` collects everything into one JSON-ready dict (``report.json``); :func:`render_markdown`,
:func:`render_html` and :func:`summary` derive the other outputs from it, and ``python -m pipeline
verify`` (:mod:`pipeline.verify`) checks a finished checkout against it.

What drives the report:

- ``references/paper_numbers.yaml``: the paper numbers, where each is measured (stage, metrics file,
  key) and when it is comparable; the demo's ground-truth checks;
- ``dvc.yaml`` (with ``${...}`` resolved from params.yaml): the outputs, metrics and plots per stage;
- ``dvc.lock`` (:func:`pipeline.dvcfile.read_lock`): the md5 of every cited output. The lock's own
  hash is the sha256 of its canonical JSON *without the report stage's entry*: DVC rewrites that entry
  after the report has run, so the raw file can never match a hash written by the report, and citing it
  would make the report depend on its previous run;
- MLflow (:func:`pipeline.tracking.runs_matching_lock`): per stage, the newest finished run whose
  ``dvc.md5.<path>`` tags equal dvc.lock's md5 for every file output: run id, wall time (metric
  ``seconds``), host; "not recorded" when there is no tracking store.

Nothing here depends on the clock: given the same inputs and provenance the outputs are identical.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.dvcfile import MISSING, dvc_stages, file_md5, lock_param_mismatches, lookup, read_lock
from pipeline.tracking import git_commit, hardware, runs_matching_lock

REFERENCES = "references/paper_numbers.yaml"
REPORT_STAGE = "report"

STATUS_TEXT = {
    "within": "within tolerance",
    "outside": "outside tolerance",
    "not_comparable": "not comparable at this profile",
    "unknown": "unknown paper value",
    "not_run": "stage not run",
    "missing_key": "metric not in metrics file",
    "not_measured": "not measured by this pipeline",
}
CHECK_TEXT = {"pass": "pass", "fail": "fail", "not_run": "stage not run", "missing_key": "metric not in metrics file",
              "not_applicable": "not applicable at this profile"}
OPS = {"==": lambda a, b: a == b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
       "<=": lambda a, b: a <= b}


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
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------
# inputs


def load_references(path: Path) -> dict:
    """Read and check ``paper_numbers.yaml``; ``ValueError`` names the entry and field at fault."""
    refs = yaml.safe_load(Path(path).read_text()) or {}
    seen: set[str] = set()
    for exp in refs.get("experiments") or []:
        for field in ("id", "title", "numbers"):
            if field not in exp:
                raise ValueError(f"{path}: experiment {exp.get('id', '?')}: missing {field!r}")
        for n in exp["numbers"]:
            where = f"{path}: {exp['id']}.{n.get('id', '?')}"
            for field in ("id", "what", "value", "source", "protocol"):
                if field not in n:
                    raise ValueError(f"{where}: missing {field!r}")
            if n["id"] in seen:
                raise ValueError(f"{where}: duplicate id")
            seen.add(n["id"])
            if n["value"] != "unknown" and not isinstance(n["value"], int | float):
                raise ValueError(f"{where}: value must be a number or 'unknown', found {n['value']!r}")
            if n["value"] != "unknown":
                tol = n.get("tolerance") or {}
                if set(tol) not in ({"abs"}, {"rel"}):
                    raise ValueError(f"{where}: tolerance must be {{abs: x}} or {{rel: x}}, found {tol!r}")
            m = n.get("metric")
            if m is not None and not {"stage", "file", "key"} <= set(m):
                raise ValueError(f"{where}: metric needs stage, file and key, found {m!r}")
            if m is not None and not set(m) <= {"stage", "file", "key", "scale", "space", "chance"}:
                raise ValueError(f"{where}: metric knows stage, file, key, scale, space, chance; found {sorted(m)}")
            if not isinstance(n.get("measures", {}), dict):
                raise ValueError(f"{where}: measures must map metrics keys to values, found {n['measures']!r}")
    for c in (refs.get("ground_truth_checks") or {}).get("checks") or []:
        for field in ("id", "title", "stage", "file", "key", "expect"):
            if field not in c:
                raise ValueError(f"{path}: ground_truth_checks.{c.get('id', '?')}: missing {field!r}")
        if c["expect"].get("op") not in OPS:
            raise ValueError(f"{path}: ground_truth_checks.{c['id']}: op must be one of {list(OPS)}")
    return refs


# ---------------------------------------------------------------------------------------------------
# evaluation


def within_tolerance(reproduced: float, paper: float, tolerance: dict[str, float]) -> bool:
    """``|reproduced - paper| <= abs`` or ``<= rel * |paper|``."""
    limit = tolerance["abs"] if "abs" in tolerance else tolerance["rel"] * abs(paper)
    return abs(reproduced - paper) <= limit + 1e-12


def tolerance_text(tolerance: dict[str, float] | None) -> str:
    if not tolerance:
        return "n/a"
    return f"±{fmt(tolerance['abs'])}" if "abs" in tolerance else f"±{fmt(100 * tolerance['rel'])}%"


def _measured_other(measures: dict, metrics: dict) -> str:
    """Why the run's value is not this row's (``measures`` keys of the metrics file that differ), or ""."""
    for key, expected in measures.items():
        found = lookup(metrics, key)
        if found is MISSING or found != expected:
            return f"this run measured {key} = {fmt(found)}; this row is about {fmt(expected)}"
    return ""


def _found(key: str | None, metrics: dict, params: dict) -> Any:
    """``key`` looked up in the metrics file, else in params.yaml; None when absent or not asked for."""
    if key is None:
        return None
    value = lookup(metrics, key)
    value = lookup(params, key) if value is MISSING else value
    return None if value is MISSING else value


def at_chance(row: dict) -> bool:
    """Whether a measured value is within 1.5x of the chance level the metrics file records."""
    return row.get("chance") is not None and row["value"] is not None and row["value"] <= 1.5 * row["chance"]


def evaluate_number(entry: dict, results: Path, profile: str, params: dict, default_profiles: list[str]) -> dict:
    """One "reproduced vs paper" row: the reproduced value, the status and why."""
    row = {"id": entry["id"], "what": entry["what"], "paper": entry["value"], "unit": entry.get("unit"),
           "source": entry["source"], "protocol": entry["protocol"], "tolerance": entry.get("tolerance"),
           "better": entry.get("better"), "metric": entry.get("metric"), "value": None, "reproduced": None,
           "reason": "", "status": None, "space": None, "chance": None}
    m = entry.get("metric")
    metrics = read_json(results / m["file"]) if m else None
    if m is None:
        row["status"] = "not_measured"
    elif metrics is None:
        row["status"], row["reason"] = "not_run", f"{m['file']} not found"
    else:
        value = lookup(metrics, m["key"])
        other = _measured_other(entry.get("measures") or {}, metrics)
        if other:  # the run measured something else (another tokenizer, another judge): no value in this row
            row["status"], row["reason"] = "not_measured", other
        elif value is MISSING or not isinstance(value, int | float) or isinstance(value, bool):
            row["status"] = "missing_key"
            row["reason"] = f"{m['key']} not in {m['file']}" if value is MISSING else f"{m['key']} is not a number"
        else:
            row["value"], row["reproduced"] = value, value * m.get("scale", 1)
            row["space"] = _found(m.get("space"), metrics, params)
            row["chance"] = _found(m.get("chance"), metrics, params)
    if entry["value"] == "unknown":  # decisive whatever the run measured; the run's state becomes the reason
        if row.get("status"):
            row["reason"] = STATUS_TEXT[row["status"]] + (f": {row['reason']}" if row["reason"] else "")
        row["status"] = "unknown"
        return row
    if row.get("status"):
        return row
    comparable = entry.get("comparable") or {}
    profiles = comparable.get("profiles", default_profiles)
    if profile not in profiles:
        row["status"], row["reason"] = "not_comparable", f"profile {profile}; comparable at: {', '.join(profiles)}"
        return row
    for where, source in (("requires", metrics), ("params", params)):
        for key, expected in (comparable.get(where) or {}).items():
            found = lookup(source, key)
            if found is MISSING or found != expected:
                label = "metrics" if where == "requires" else "params.yaml"
                row["status"] = "not_comparable"
                row["reason"] = f"{label} {key} is {fmt(found)}, the paper's protocol needs {fmt(expected)}"
                return row
    ok = within_tolerance(row["reproduced"], entry["value"], entry["tolerance"])
    row["status"] = "within" if ok else "outside"
    if not ok and entry.get("better"):
        worse = row["reproduced"] > entry["value"] if entry["better"] == "lower" else row["reproduced"] < entry["value"]
        row["reason"] = "worse than the paper" if worse else "better than the paper"
    return row


def evaluate_check(check: dict, results: Path, profile: str, profiles: list[str]) -> list[dict]:
    """The rows of one ground-truth check (one per ``*`` match)."""
    base = {"check": check["id"], "title": check["title"], "claim": check.get("claim", ""), "file": check["file"],
            "stage": check["stage"]}
    if profile not in profiles:
        return [{**base, "id": check["id"], "key": check["key"], "status": "not_applicable", "value": None,
                 "expected": None, "shown": {}}]
    metrics = read_json(results / check["file"])
    if metrics is None:
        return [{**base, "id": check["id"], "key": check["key"], "status": "not_run", "value": None,
                 "expected": None, "shown": {}}]
    matches = expand(metrics, check["key"])
    if not matches:
        return [{**base, "id": check["id"], "key": check["key"], "status": "missing_key", "value": None,
                 "expected": None, "shown": {}}]
    rows = []
    exp = check["expect"]
    for part, key in matches:
        value = lookup(metrics, key)
        expected_key = exp["key"].replace("*", part) if "key" in exp and part is not None else exp.get("key")
        expected = lookup(metrics, expected_key) if expected_key else exp.get("value")
        shown = {label: {"key": k, "value": lookup(metrics, k)}
                 for label, pattern in (check.get("show") or {}).items()
                 for k in [pattern.replace("*", part) if part is not None else pattern]
                 if lookup(metrics, k) is not MISSING}
        row = {**base, "id": f"{check['id']}[{part}]" if part is not None else check["id"], "key": key,
               "value": None if value is MISSING else value, "expected_key": expected_key,
               "expected": None if expected is MISSING else expected, "op": exp["op"], "shown": shown}
        if value is MISSING or expected is MISSING or value is None or expected is None:
            row["status"] = "missing_key"
        else:
            try:
                row["status"] = "pass" if OPS[exp["op"]](value, expected) else "fail"
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
    results = root / str(lookup(params, "paths.results") if lookup(params, "paths.results") is not MISSING
                         else "results")
    refs = load_references(references or root / REFERENCES)
    default_profiles = refs.get("comparable_profiles") or ["paper"]
    stages = {k: v for k, v in dvc_stages(root, params).items() if k != REPORT_STAGE}
    lock_outs, lock_sha = read_lock(root, without=REPORT_STAGE)

    # every output of every stage, with the md5 dvc.lock records for it
    outputs = []
    for stage, kinds in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for path in kinds[kind]:
                if path.startswith(os.path.normpath(os.path.relpath(results / REPORT_STAGE, root))):
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

    experiments = []
    for exp in refs.get("experiments") or []:
        rows = [evaluate_number(n, results, profile, params, default_profiles) for n in exp["numbers"]]
        for r in rows:
            if r["metric"]:
                r["metric"] = {**r["metric"], "path": os.path.relpath(results / r["metric"]["file"], root)}
        experiments.append({"id": exp["id"], "title": exp["title"], "stages": exp.get("stages") or [],
                            "rows": rows,
                            "stages_missing": [s for s in exp.get("stages") or [] if s not in stages],
                            "figures": [f for s in exp.get("stages") or [] for f in figures_of(s)]})

    gt = refs.get("ground_truth_checks") or {}
    checks = [row for c in gt.get("checks") or [] for row in
              evaluate_check(c, results, profile, gt.get("profiles") or ["demo"])]
    for c in checks:
        c["path"] = os.path.relpath(results / c["file"], root)

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
        "params_mismatches": lock_param_mismatches(root, params, without=REPORT_STAGE),
        "experiments": experiments,
        "ground_truth": {"profiles": gt.get("profiles") or ["demo"], "rows": checks},
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
    return {k: sum(r["status"] == k for r in rows) for k in keys}


def summary(data: dict) -> dict:
    """``summary.json``: status counts and every reproduced number (DVC metrics, for ``dvc metrics diff``)."""
    all_rows = [r for e in data["experiments"] for r in e["rows"]]
    return {
        "profile": data["profile"],
        "numbers": counts(all_rows, STATUS_TEXT),
        "experiments": {e["id"]: counts(e["rows"], STATUS_TEXT) for e in data["experiments"]},
        "ground_truth": counts(data["ground_truth"]["rows"], CHECK_TEXT),
        "reproduced": {r["id"]: r["reproduced"] for r in all_rows if r["reproduced"] is not None},
    }


# ---------------------------------------------------------------------------------------------------
# rendering


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _paper_text(row: dict) -> str:
    return "unknown" if row["paper"] == "unknown" else fmt(row["paper"]) + (row.get("unit") or "")


def _reproduced_text(row: dict) -> str:
    if row["value"] is None:
        return "n/a"
    text = fmt(row["value"])
    scale = (row["metric"] or {}).get("scale", 1)
    text = text if scale == 1 else f"{text} (x{fmt(scale)} = {fmt(row['reproduced'])}{row.get('unit') or ''})"
    if row.get("space"):
        text += f", in {row['space']} features"
    if at_chance(row):
        text += f", AT CHANCE ({fmt(row['chance'])})"
    return text


def _status_text(row: dict) -> str:
    text = STATUS_TEXT[row["status"]]
    return f"{text} ({row['reason']})" if row["reason"] else text


def _metric_text(row: dict) -> str:
    m = row["metric"]
    return "none" if not m else f"{m['path']}: {m['key']}"


def _summary_rows(data: dict) -> tuple[list[str], list[list[Any]]]:
    s = summary(data)
    header = ["experiment", *STATUS_TEXT.values()]
    rows = [[e["title"].split(" (")[0], *(s["experiments"][e["id"]][k] for k in STATUS_TEXT)]
            for e in data["experiments"]]
    rows.append(["**all**", *(s["numbers"][k] for k in STATUS_TEXT)])
    return header, rows


def _check_rows(data: dict) -> list[list[Any]]:
    out = []
    for r in data["ground_truth"]["rows"]:
        expected = (f"{r.get('op', '')} {r['expected_key']} = {fmt(r['expected'])}" if r.get("expected_key")
                    else f"{r.get('op', '')} {fmt(r['expected'])}" if r.get("op") else "")
        shown = "; ".join(f"{label} {fmt(v['value'])}" for label, v in r["shown"].items())
        out.append([f"`{r['id']}`", r["title"], f"{r['path']}: {r['key']}", fmt(r["value"]), expected, shown,
                    CHECK_TEXT[r["status"]]])
    return out


CHECK_HEADER = ["id", "check", "metric", "value", "expected", "also", "result"]
NUMBER_HEADER = ["id", "what", "paper", "reproduced", "metric", "tolerance", "status"]
OUTPUT_HEADER = ["stage", "kind", "path", "md5 (dvc.lock)"]
STAGE_HEADER = ["stage", "wall time (s)", "MLflow run id", "host", "in dvc.lock"]


def _number_row(r: dict) -> list[Any]:
    return [f"`{r['id']}`", r["what"], _paper_text(r), _reproduced_text(r), _metric_text(r),
            tolerance_text(r["tolerance"]), _status_text(r)]


def _sources(rows: list[dict]) -> list[tuple[str, str, str]]:
    """``(id, source, protocol)`` per row, listed under each table."""
    return [(r["id"], r["source"], r["protocol"]) for r in rows]


def _run_text(s: dict, note: str) -> str:
    if s["mlflow_matched"] is None:
        return note
    if s["mlflow_run_id"] is None:
        return "no run matches dvc.lock"
    return s["mlflow_run_id"] + ("" if s["mlflow_matched"] else " (latest run; no file outputs to match)")


def _stage_row(s: dict, note: str) -> list[Any]:
    return [s["stage"], fmt(s["seconds"]) if s["seconds"] is not None else "not recorded",
            _run_text(s, note), s["host"] or "not recorded", "yes" if s["in_lock"] else "no"]


def _output_row(o: dict) -> list[Any]:
    md5 = o["md5"] or "not in dvc.lock"
    return [o["stage"], o["kind"], o["path"] + ("" if o["exists"] else " (missing)"), md5]


def checks_first(data: dict) -> bool:
    """Whether the ground-truth checks apply at the report's profile (then they come before the papers)."""
    return data["profile"] in data["ground_truth"]["profiles"]


def render_markdown(data: dict, out_dir: Path, root: Path) -> str:
    """``report.md``: figures are linked relative to ``out_dir``."""
    prov = data["provenance"]
    note = prov["mlflow"] if prov["mlflow"] != "recorded" else "not recorded"
    lines = ["# Reproduction report", "",
             f"Profile **{data['profile']}**, git commit `{prov['git_commit']}`, dvc.lock sha256 "
             f"`{prov['dvc_lock_sha256'] or 'no dvc.lock'}` ({prov['dvc_lock_hash_note']}).", "",
             "Check this checkout against the report: `python -m pipeline.verify`.", ""]
    if data["params_mismatches"]:
        lines += [f"**Warning: the outputs were not produced by params.yaml** (profile {data['profile']}): "
                  "dvc.lock records other values for them; run `dvc repro` before reading this report.", ""]
        lines += [f"- {m}" for m in data["params_mismatches"]] + [""]
    lines += ["## Summary", ""]
    header, rows = _summary_rows(data)
    lines += _md_table(header, rows)
    g = summary(data)["ground_truth"]
    lines += ["", "Demo ground-truth checks: " + ", ".join(f"{CHECK_TEXT[k]} {v}" for k, v in g.items() if v), ""]
    checks = ["## Demo ground-truth checks", "",
              f"Applies at profiles: {', '.join(data['ground_truth']['profiles'])}.", ""]
    checks += _md_table(CHECK_HEADER, _check_rows(data)) + [""]
    first = checks_first(data)
    if first:  # on the demo the checks are the signal: above the paper tables
        lines += checks
    for e in data["experiments"]:
        lines += [f"## {e['title']}", "", "### Reproduced vs paper", ""]
        lines += _md_table(NUMBER_HEADER, [_number_row(r) for r in e["rows"]])
        lines += ["", "Sources and protocols:", ""]
        lines += [f"- `{i}`: {src}. Protocol: {proto}." for i, src, proto in _sources(e["rows"])]
        lines += ["", "### Figures", ""]
        if e["stages_missing"]:
            lines += [f"Stages not in dvc.yaml: {', '.join(e['stages_missing'])}.", ""]
        if not e["figures"]:
            lines += ["No figures (stage not run).", ""]
        for f in e["figures"]:
            rel = os.path.relpath(root / f["path"], out_dir)
            lines += [f"![{f['path']}]({rel})", "",
                      f"`{f['path']}` (stage {f['stage']}, md5 `{f['md5']}`, in output `{f['out']}` with "
                      f"dvc.lock md5 `{f['out_md5'] or 'not in dvc.lock'}`)", ""]
    if not first:
        lines += checks
    lines += ["## Provenance", "",
              f"- git commit: `{prov['git_commit']}`",
              f"- profile: `{prov['profile']}` (params.yaml sha256 `{prov['params_sha256']}`)",
              f"- dvc.lock sha256: `{prov['dvc_lock_sha256'] or 'no dvc.lock'}` ({prov['dvc_lock_hash_note']})",
              f"- references/paper_numbers.yaml sha256: `{prov['references_sha256']}`",
              f"- MLflow: {prov['mlflow']}",
              "- hardware (report host): " + ", ".join(f"{k} {fmt(v)}" for k, v in prov["hardware"].items()),
              "", "### Stages", ""]
    lines += _md_table(STAGE_HEADER, [_stage_row(s, note) for s in prov["stages"]])
    lines += ["", "### Outputs cited (hash as recorded in dvc.lock)", ""]
    lines += _md_table(OUTPUT_HEADER, [_output_row(o) for o in prov["outputs"]])
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#f0f0f0}code{font-size:12px}img{max-width:100%;border:1px solid #ddd}
.s-within,.s-pass{background:#d9f2d9}.s-outside,.s-fail{background:#f8d0d0}.s-unknown{background:#fff2cc}
.s-not_comparable,.s-not_applicable,.s-not_measured{background:#eee}.s-not_run,.s-missing_key{background:#fde2c4}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}"""


def _html_table(header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = [f"<td>{html.escape(str(c)).replace('`', '').replace('**', '')}</td>" for c in row]
        if classes:  # the last column is the status
            cells[-1] = f'<td class="s-{classes[i]}">{html.escape(str(row[-1]))}</td>'
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(data: dict, root: Path) -> str:
    """``report.html``: self-contained (styles inline, figures embedded as base64 PNG)."""
    prov = data["provenance"]
    note = prov["mlflow"] if prov["mlflow"] != "recorded" else "not recorded"
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Reproduction report</title>",
             f"<style>{_CSS}</style></head><body><h1>Reproduction report</h1>",
             f"<p>Profile <b>{esc(data['profile'])}</b>, git commit <code>{esc(prov['git_commit'])}</code>, "
             f"dvc.lock sha256 <code>{esc(prov['dvc_lock_sha256'] or 'no dvc.lock')}</code> "
             f"({esc(prov['dvc_lock_hash_note'])}).</p>",
             "<p>Check this checkout against the report: <code>python -m pipeline.verify</code>.</p>"]
    if data["params_mismatches"]:
        parts += [f"<p class='s-fail'><b>Warning: the outputs were not produced by params.yaml</b> (profile "
                  f"{esc(data['profile'])}): dvc.lock records other values for them; run <code>dvc repro</code> "
                  "before reading this report.</p><ul>",
                  *(f"<li>{esc(m)}</li>" for m in data["params_mismatches"]), "</ul>"]
    parts.append("<h2>Summary</h2>")
    header, rows = _summary_rows(data)
    parts.append(_html_table(header, rows))
    gt = data["ground_truth"]
    checks = ["<h2>Demo ground-truth checks</h2>",
              f"<p>Applies at profiles: {esc(', '.join(gt['profiles']))}.</p>",
              _html_table(CHECK_HEADER, _check_rows(data), [r["status"] for r in gt["rows"]])]
    first = checks_first(data)
    if first:
        parts += checks
    for e in data["experiments"]:
        parts += [f"<h2>{esc(e['title'])}</h2><h3>Reproduced vs paper</h3>",
                  _html_table(NUMBER_HEADER, [_number_row(r) for r in e["rows"]], [r["status"] for r in e["rows"]]),
                  "<p>Sources and protocols:</p><ul>",
                  *(f"<li><code>{esc(i)}</code>: {esc(src)}. Protocol: {esc(proto)}.</li>"
                    for i, src, proto in _sources(e["rows"])),
                  "</ul><h3>Figures</h3>"]
        if e["stages_missing"]:
            parts.append(f"<p>Stages not in dvc.yaml: {esc(', '.join(e['stages_missing']))}.</p>")
        if not e["figures"]:
            parts.append("<p>No figures (stage not run).</p>")
        for f in e["figures"]:
            b64 = base64.b64encode((root / f["path"]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{esc(f['path'])}' src='data:image/png;base64,{b64}'><figcaption>"
                         f"<code>{esc(f['path'])}</code> (stage {esc(f['stage'])}, md5 <code>{f['md5']}</code>, "
                         f"in output <code>{esc(f['out'])}</code> with dvc.lock md5 "
                         f"<code>{esc(f['out_md5'] or 'not in dvc.lock')}</code>)</figcaption></figure>")
    if not first:
        parts += checks
    parts += ["<h2>Provenance</h2><ul>",
              f"<li>git commit: <code>{esc(prov['git_commit'])}</code></li>",
              f"<li>profile: <code>{esc(prov['profile'])}</code> (params.yaml sha256 "
              f"<code>{prov['params_sha256']}</code>)</li>",
              f"<li>dvc.lock sha256: <code>{esc(prov['dvc_lock_sha256'] or 'no dvc.lock')}</code> "
              f"({esc(prov['dvc_lock_hash_note'])})</li>",
              f"<li>references/paper_numbers.yaml sha256: <code>{prov['references_sha256']}</code></li>",
              f"<li>MLflow: {esc(prov['mlflow'])}</li>",
              "<li>hardware (report host): " + esc(", ".join(f"{k} {fmt(v)}" for k, v in prov["hardware"].items()))
              + "</li></ul><h3>Stages</h3>",
              _html_table(STAGE_HEADER, [_stage_row(s, note) for s in prov["stages"]]),
              "<h3>Outputs cited (hash as recorded in dvc.lock)</h3>",
              _html_table(OUTPUT_HEADER, [_output_row(o) for o in prov["outputs"]]),
              "</body></html>"]
    return "\n".join(parts) + "\n"


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
