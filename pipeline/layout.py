"""Where the pipeline's artefacts live on disk, from ``params.yaml``'s ``paths``: one home per folder.

Stage side only (it reads ``Params``): the library is handed these folders as plain paths. The folders
that more than one module needs, in particular the library's readers, are named here:

- :func:`prepared_root`: ``<paths.data>/prepared``, the ``prepare`` stage's shards and manifest
  (``pipeline.data.shards`` describes the layout);
- :func:`trained_clip_dir`: ``<paths.models>/clip``, the demo CLIP ``train_clip`` trains, with the
  independent judge in its :data:`JUDGE_SUBDIR` subfolder.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import Params

JUDGE_SUBDIR = "judge"  # the demo judge's folder inside trained_clip_dir


def prepared_root(params: Params) -> Path:
    """The prepared-data folder written by the ``prepare`` stage."""
    return Path(params.paths.data) / "prepared"


def trained_clip_dir(params: Params) -> Path:
    """Where ``train_clip`` writes the demo CLIP (open_clip ``local-dir`` layout); the judge is in ``judge/``."""
    return Path(params.paths.models) / "clip"
