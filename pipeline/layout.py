"""Where the pipeline's artefacts live on disk, from ``params.yaml``'s ``paths``: every artefact path is built here.

Stage side only (it reads the ``paths`` section of ``Params``): the library is handed these folders as plain
paths. Each function takes the validated ``Params`` or just its ``Paths`` section (:func:`paths_of` reads
the latter from a params.yaml loaded as a plain dict, as the report and ``pipeline.verify`` do), and
returns a path relative to the repository root. ``dvc.yaml`` declares the same paths as strings (its
``outs``), which is where DVC and Snakemake read them; the two must agree (``tests/test_stage_deps.py``,
the end-to-end tests). What lives where:

- ``<paths.data>/prepared``: :func:`prepared_root`; ``<paths.data>/tokenopt``: :func:`samples_dir`,
  :func:`fid_reference_cache`;
- ``<paths.models>``: :func:`vqgan_dir`, :func:`titok_dir`, :func:`alit_dir`, :func:`trained_clip_dir`
  (with the judge in :data:`JUDGE_SUBDIR`), :func:`checkpoints_root`;
- ``<paths.results>``: :func:`results_dir` per stage, the report's files (:func:`report_dir` and the
  ``report_*`` functions), the seed sweep's summary (:func:`sweep_dir`, :func:`sweep_summary_json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.params import Params, Paths

JUDGE_SUBDIR = "judge"  # the demo judge's folder inside trained_clip_dir
REPORT_STAGE = "report"  # the report stage, and its folder under paths.results


def paths_of(raw: dict[str, Any] | None) -> Paths:
    """The ``paths`` of a params.yaml read as a plain dict (report, verify), defaults for missing keys."""
    section = (raw or {}).get("paths") or {}
    return Paths(**{k: str(v) for k, v in section.items() if k in Paths.model_fields})


def _paths(p: Params | Paths) -> Paths:
    # a stage's Params arrive wrapped in param_reads.RecordingView when reads are recorded (the tests'
    # dvc.yaml check), which is no Params instance: ask for the section unless given one
    return p if isinstance(p, Paths) else p.paths


# --- <paths.data> ----------------------------------------------------------------------------------


def prepared_root(p: Params | Paths) -> Path:
    """Written by ``prepare`` (shards + manifest); read by every stage that takes images, and preflight."""
    return Path(_paths(p).data) / "prepared"


def samples_dir(p: Params | Paths, stage: str) -> Path:
    """Written by the tokenopt stage ``stage`` (``images.npz``, ``records.json``); read by ``eval_tokenopt``."""
    return Path(_paths(p).data) / "tokenopt" / stage


def fid_reference_cache(p: Params | Paths) -> Path:
    """Written and read by ``eval_tokenopt``: the cached FID reference statistics."""
    return Path(_paths(p).data) / "tokenopt" / "fid_reference.npz"


# --- <paths.models> --------------------------------------------------------------------------------


def vqgan_dir(p: Params | Paths) -> Path:
    """Written by ``train_vqgan``; read by ``train_titok`` and (by default) ``train_alit``."""
    return Path(_paths(p).models) / "vqgan"


def titok_dir(p: Params | Paths) -> Path:
    """Written by ``train_titok``; read by ``eval_titok`` and, when they choose ours, the experiments."""
    return Path(_paths(p).models) / "titok"


def alit_dir(p: Params | Paths) -> Path:
    """Written by ``train_alit``; read by ``eval_alit``."""
    return Path(_paths(p).models) / "alit"


def trained_clip_dir(p: Params | Paths) -> Path:
    """Written by ``train_clip`` (open_clip ``local-dir`` layout, the judge in ``judge/``); read by ``_inputs``."""
    return Path(_paths(p).models) / "clip"


def checkpoints_root(p: Params | Paths) -> Path:
    """Written and read by the training stages (resumable checkpoints, not DVC outputs; see ``checkpoint_dir``)."""
    return Path(_paths(p).models) / "checkpoints"


# --- <paths.results> -------------------------------------------------------------------------------


def results_root(p: Params | Paths) -> Path:
    """Holds every stage's results folder; read whole by the report (and verify) to find cited files."""
    return Path(_paths(p).results)


def results_dir(p: Params | Paths, stage: str) -> Path:
    """Written by stage ``stage`` (its folder, named after it): metrics, details, figures; read by the report."""
    return results_root(p) / stage


def report_dir(p: Params | Paths) -> Path:
    """Written by the ``report`` stage; read by ``pipeline.verify``."""
    return results_dir(p, REPORT_STAGE)


def report_json(p: Params | Paths) -> Path:
    """Written by the ``report`` stage (everything the report says); read by ``pipeline.verify``."""
    return report_dir(p) / "report.json"


def report_markdown(p: Params | Paths) -> Path:
    """Written by the ``report`` stage; re-rendered and compared by ``pipeline.verify``."""
    return report_dir(p) / "report.md"


def report_html(p: Params | Paths) -> Path:
    """Written by the ``report`` stage (logged to MLflow); re-rendered and compared by ``pipeline.verify``."""
    return report_dir(p) / "report.html"


def report_summary(p: Params | Paths) -> Path:
    """Written by the ``report`` stage (its DVC metrics: verdict counts); read by DVC."""
    return report_dir(p) / "summary.json"


def sweep_dir(p: Params | Paths) -> Path:
    """Written by ``pipeline.sweep`` (the seed sweep's summary); read by the report."""
    return results_root(p) / "sweep"


def sweep_summary_json(p: Params | Paths) -> Path:
    """Written by ``pipeline.sweep`` (spread per metric); read by the report (``report/spread.py``)."""
    return sweep_dir(p) / "summary.json"


def sweep_summary_md(p: Params | Paths) -> Path:
    """Written by ``pipeline.sweep`` for people; read by nobody in the pipeline."""
    return sweep_dir(p) / "summary.md"
