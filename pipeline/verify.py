"""``python -m pipeline.verify``: check a finished checkout against its report.

Its own entry point, not a subcommand of ``python -m pipeline``: every stage's command runs
``pipeline/__main__.py``, so whatever that module imports is a dependency of every stage, and the
verifier (with the report code it reads) would make every stage stale when it changes.

Reads ``<paths.results>/report/report.json`` (written with report.md by the ``report`` stage) and checks:

1. dvc.lock still has the hash the report cites (canonical JSON without the report stage's entry);
2. every output the report cites exists, the md5 the report cites is the one in dvc.lock, and the
   content on disk hashes to it. Hashes come from DVC's own code (``dvc_data`` build, honouring
   .dvcignore): md5 of the content for a file, the ``.dir`` md5 for a folder;
3. every figure shown has the md5 the report printed;
4. every number shown equals the value in its file now (a stage's details.json), and report.md shows it;
5. report.md and report.html are what report.json renders to, and every verdict of report.json
   (paper rows and ground-truth checks) is what the metrics files and the paper numbers give now;
   summary.json agrees with report.json; every spread across seeds is the one the sweep summary gives now;
6. params.yaml holds the parameters dvc.lock records for the outputs (after ``configure`` without a
   rerun it does not, and the report would describe the outputs by parameters that did not make them).

Prints one line per problem and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from pipeline.dvcfile import file_md5, lock_param_mismatches, read_lock
from pipeline.io import MISSING, lookup
from pipeline.layout import (
    REPORT_STAGE,
    paths_of,
    report_dir,
    report_html,
    report_json,
    report_markdown,
    report_summary,
)
from pipeline.params import Paths
from pipeline.report import render
from pipeline.report.document import to_html, to_markdown
from pipeline.report.evaluate import build, fmt, numbers_cited, read_json, summary


def dvc_hashes(root: Path, paths: set[str]) -> dict[str, str]:
    """Current md5 (``.dir`` for folders) of the stage outputs at ``paths``, computed by DVC."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    found: dict[str, str] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                rel = os.path.normpath(os.path.relpath(out.fs_path, str(root)))
                if rel in paths and (root / rel).exists():
                    _, _, obj = build(out.local_cache, out.fs_path, out.fs, out.hash_name, ignore=out.dvcignore,
                                      dry_run=True)
                    found[rel] = obj.hash_info.value
    return found


def _md_lines(md: str) -> dict[str, str]:
    """report.md table lines keyed by the row id in their first cell."""
    lines = {}
    for line in md.splitlines():
        if line.startswith("| `"):
            lines.setdefault(line[3:].split("`", 1)[0], "")
            lines[line[3:].split("`", 1)[0]] += line + "\n"
    return lines


def verify(root: Path) -> list[str]:
    """The problems found in the checkout at ``root`` (empty: everything matches)."""
    root = Path(root)
    params = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").is_file() else {}
    paths = paths_of(params)
    json_path = root / report_json(paths)
    if not json_path.is_file():
        return [f"{json_path.relative_to(root)}: missing: run `dvc repro` (the report stage writes it)"]
    data = json.loads(json_path.read_text())
    problems: list[str] = []

    problems += [f"params.yaml differs from what produced the outputs: {m}"
                 for m in lock_param_mismatches(root, params or {}, without=REPORT_STAGE)]
    lock_outs, lock_sha = read_lock(root, without=REPORT_STAGE)
    cited_sha = data["provenance"]["dvc_lock_sha256"]
    if lock_sha != cited_sha:
        problems.append(f"dvc.lock: hash {lock_sha} (without the report stage), the report cites {cited_sha}: "
                        "the pipeline changed after the report was written")

    outputs = data["provenance"]["outputs"]
    current = dvc_hashes(root, {o["path"] for o in outputs if (root / o["path"]).exists()})
    for o in outputs:
        path, cited = o["path"], o["md5"]
        locked = (lock_outs.get(o["stage"]) or {}).get(path)
        if not (root / path).exists():
            problems.append(f"{path}: missing (stage {o['stage']})")
        elif cited is None or locked is None:
            problems.append(f"{path}: not recorded in dvc.lock (stage {o['stage']}): run `dvc repro` or `dvc commit`")
        elif cited != locked:
            problems.append(f"{path}: the report cites md5 {cited}, dvc.lock has {locked}")
        elif current.get(path) != locked:
            problems.append(f"{path}: content md5 {current.get(path)} does not match dvc.lock {locked} (modified)")

    for e in data["experiments"]:
        for f in e["figures"]:
            p = root / f["path"]
            if not p.is_file():
                problems.append(f"{f['path']}: figure missing")
            elif file_md5(p) != f["md5"]:
                problems.append(f"{f['path']}: figure md5 {file_md5(p)}, the report shows {f['md5']}")

    md_path = root / report_markdown(paths)
    md_rows = _md_lines(md_path.read_text()) if md_path.is_file() else {}
    if not md_path.is_file():
        problems.append(f"{md_path.relative_to(root)}: missing")
    cache: dict[str, object] = {}
    for n in numbers_cited(data):
        if n["path"] not in cache:
            cache[n["path"]] = read_json(root / n["path"])
        metrics = cache[n["path"]]
        if metrics is None:
            problems.append(f"{n['path']}: missing (the report shows {n['key']} = {fmt(n['value'])})")
            continue
        now = lookup(metrics, n["key"])
        if now is MISSING or now != n["value"]:
            shown = "absent" if now is MISSING else fmt(now)
            problems.append(f"{n['path']}: {n['key']} is {shown}, the report shows {fmt(n['value'])} "
                            f"(row {n['id']})")
        if md_path.is_file() and fmt(n["value"]) not in md_rows.get(n["id"], ""):
            problems.append(f"{md_path.relative_to(root)}: row {n['id']} does not show {n['key']} = "
                            f"{fmt(n['value'])}")

    problems += _documents(root, paths, data)
    problems += _verdicts(root, data)

    summary_path = root / report_summary(paths)
    if summary_path.is_file():
        if json.loads(summary_path.read_text()) != json.loads(json.dumps(summary(data))):
            problems.append(f"{summary_path.relative_to(root)}: does not match report.json")
    else:
        problems.append(f"{summary_path.relative_to(root)}: missing")
    return problems


def _documents(root: Path, paths: Paths, data: dict) -> list[str]:
    """report.md and report.html are exactly what report.json renders to (an edited word shows up)."""
    problems = []
    out_dir = root / report_dir(paths)
    for file, emit in ((report_markdown(paths), to_markdown), (report_html(paths), to_html)):
        path = root / file
        if not path.is_file():
            continue  # reported above (report.md) or by the output checks
        try:
            expected = emit(render.document(data, root, out_dir))
        except (OSError, KeyError) as err:  # a figure gone, a report.json without a field
            problems.append(f"{path.relative_to(root)}: cannot be re-rendered from report.json ({err})")
            continue
        if path.read_text() != expected:
            problems.append(f"{path.relative_to(root)}: differs from what report.json renders to (edited by hand?)")
    return problems


def _verdicts(root: Path, data: dict) -> list[str]:
    """Every verdict of report.json, recomputed from the metrics files and the paper numbers now."""
    try:
        fresh = build(root)
    except (ValueError, OSError) as err:
        return [f"the report's verdicts cannot be recomputed: {err}"]
    problems = []
    pairs = [(r, f) for e, fe in zip(data["experiments"], fresh["experiments"], strict=False)
             for r, f in zip(e["rows"], fe["rows"], strict=False)]
    pairs += list(zip(data["ground_truth"]["rows"], fresh["ground_truth"]["rows"], strict=False))
    if len(pairs) != sum(len(e["rows"]) for e in fresh["experiments"]) + len(fresh["ground_truth"]["rows"]):
        problems.append("report.json: its rows are not the rows of references/paper_numbers.yaml now")
    for shown, now in pairs:
        if shown.get("id") != now.get("id") or shown.get("status") != now.get("status"):
            problems.append(f"report.json: row {shown.get('id')} says {shown.get('status')}, recomputed from the "
                            f"metrics and paper numbers: {now.get('id')} {now.get('status')}")
        if shown.get("spread") != now.get("spread"):
            problems.append(f"report.json: row {shown.get('id')} shows the spread {shown.get('spread')}, the seed "
                            f"sweep's summary now gives {now.get('spread')}")
    return problems


def main(root: Path | str = ".") -> int:
    """Print the problems, or a one-line confirmation; 1 if anything does not match."""
    problems = verify(Path(root))
    for p in problems:
        print(f"MISMATCH {p}")
    if problems:
        print(f"verify: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("verify: every cited output matches dvc.lock and every number matches its metrics file")
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=Path("."), type=Path, help="the checkout (default: here)")
    sys.exit(main(parser.parse_args().root))
