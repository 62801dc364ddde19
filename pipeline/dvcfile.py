"""What ``dvc.yaml`` declares and ``dvc.lock`` records, read without DVC.

From ``dvc.yaml``: each stage's file outputs and their md5, and its params. From ``dvc.lock``: the md5 of
every output and the parameters that produced them.

Shared by the report (which cites every output with its md5 from dvc.lock), ``verify`` (which checks
the cited figures and numbers against the checkout) and the tracking module (which tags each MLflow run
with the md5 of the outputs it wrote, so the report can name the run behind dvc.lock). Paths are
resolved from ``params.yaml`` the way DVC resolves ``${...}``: a dotted :func:`pipeline.io.lookup`; a reference
params.yaml does not define is left as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from pipeline.io import MISSING, lookup

OUTPUT_KINDS = ("outs", "metrics", "plots")
_VAR = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def file_md5(path: Path) -> str:
    """Hex MD5 of a file's bytes (what dvc.lock records for a file output)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _resolve(text: str, params: dict) -> str:
    def sub(m: re.Match) -> str:
        value = lookup(params, m.group(1))
        return m.group(0) if value is MISSING else str(value)

    return _VAR.sub(sub, text)


def _entry_path(entry: Any) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else str(entry)


def dvc_stages(root: Path, params: dict) -> dict[str, dict[str, list[str]]]:
    """``{stage: {"outs": [...], "metrics": [...], "plots": [...]}}`` from dvc.yaml, paths resolved."""
    data = yaml.safe_load((root / "dvc.yaml").read_text()) if (root / "dvc.yaml").is_file() else None
    stages: dict[str, dict[str, list[str]]] = {}
    for name, st in ((data or {}).get("stages") or {}).items():
        stages[name] = {kind: [os.path.normpath(_resolve(_entry_path(e), params)) for e in st.get(kind) or []]
                        for kind in OUTPUT_KINDS}
    return stages


def _stage_entry(root: Path, dvc_stage: str) -> dict:
    data = yaml.safe_load((root / "dvc.yaml").read_text()) if (root / "dvc.yaml").is_file() else None
    return ((data or {}).get("stages") or {}).get(dvc_stage) or {}


def declared_params(dvc_stage: str, root: Path | None = None) -> list[str]:
    """The params.yaml keys ``dvc_stage`` declares under ``params:`` (what DVC watches), in order."""
    entry = _stage_entry(Path.cwd() if root is None else root, dvc_stage)
    keys: list[str] = []
    for item in entry.get("params") or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):  # {file: [keys]}: only params.yaml is ever used here
            keys += [k for ks in item.values() for k in ks or []]
    return keys


def interpolated_keys(dvc_stage: str, root: Path | None = None) -> set[str]:
    """The params.yaml keys ``dvc_stage``'s entry interpolates with ``${...}`` (its paths, e.g. ``paths.models``)."""
    entry = _stage_entry(Path.cwd() if root is None else root, dvc_stage)
    return set(_VAR.findall(yaml.safe_dump(entry)))


def output_digests(dvc_stage: str, root: Path | None = None) -> dict[str, str]:
    """``{path: md5}`` of the file outputs dvc.yaml declares for ``dvc_stage`` that exist (not directories)."""
    root = Path.cwd() if root is None else root
    params_file = root / "params.yaml"
    params = (yaml.safe_load(params_file.read_text()) or {}) if params_file.is_file() else {}
    declared = dvc_stages(root, params).get(dvc_stage) or {}
    paths = [p for kind in OUTPUT_KINDS for p in declared.get(kind, [])]
    return {p: file_md5(root / p) for p in paths if (root / p).is_file()}


def read_lock(root: Path, without: str) -> tuple[dict[str, dict[str, str | None]], str | None]:
    """``({stage: {out path: md5}}, canonical sha256)`` of ``dvc.lock`` leaving out stage ``without``;
    ``({}, None)`` when there is no dvc.lock.

    The hash is the sha256 of the lock as canonical JSON (sorted keys). The report leaves its own stage
    out: DVC rewrites that entry after the report has run, so a hash of the raw file could never match
    the one the report cites. Parsed with PyYAML, unlike :func:`load_lock`: the hash must stay the one
    reports already cite, and YAML 1.2 reads some values (3e-05) differently.
    """
    path = root / "dvc.lock"
    if not path.is_file():
        return {}, None
    lock = yaml.safe_load(path.read_text()) or {}
    stages = {k: v for k, v in (lock.get("stages") or {}).items() if k != without}
    canonical = json.dumps({"schema": lock.get("schema"), "stages": stages}, sort_keys=True, default=str)
    outs = {name: {os.path.normpath(o["path"]): o.get("md5") for o in st.get("outs") or []}
            for name, st in stages.items()}
    return outs, hashlib.sha256(canonical.encode()).hexdigest()


def parse_lock(text: str) -> dict:
    """The text of a ``dvc.lock`` as DVC reads it (YAML 1.2: DVC writes 3e-05 without a dot, which PyYAML,
    YAML 1.1, would read as a string); ``{}`` when empty."""
    return YAML(typ="safe").load(text) or {}


def load_lock(root: Path) -> dict:
    """``root``'s ``dvc.lock`` (:func:`parse_lock`); ``{}`` when absent."""
    path = root / "dvc.lock"
    return parse_lock(path.read_text()) if path.is_file() else {}


def lock_param_mismatches(root: Path, params: dict, without: str) -> list[str]:
    """Where the parameters dvc.lock records for the outputs differ from params.yaml now.

    The outputs were produced by the lock's values: a report (or a verdict) that reads params.yaml
    after, say, ``configure paper`` without a rerun would describe outputs by parameters that did not
    produce them. One line per stage and key, with both values; stage ``without`` (the report's own
    entry, whose recorded values describe the previous report, not the outputs) is left out.
    """
    lock = load_lock(root)
    problems = []
    for stage, entry in sorted((lock.get("stages") or {}).items()):
        if stage == without:
            continue
        for key, recorded in sorted(((entry.get("params") or {}).get("params.yaml") or {}).items()):
            now = lookup(params, key)
            if now is MISSING or now != recorded:
                shown = "missing" if now is MISSING else json.dumps(now, default=str)[:80]
                problems.append(f"{stage}: {key}: dvc.lock {json.dumps(recorded, default=str)[:80]}, "
                                f"params.yaml {shown}")
    return problems
