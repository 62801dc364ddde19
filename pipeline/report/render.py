"""The report's sections, laid out once from ``report.json``'s data as a :class:`~pipeline.report.document.Document`.

:func:`document` decides what the reader sees and in which order; :func:`~pipeline.report.document.to_markdown`
and :func:`~pipeline.report.document.to_html` write it. Both documents are a function of report.json
(and the figures it cites), which is how ``python -m pipeline.verify`` re-renders and compares them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.report.document import Block, Bold, Bullets, Code, Document, Figure, Paragraph, Section, Table, Text
from pipeline.report.evaluate import CHECK_TEXT, STATUS_TEXT, counts, fmt, summary
from pipeline.report.references import PROTOCOL_PARTS

CHECK_HEADER = ["id", "check", "metric", "value", "expected", "also", "result"]
NUMBER_HEADER = ["id", "what", "paper", "reproduced", "metric", "tolerance", "status"]
OUTPUT_HEADER = ["stage", "kind", "path", "md5 (dvc.lock)"]
STAGE_HEADER = ["stage", "wall time (s)", "MLflow run id", "host", "in dvc.lock"]

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#f0f0f0}code{font-size:12px}img{max-width:100%;border:1px solid #ddd}
.s-within,.s-pass{background:#d9f2d9}.s-outside,.s-fail{background:#f8d0d0}.s-unknown{background:#fff2cc}
.s-not_comparable,.s-not_applicable,.s-not_measured{background:#eee}.s-not_run,.s-missing_key{background:#fde2c4}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}"""


# ---------------------------------------------------------------------------------------------------
# cells


def tolerance_text(tolerance: dict[str, float] | None) -> str:
    """``±x`` (absolute) or ``±x%`` (relative); ``n/a`` without a tolerance."""
    if not tolerance:
        return "n/a"
    return f"±{fmt(tolerance['abs'])}" if "abs" in tolerance else f"±{fmt(100 * tolerance['rel'])}%"


def at_chance(row: dict) -> bool:
    """Whether a measured value is within 1.5x of the chance level the metrics file records."""
    return row.get("chance") is not None and row["value"] is not None and row["value"] <= 1.5 * row["chance"]


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
    return text + spread_text(row.get("spread"))


def spread_text(spread: dict | None) -> str:
    """``; seeds: mean 0.5 ± 0.1 (n 3, 0.4 to 0.6)`` after a measured value a seed sweep also measured."""
    if spread is None:
        return ""
    std = "" if spread["std"] is None else f" ± {fmt(spread['std'])}"
    return (f"; seeds: mean {fmt(spread['mean'])}{std} (n {spread['n']}, {fmt(spread['min'])} to "
            f"{fmt(spread['max'])})")


def _status_text(row: dict) -> str:
    text = STATUS_TEXT[row["status"]]
    return f"{text} ({row['reason']})" if row["reason"] else text


def _parts(protocol: dict) -> dict:
    """The parts of a paper's protocol (without its prose and source) or of a run's record, in the order of
    :data:`~pipeline.report.references.PROTOCOL_PARTS`, then any other part a run records (report.json
    sorts keys, so the order is fixed here)."""
    order = {k: i for i, k in enumerate(PROTOCOL_PARTS)}
    parts = [k for k in protocol if k not in ("text", "source")]
    return {k: protocol[k] for k in sorted(parts, key=lambda k: (order.get(k, len(order)), k))}


def protocol_parts_text(protocol: dict) -> str:
    """``samples 50000; image size 256; ...``: the parts of a paper's protocol or of a run's record (``;``
    between parts: a dataset's words hold commas)."""
    return "; ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in _parts(protocol).items()) or "none declared"


def protocol_text(row: dict) -> str:
    """The paper's protocol, and the one the measured value followed with what differs (report bullets)."""
    paper = row["protocol"]
    text = (f"Protocol: {paper['text']}. Paper's protocol parts: {protocol_parts_text(paper)} "
            f"(source of the protocol: {paper['source']}).")
    m = row["metric"]
    if row["value"] is None or (not _parts(paper) and not m.get("protocol")):
        return text
    if row["run_protocol"] is None:
        return text + f" This run: protocol unknown ({m['protocol'] or 'no key'} not recorded in {m['path']})."
    differs = row["protocol_differences"]
    verdict = (f"Differs from the paper's in: {'; '.join(differs)}." if differs
               else "Matches every part the paper's declares." if _parts(paper) else "No part declared to compare.")
    return text + f" This run ({m['path']}: {m['protocol']}): {protocol_parts_text(row['run_protocol'])}. {verdict}"


def _metric_text(row: dict) -> str:
    m = row["metric"]
    return "none" if not m else f"{m['path']}: {m['key']}"


def _number_row(r: dict) -> list[Text]:
    return [Code(r["id"]), r["what"], _paper_text(r), _reproduced_text(r), _metric_text(r),
            tolerance_text(r["tolerance"]), _status_text(r)]


def _check_row(r: dict) -> list[Text]:
    expected = (f"{r.get('op', '')} {r['expected_key']} = {fmt(r['expected'])}" if r.get("expected_key")
                else f"{r.get('op', '')} {fmt(r['expected'])}" if r.get("op") else "")
    shown = "; ".join(f"{label} {fmt(v['value'])}" for label, v in r["shown"].items())
    return [Code(r["id"]), r["title"], f"{r['path']}: {r['key']}", fmt(r["value"]) + spread_text(r.get("spread")),
            expected, shown,
            CHECK_TEXT[r["status"]]]


def _run_text(s: dict, note: str) -> str:
    if s["mlflow_matched"] is None:
        return note
    if s["mlflow_run_id"] is None:
        return "no run matches dvc.lock"
    return s["mlflow_run_id"] + ("" if s["mlflow_matched"] else " (latest run; no file outputs to match)")


def _stage_row(s: dict, note: str) -> list[Text]:
    return [s["stage"], fmt(s["seconds"]) if s["seconds"] is not None else "not recorded",
            _run_text(s, note), s["host"] or "not recorded", "yes" if s["in_lock"] else "no"]


def _output_row(o: dict) -> list[Text]:
    md5 = o["md5"] or "not in dvc.lock"
    return [o["stage"], o["kind"], o["path"] + ("" if o["exists"] else " (missing)"), md5]


# ---------------------------------------------------------------------------------------------------
# sections


def checks_first(data: dict) -> bool:
    """Whether the ground-truth checks apply at the report's profile (then they come before the papers)."""
    return data["profile"] in data["ground_truth"]["profiles"]


def _seeds(data: dict) -> list[Block]:
    """Which seed the single-run numbers and figures show, and the seed sweep beside them (if it fits).

    Nothing for a report.json written before sweeps existed: verify re-renders it as it was written.
    """
    sweep = data.get("sweep")
    if sweep is None:
        return []
    single = Paragraph(("Every number and figure of this report is the run of seed ", Bold(str(data["seed"])),
                        " (params.yaml ", Code("seed"), ")."))
    if sweep["status"] == "absent":
        return [single, Paragraph(("No seed sweep (", Code(sweep["path"]), "): no spread across seeds is shown; ",
                                   Code("python -m pipeline.sweep --seeds 0 1 2"), " measures one."))]
    seeds = ", ".join(map(str, sweep["seeds"]))
    if sweep["status"] == "other":
        return [single, Paragraph((Bold("Seed sweep not shown: "), Code(sweep["path"]), f" (sweep {sweep['sweep']}, "
                                   f"seeds {seeds}): {sweep['reason']}."), css="s-fail")]
    return [single,
            Paragraph(("Beside each number its stages' seed sweep measured: the mean ± standard deviation ("
                       f"{sweep['std']}), n and range over seeds {seeds} of sweep {sweep['sweep']} (stages "
                       f"{', '.join(sweep['stages'])}; ", Code(sweep["path"]), ", per seed in ",
                       Code(sweep["path"].replace(".json", ".md")), "). Its experiments:")),
            Bullets([(Code(e["name"]), f" seed {e['seed']}, commit ", Code(e["rev"]), ", dvc.lock sha256 ",
                      Code(e["dvc_lock_sha256"])) for e in sweep["experiments"]])]


def _intro(data: dict) -> Section:
    prov = data["provenance"]
    blocks: list[Block] = [
        Paragraph(("Profile ", Bold(data["profile"]), ", git commit ", Code(prov["git_commit"]),
                   ", dvc.lock sha256 ", Code(prov["dvc_lock_sha256"] or "no dvc.lock"),
                   f" ({prov['dvc_lock_hash_note']}).")),
        Paragraph(("Check this checkout against the report: ", Code("python -m pipeline.verify"), ".")),
        *_seeds(data)]
    if data["params_mismatches"]:
        blocks += [Paragraph((Bold("Warning: the outputs were not produced by params.yaml"),
                              f" (profile {data['profile']}): dvc.lock records other values for them; run ",
                              Code("dvc repro"), " before reading this report."), css="s-fail"),
                   Bullets(list(data["params_mismatches"]))]
    return Section("Reproduction report", 1, blocks)


def _summary(data: dict) -> Section:
    s = summary(data)
    rows: list[list[Text]] = [[e["title"].split(" (")[0], *(str(v) for v in counts(e["rows"], STATUS_TEXT).values())]
                              for e in data["experiments"]]
    rows.append([Bold("all"), *(str(s["numbers"][k]) for k in STATUS_TEXT)])
    checks = ", ".join(f"{CHECK_TEXT[k]} {v}" for k, v in s["ground_truth"].items() if v)
    return Section("Summary", 2, [Table(["experiment", *STATUS_TEXT.values()], rows),
                                  Paragraph(f"Demo ground-truth checks: {checks}")])


def _checks(data: dict) -> Section:
    gt = data["ground_truth"]
    return Section("Demo ground-truth checks", 2, [
        Paragraph(f"Applies at profiles: {', '.join(gt['profiles'])}."),
        Table(CHECK_HEADER, [_check_row(r) for r in gt["rows"]], [r["status"] for r in gt["rows"]])])


def _experiment(e: dict, root: Path, out_dir: Path) -> list[Section]:
    numbers = Section("Reproduced vs paper", 3, [
        Table(NUMBER_HEADER, [_number_row(r) for r in e["rows"]], [r["status"] for r in e["rows"]]),
        Paragraph("Sources and protocols:"),
        Bullets([(Code(r["id"]), f": {r['source']}. {protocol_text(r)}") for r in e["rows"]])])
    figures: list[Block] = []
    if e["stages_missing"]:
        figures.append(Paragraph(f"Stages not in dvc.yaml: {', '.join(e['stages_missing'])}."))
    if not e["figures"]:
        figures.append(Paragraph("No figures (stage not run)."))
    for f in e["figures"]:
        caption = (Code(f["path"]), f" (stage {f['stage']}, md5 ", Code(f["md5"]), ", in output ", Code(f["out"]),
                   " with dvc.lock md5 ", Code(f["out_md5"] or "not in dvc.lock"), ")")
        figures.append(Figure(root / f["path"], os.path.relpath(root / f["path"], out_dir), f["path"], caption))
    return [Section(e["title"], 2), numbers, Section("Figures", 3, figures)]


def _provenance(data: dict) -> list[Section]:
    prov = data["provenance"]
    note = prov["mlflow"] if prov["mlflow"] != "recorded" else "not recorded"
    facts = Bullets([
        ("git commit: ", Code(prov["git_commit"])),
        ("profile: ", Code(prov["profile"]), " (params.yaml sha256 ", Code(prov["params_sha256"]), ")"),
        ("dvc.lock sha256: ", Code(prov["dvc_lock_sha256"] or "no dvc.lock"), f" ({prov['dvc_lock_hash_note']})"),
        ("references/paper_numbers.yaml sha256: ", Code(prov["references_sha256"])),
        f"MLflow: {prov['mlflow']}",
        "hardware (report host): " + ", ".join(f"{k} {fmt(v)}" for k, v in prov["hardware"].items())])
    return [Section("Provenance", 2, [facts]),
            Section("Stages", 3, [Table(STAGE_HEADER, [_stage_row(s, note) for s in prov["stages"]])]),
            Section("Outputs cited (hash as recorded in dvc.lock)", 3,
                    [Table(OUTPUT_HEADER, [_output_row(o) for o in prov["outputs"]])])]


def document(data: dict, root: Path, out_dir: Path) -> Document:
    """The report of ``data`` (report.json) for the checkout at ``root``, written to ``out_dir``.

    On a profile the ground-truth checks apply to (the demo) they are the signal and come above the
    paper tables; elsewhere they come after them.
    """
    checks = [_checks(data)]
    first = checks_first(data)
    sections = [_intro(data), _summary(data), *(checks if first else [])]
    for e in data["experiments"]:
        sections += _experiment(e, root, out_dir)
    sections += [*([] if first else checks), *_provenance(data)]
    return Document("Reproduction report", sections, CSS)
