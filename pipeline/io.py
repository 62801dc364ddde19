"""Atomic outputs: a stage writes into a temporary sibling and renames it into place.

A killed stage therefore leaves either the previous complete output or nothing at the final path,
never a half-written file or folder that DVC or Snakemake would take as complete. Temporaries are
named ``.<name>.tmp-<pid>`` (git- and DVC-ignored) and stale ones are removed on the next attempt.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries left next to ``path`` by earlier, interrupted attempts."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        trash = path.parent / f".{path.name}.tmp-old-{os.getpid()}"
        path.rename(trash)
        tmp.rename(path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, path)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path that is renamed to ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _csv_cell(value: Any) -> Any:
    # 6 significant digits: a training curve is read by eye and diffed by DVC, not re-used as data
    return f"{value:.6g}" if isinstance(value, float) else "" if value is None else value


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` under the header ``columns``, atomically; a key a row lacks is an empty cell."""
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(row.get(c)) for c in columns] for row in rows)
    write_text(path, buffer.getvalue())


MISSING = object()  # what lookup returns for an absent key: None is a value a key can hold


def lookup(obj: Any, dotted: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"`` (a digit part indexes a list); :data:`MISSING` when any part is absent.

    The one dotted lookup of the package: DVC's ``${...}`` references, the parameters dvc.lock records,
    the report's metric keys and the headline keys of :func:`write_metrics`.
    """
    for part in dotted.split("."):
        if isinstance(obj, Mapping) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return MISSING
    return obj


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of nested mappings under dotted keys (``{"a": {"b": 1}}`` gives ``{"a.b": 1}``).

    An empty mapping has no leaves and leaves no key; a ``tree`` that is not a mapping is the one leaf
    ``{prefix: tree}``. The inverse of :func:`lookup` for mappings.
    """
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    return {key: leaf for name, value in tree.items()
            for key, leaf in flatten(value, f"{prefix}.{name}" if prefix else str(name)).items()}


def write_metrics(folder: str | os.PathLike[str], details: Mapping[str, Any], headline: Mapping[str, str]) -> dict:
    """Write a stage's numbers as ``metrics.json`` (the headline) and ``details.json`` (the full record).

    ``dvc metrics show`` prints every key of every metrics file as one column of one table, so a metrics
    file holds only the few scalars a person compares across runs: ``headline`` maps each flat name of
    ``metrics.json`` to the dotted key of ``details`` it shows (absent keys are left out, e.g. the
    training values of an imported model). ``details.json`` holds everything, headline included, under the
    same keys as before: the report and ``verify`` read it by key. Returns the headline written.
    """
    folder = Path(folder)
    found = {name: lookup(details, key) for name, key in headline.items()}
    shown = {name: value for name, value in found.items() if value is not MISSING and value is not None}
    if any(isinstance(v, Mapping | list) for v in shown.values()):
        raise ValueError(f"{folder}/metrics.json: headline values must be scalars, found {shown}")
    write_json(folder / "details.json", details)
    write_json(folder / "metrics.json", shown)
    return shown


CURVE_COLUMNS = ("step", "loss")  # first, and present even in the curve of a run that trained nothing


def write_curve(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """A training curve as a DVC plot (``x: step``): one CSV row per logged step, atomically.

    ``rows`` are what the run logged to MLflow every ``log_every`` steps (``TrainResult.history``):
    ``step``, ``loss``, then the other series (loss terms, codebook usage, ``lr``, ``images_per_s``) in
    name order. No rows (an imported model, a phase with 0 steps) leaves the header alone, which
    ``dvc plots`` shows as no plot.
    """
    rest = sorted({k for row in rows for k in row} - set(CURVE_COLUMNS))
    write_csv(path, rows, [*CURVE_COLUMNS, *rest])
