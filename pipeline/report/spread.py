"""The spread across seeds beside the report's numbers, from a seed sweep's summary when it fits the checkout.

A sweep (``python -m pipeline.sweep``, :mod:`pipeline.sweep`) runs DVC experiments, so it cannot be a
stage of the pipeline it sweeps: ``dvc repro`` holds the repository's lock and an experiment inside a
stage would run the pipeline again. It writes ``results/sweep/summary.json`` outside ``dvc repro``, and
the report stays honest about it in two ways:

- **DVC sees it.** The report stage depends on the folder ``results/sweep`` (its committed README keeps
  it present when no sweep ran), so writing, replacing or deleting a summary makes ``dvc status`` flag
  the report, and ``dvc repro report`` rebuilds it; an optional file the report read without declaring it
  would leave a stale report that DVC calls up to date.
- **It shows only a sweep of this checkout.** The summary records, per stage it covers, the params
  (``seed`` aside) and the md5 of every non-output dep (code, references) of its experiments' dvc.lock
  (:func:`pipeline.sweep.fingerprint`). The spread is shown only when the workspace's dvc.lock has the
  same record for every covered stage; otherwise the report says which param or dep differs and shows
  the single run alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.dvcfile import load_lock
from pipeline.layout import sweep_summary_json
from pipeline.params import Paths
from pipeline.sweep import fingerprint, fingerprint_differences


def sweep_record(root: Path, paths: Paths) -> dict:
    """What the report says of a seed sweep: ``status`` ``absent``, ``other`` (with ``reason``) or ``shown``.

    ``shown`` and ``other`` carry the summary's ``path``, ``sweep`` id, ``seeds``, ``stages`` and
    ``experiments``; ``shown`` also its ``metrics`` (``{path: {key: spread}}``).
    """
    path = root / sweep_summary_json(paths)
    if not path.is_file():
        return {"status": "absent", "path": path.relative_to(root).as_posix()}
    summary = json.loads(path.read_text())
    record = {"path": path.relative_to(root).as_posix(),
              **{k: summary[k] for k in ("sweep", "seeds", "stages", "experiments", "std")}}
    diffs = fingerprint_differences(summary["fingerprint"], fingerprint(load_lock(root), summary["stages"]))
    if diffs:
        shown = "; ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        return {**record, "status": "other",
                "reason": f"its experiments ran other code or params than this checkout's dvc.lock: {shown}"}
    return {**record, "status": "shown", "metrics": summary["metrics"]}


def spread_of(sweep: dict, path: str, key: str) -> dict | None:
    """The sweep's spread of metric ``key`` of the file ``path`` (relative to the root), if it measured it."""
    if sweep["status"] != "shown":
        return None
    entry = (sweep["metrics"].get(path) or {}).get(key)
    return None if entry is None else {k: entry[k] for k in ("mean", "std", "min", "max", "n")}
