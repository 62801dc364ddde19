"""Snapshot folders: weights and ``config.json`` read and written for any model; this module knows none.

A snapshot folder is what a model's ``from_pretrained`` reads and its ``save_pretrained`` writes (the
Hugging Face layout)::

    <folder>/config.json
    <folder>/model.safetensors      (preferred)  or  <folder>/pytorch_model.bin

Each model file owns the meaning of its ``config.json`` and its download hint (``TiTok``,
``MaskGITVQGAN``, ``ALIT``; ``LPIPS`` reads bare weights files); the helpers here only move tensors and
JSON, the way timm keeps ``load_checkpoint`` apart from each model's ``checkpoint_filter_fn``. So the
models import this module and it imports no model: there is no loader/model circle.

``pytorch_model.bin`` (and any non-safetensors file) is read with ``torch.load(weights_only=True)``:
no arbitrary unpickling. Loading is strict: every missing and unexpected key and every shape mismatch
is listed as ``key: expected (...), found (...)``, all at once.

:func:`build_and_load` builds a model on the meta device and assigns the file's tensors to it: the random
initialisation that loading would overwrite is never computed (seconds to a minute per multi-GB model on a
CPU), and the torch random stream is left as it was.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import InputError
from pipeline.io import atomic_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LAYOUT = "config.json + model.safetensors (or pytorch_model.bin)"
_SHOWN_KEYS = 20  # per kind of problem in a strict-load error; the rest are counted
M = TypeVar("M", bound=nn.Module)


def weights_file(folder: str | Path) -> Path | None:
    """The weights file of a snapshot folder (``model.safetensors`` before ``pytorch_model.bin``), if any."""
    folder = Path(folder)
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def read_json(path: str | Path) -> dict[str, Any]:
    """A ``config.json``, with an ``InputError`` naming the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from err


def read_state_dict(path: str | Path, *, map_location: str | torch.device = "cpu",
                    unwrap: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` state dict in a safetensors or ``torch.save`` file.

    ``unwrap``: keys of a training checkpoint (a dict of state dicts) to take the weights from, the first
    present one wins (ALIT's official ``.pth``: ``("ema", "model")``).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, SafetensorError) as err:
        raise InputError(f"cannot read weights file {path}: {err}\n  expected a safetensors file or a "
                         "torch state dict loadable with torch.load(weights_only=True)") from err
    if isinstance(state, dict):
        state = next((state[key] for key in unwrap if key in state), state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a flat state dict of tensors")
    return state


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path, *,
                           expected: str | None = None, hint: str | None = None, assign: bool = False) -> None:
    """``model.load_state_dict(strict=True)``, with an ``InputError`` that lists every offending key.

    ``source`` names the file in the message, ``expected`` what it should hold (default: the model's
    class name) and ``hint`` adds a line on what to check. ``assign``: the tensors replace the model's
    (``load_state_dict(assign=True)``, for a model built on the meta device, see :func:`build_and_load`),
    cast to the dtype the model declares, as a copy into them would.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: expected {tuple(v.shape)}, found {tuple(state_dict[k].shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f"weights in {source} do not fit {expected or type(model).__name__}"]
        for title, keys in (("shape mismatches", mismatched), ("missing keys", missing),
                            ("unexpected keys", unexpected)):
            if keys:
                more = len(keys) - _SHOWN_KEYS
                shown = keys[:_SHOWN_KEYS] + ([f"... and {more} more"] if more > 0 else [])
                lines.append(f"  {title} ({len(keys)}):\n    " + "\n    ".join(shown))
        if hint:
            lines.append(f"  {hint}")
        raise InputError("\n".join(lines))
    if assign:
        state_dict = _assignable(own, state_dict)
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _assignable(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` as tensors a model may take over: its dtypes, and no two keys sharing memory.

    A copying load casts to the parameter's dtype and gives each key its own memory; assigning must do
    the same, or a half-precision file would make a half-precision model and tensors that ``torch.save``
    stored shared (tied weights) would stay tied through training.
    """
    out, seen = {}, set()
    for key, value in state_dict.items():
        value = value.to(own[key].dtype)
        if value.numel():
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset())
            if ptr in seen:
                value = value.clone()
            seen.add(ptr)
        out[key] = value
    return out


def build_and_load(build: Callable[[], M], state_dict: Mapping[str, torch.Tensor], source: str | Path, *,
                   expected: str | None = None, hint: str | None = None) -> M:
    """``build()`` with the weights of ``state_dict`` (strictly, as :func:`load_state_dict_strict`), never initialised.

    The model is built on the meta device (shapes, no memory, no random numbers) and the file's tensors
    are assigned to it. A model whose tensors are not all in its state dict (non-persistent buffers)
    cannot be built this way: it is refused rather than left with meta tensors.
    """
    with torch.device("meta"):
        model = build()
    persistent = model.state_dict().keys()
    meta_only = [name for name, _ in model.named_buffers() if name not in persistent]
    if meta_only:
        raise TypeError(f"{type(model).__name__} has non-persistent buffers ({', '.join(meta_only)}) that "
                        "build_and_load cannot fill; build it on the CPU and load_state_dict_strict instead")
    load_state_dict_strict(model, state_dict, source, expected=expected, hint=hint, assign=True)
    return model


def write_snapshot(folder: str | Path, config: dict[str, Any], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write ``model.safetensors`` and ``config.json`` (``config`` as indented JSON) into ``folder``.

    Each file is written to a temporary sibling and renamed into place, so an interrupted save never
    leaves a truncated weights file that a later ``from_pretrained`` would take for a checkpoint.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_file(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    with atomic_file(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=1) + "\n")
