"""Helpers shared by the stage modules: the chosen TiTok, checkpoints, image grids."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic_core import to_jsonable_python

from pipeline.data.shards import read_manifest
from pipeline.layout import checkpoints_root, prepared_root, titok_dir
from pipeline.metrics.images import to_uint8_hwc
from pipeline.params import Params


def load_chosen_titok(params: Params, choice: Any, key: str) -> tuple[Any, Path]:
    """The TiTok a ``TokenizerChoice`` names (ours, or an official snapshot folder), in eval mode.

    ``key`` is the choice's dotted path in params.yaml, used in the error message.
    """
    from pipeline.errors import InputError
    from pipeline.models.titok import TiTok

    folder = Path(choice.folder) if choice.source == "official" else titok_dir(params)
    if choice.source != "official" and not (folder / "config.json").is_file():
        raise InputError(f"{folder}/config.json: no TiTok there (ours comes from train_titok). Train it "
                         f"first (`dvc repro train_titok`), or set {key}.source: official and {key}.folder "
                         "to an official snapshot folder (config.json + model.safetensors)")
    return TiTok.from_pretrained(folder).eval(), folder


CODE_ROOT = Path(__file__).resolve().parent.parent  # the pipeline package


def _tree_digest(folder: Path, pattern: str) -> str:
    """sha1 over the relative paths and contents of the files under ``folder`` matching ``pattern``."""
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def checkpoint_dir(params: Params, stage: str, *sections: Any, inputs: Sequence[Path] = ()) -> Path:
    """Where a training stage keeps its resumable checkpoints: keyed by everything that shapes the run.

    Not a DVC output (Snakemake deletes outputs before a rerun): ``<paths.models>/checkpoints/<stage>-<hash>``,
    the hash over the parameters ``sections``, the prepared data, the upstream model folders ``inputs``
    (e.g. the VQGAN TiTok learns from) and the code of the whole ``pipeline`` package, so a resumed run
    only ever continues the same configuration of the same code on the same inputs: after any change a
    new run starts afresh (a superset of the stage's code, on purpose: a stale resume is the costly error).
    """
    manifest = read_manifest(prepared_root(params))
    shards = json.dumps(manifest["splits"], sort_keys=True, default=str)
    key = json.dumps([params.seed, params.image_size, [s.model_dump(mode="json") if hasattr(s, "model_dump")
                                                       else to_jsonable_python(s) for s in sections], shards,
                      [_tree_digest(Path(p), "*") for p in inputs], _tree_digest(CODE_ROOT, "*.py")],
                     sort_keys=True, default=str)
    return checkpoints_root(params) / f"{stage}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


TIMING_KEYS = ("images_per_s", "step_s")  # logged to MLflow only: outputs must not depend on the clock


def final_metrics(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """The last logged training metrics for a metrics file: prefixed, without wall-clock timings."""
    return {f"{prefix}{k}": float(v) for k, v in sorted(metrics.items()) if k not in TIMING_KEYS}


def prefixed_logger(run: Any, prefix: str) -> Any:
    """A ``log_fn`` for the training loop that logs to ``run`` with every key prefixed."""

    def log(metrics: dict[str, float], step: int) -> None:
        run.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)

    return log


def remove_checkpoints(path: Path) -> None:
    """Drop a finished run's checkpoints (the stage output holds the final weights)."""
    shutil.rmtree(path, ignore_errors=True)


def save_image_grid(rows: Sequence[torch.Tensor], path: Path, labels: Sequence[str] | None = None,
                    title: str | None = None) -> None:
    """Save rows of images (each (N, 3, H, W) in [0, 1]) as one PNG grid, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_file

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.1 * n_cols + 0.8, 1.1 * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        imgs = to_uint8_hwc(row)
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c], interpolation="nearest")
        if labels:
            axes[r][0].text(-0.1, 0.5, labels[r], transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
