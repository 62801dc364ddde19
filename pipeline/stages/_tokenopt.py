"""Shared by the token-optimisation stages: the tokenizer, random image samples, samples I/O.

The random sample is library code (:func:`pipeline.data.shards.sample_split`); :func:`sample_split` here
reads its folder from params.

Layout. The optimised images of stage ``<stage>`` (``tokenopt_edit``, ``tokenopt_generate``,
``tokenopt_inpaint``) are ``<paths.data>/tokenopt/<stage>/``: ``images.npz`` (compressed uint8 NHWC
arrays, named per stage) and ``records.json`` (one record per optimised image: prompt, class, seed,
final loss). They live under ``paths.data`` rather than ``paths.results`` because at paper scale the
generation alone is 50,000 images of 256 px (about 10 GB); ``eval_tokenopt`` reads them from there.
Each stage's sample grid is ``<paths.results>/<stage>/grid.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.data import shards
from pipeline.data.shards import Sample
from pipeline.errors import InputError
from pipeline.io import write_json
from pipeline.layout import prepared_root, samples_dir
from pipeline.models.titok import TiTok
from pipeline.params import Params
from pipeline.stages._common import load_chosen_titok

IMAGES_FILE = "images.npz"
RECORDS_FILE = "records.json"


def device() -> torch.device:
    """CUDA when there is one; on the CPU, token optimisation runs with deterministic algorithms.

    Why: with two or more threads some CPU kernel of the loop's backward pass is not run-to-run
    deterministic (differences of ~1e-7 per step), and editing with a negative prompt, whose loss is a
    near-cancelling difference of two similarities, amplifies them: two ``dvc repro`` runs of the demo's
    ``tokenopt_edit`` on the same code gave different records for 37 of its 40 images. With
    ``torch.use_deterministic_algorithms`` two threads give the one-thread results, run after run.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.use_deterministic_algorithms(True)
    return torch.device("cpu")


def load_tokenizer(params: Params) -> tuple[TiTok, Path, torch.device]:
    """The TiTok named by ``tokenopt.tokenizer``, in eval mode, on :func:`device`; also its folder and the device."""
    titok, folder = load_chosen_titok(params, params.tokenopt.tokenizer, "tokenopt.tokenizer")
    dev = device()
    return titok.to(dev), folder, dev


def sample_split(params: Params, split: str, n: int, seed: int, key: str) -> Sample:
    """``n`` images drawn from ``split`` of the prepared data (:func:`pipeline.data.shards.sample_split`);
    ``key`` names the parameter that asked for ``n`` (for errors)."""
    return shards.sample_split(prepared_root(params), split, n, seed, key)


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
