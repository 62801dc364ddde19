"""Stage ``report`` (last in dvc.yaml): the reviewer's report, see :mod:`pipeline.report`.

Writes to ``<paths.results>/report/``, each file atomically:

- ``report.md`` and ``report.html`` (self-contained: figures embedded as base64 PNG): a summary
  table, then per experiment the table "reproduced vs paper" with a status per number, the stages'
  figures, the demo's ground-truth checks, and the provenance (git commit, profile, dvc.lock hashes,
  hardware, wall time and MLflow run id per stage);
- ``report.json``: everything the two documents show, read by ``python -m pipeline.verify``;
- ``summary.json`` (DVC metrics): how many paper numbers have each status, how many checks pass or fail.

The report cites no hash of its own outputs (they do not exist yet) and reads no clock.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import InputError
from pipeline.io import write_json, write_text
from pipeline.layout import REPORT_STAGE, report_dir, report_html, report_json, report_markdown, report_summary
from pipeline.params import Params
from pipeline.report import render
from pipeline.report.document import to_html, to_markdown
from pipeline.report.evaluate import STATUS_TEXT, build, summary
from pipeline.report.references import REFERENCES
from pipeline.tracking import stage_run

STAGE = REPORT_STAGE


def run(params: Params) -> int:
    """Write the reviewer's report (markdown, HTML, JSON) and its summary metrics."""
    root = Path.cwd()
    references = root / REFERENCES
    if not references.is_file():
        raise InputError(f"{references}: the paper numbers are missing (the file belongs to the repository)")
    try:
        # as report.json holds it: the two documents are a function of report.json, which verify re-renders
        data = json.loads(json.dumps(build(root, references), sort_keys=True, default=str))
    except ValueError as err:
        raise InputError(str(err)) from None
    out = report_dir(params)
    with stage_run(STAGE, params) as run:
        document = render.document(data, root, out)
        write_text(report_markdown(params), to_markdown(document))
        write_text(report_html(params), to_html(document))
        write_text(report_json(params), json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        counts = summary(data)
        write_json(report_summary(params), counts)
        run.log_metrics({"numbers": counts["numbers"], "ground_truth": counts["ground_truth"]})
        run.log_artifact(report_html(params))
    n = counts["numbers"]
    print(f"{STAGE}: {sum(n.values())} paper numbers: " + ", ".join(f"{STATUS_TEXT[k]} {v}" for k, v in n.items() if v))
    print(f"wrote {out}/report.md, report.html, report.json, summary.json")
    return 0
