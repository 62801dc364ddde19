"""Training checkpoints: atomic writes, ``weights_only`` loads, clear errors naming the file.

A checkpoint is one ``torch.save`` file ``<run_dir>/ckpt-<step:08d>.pt`` holding only tensors and
plain Python values (dicts, lists, tuples, numbers, strings), so that it loads with
``torch.load(weights_only=True)``. Keys: ``format``, ``step``, ``data`` (epoch / samples seen in the
epoch), ``model``, ``ema``, ``discriminator``, ``optimizer``, ``disc_optimizer``, ``scaler``,
``rng`` (one entry per rank), ``config``, ``history`` (the metrics logged so far, one dict per window).
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.io import atomic_file
from pipeline.models.checkpoints import load_state_dict_strict

FORMAT = 1
_NAME = re.compile(r"ckpt-(\d{8})\.pt$")


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if _NAME.search(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep only the newest ``keep`` files."""
    path = checkpoint_path(run_dir, step)
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True``; a bad file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is corrupt, truncated or not a training checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Delete it to resume from "
            f"the previous checkpoint in {path.parent}, or start the run afresh.") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of format {FORMAT} "
                              f"(found keys {sorted(state)[:8] if isinstance(state, dict) else type(state)})")
    return state


def load_module(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``module.load_state_dict(state)`` strictly, every key and shape mismatch reported against ``path``.

    The package's one strict loader (:func:`pipeline.models.checkpoints.load_state_dict_strict`), its error
    raised as a :class:`CheckpointError`: resuming stops on a checkpoint, not on a weights file.
    """
    try:
        load_state_dict_strict(module, state, path, expected=f"the {what}",
                               hint="was the checkpoint written for another configuration?")
    except InputError as err:
        raise CheckpointError(str(err)) from None


def rng_state() -> dict[str, Any]:
    """This process's random-number-generator states, as plain types and tensors."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
