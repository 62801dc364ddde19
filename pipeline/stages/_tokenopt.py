"""Shared by the token-optimisation stages: the tokenizer, random image samples, samples I/O.

Layout. The optimised images of stage ``<stage>`` (``tokenopt_edit``, ``tokenopt_generate``,
``tokenopt_inpaint``) are ``<paths.data>/tokenopt/<stage>/``: ``images.npz`` (compressed uint8 NHWC
arrays, named per stage) and ``records.json`` (one record per optimised image: prompt, class, seed,
final loss). They live under ``paths.data`` rather than ``paths.results`` because at paper scale the
generation alone is 50,000 images of 256 px (about 10 GB); ``eval_tokenopt`` reads them from there.
Each stage's sample grid is ``<paths.results>/<stage>/grid.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from pipeline.data.shards import read_manifest
from pipeline.data.transforms import decode_stored
from pipeline.errors import InputError
from pipeline.io import write_json
from pipeline.layout import prepared_root, samples_dir
from pipeline.models.titok import TiTok
from pipeline.params import Params
from pipeline.stages._common import load_chosen_titok

IMAGES_FILE = "images.npz"
RECORDS_FILE = "records.json"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(params: Params) -> tuple[TiTok, Path, torch.device]:
    """The TiTok named by ``tokenopt.tokenizer``, in eval mode, on :func:`device`; also its folder and the device."""
    titok, folder = load_chosen_titok(params, params.tokenopt.tokenizer, "tokenopt.tokenizer")
    dev = device()
    return titok.to(dev), folder, dev


@dataclass
class Sample:
    """Images drawn from a prepared split, in increasing split order."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) row of each image in the split


def sample_split(params: Params, split: str, n: int, seed: int, key: str) -> Sample:
    """``n`` images drawn without replacement from ``split`` (all of them if it has exactly ``n``).

    A random draw rather than a prefix: ImageNet splits are stored class by class. Only the parquet row
    groups holding drawn rows are read. ``key`` names the parameter that asked for ``n`` (for errors).
    """
    root = prepared_root(params)
    splits = read_manifest(root)["splits"]
    if split not in splits:
        raise InputError(f"{key}: the prepared data has no split {split!r} (splits: {', '.join(splits)})")
    info = splits[split]
    count = info["count"]
    if n > count:
        raise InputError(f"{key}: asks for {n} images but split {split!r} of {root} has {count}")
    wanted = np.sort(np.random.default_rng(seed).choice(count, n, replace=False)) if n < count else np.arange(count)
    images, labels, start = [], [], 0
    for shard in info["shards"]:
        rows = shard["rows"]
        local = wanted[(wanted >= start) & (wanted < start + rows)] - start
        start += rows
        if not len(local):
            continue
        file = pq.ParquetFile(root / shard["file"])
        sizes = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
        offsets = np.cumsum([0, *sizes])
        group_of = np.searchsorted(offsets, local, side="right") - 1  # row group of each drawn row
        groups = sorted(set(group_of.tolist()))
        table = file.read_row_groups(groups, columns=["image", "label"])
        table_start = dict(zip(groups, np.cumsum([0, *(sizes[g] for g in groups)]).tolist(), strict=False))
        picked = [table_start[g] + int(r - offsets[g]) for r, g in zip(local, group_of.tolist(), strict=True)]
        table = table.take(picked)
        images += [decode_stored(b) for b in table.column("image").to_pylist()]
        labels += table.column("label").to_pylist()
    return Sample(np.stack(images), np.asarray(labels, dtype=np.int64), wanted)


def to_model_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1] (antialiased resize when sizes differ)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x


def fill_class(prompt: str, name: str) -> str:
    """A prompt with ``{}`` replaced by the class name (prompts without one are used as they are)."""
    return prompt.replace("{}", name)


def save_samples(folder: Path, arrays: dict[str, np.ndarray], records: list[dict]) -> None:
    """Write ``images.npz`` (compressed; byte-identical for identical arrays) and ``records.json``."""
    with open(folder / IMAGES_FILE, "wb") as f:
        np.savez_compressed(f, **arrays)
    write_json(folder / RECORDS_FILE, records)


def check_samples(params: Params, stage: str) -> Path:
    """The folder of a token-optimisation stage's samples; :class:`InputError` when it has not run."""
    folder = samples_dir(params, stage)
    if not (folder / IMAGES_FILE).is_file() or not (folder / RECORDS_FILE).is_file():
        raise InputError(f"{folder}: no {IMAGES_FILE} / {RECORDS_FILE} there. Run `dvc repro {stage}` "
                         f"(or `python -m pipeline {stage}`) first")
    return folder


def load_samples(params: Params, stage: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The arrays and records a token-optimisation stage wrote."""
    folder = check_samples(params, stage)
    with np.load(folder / IMAGES_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / RECORDS_FILE).read_text())
