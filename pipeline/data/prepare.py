"""The prepare engine: images from the demo generator or ImageNet into a prepared-data folder.

One pass per split: the source lists tasks in a deterministic order, a pool of ``workers`` processes
decodes / renders and encodes them (``imap`` in chunks, so the order is kept), and the rows go into
parquet shards of ``shard_size`` images. Then ``manifest.json``, ``skipped.json`` and ``samples.png`` are
written; the format is described in :mod:`pipeline.data.shards`. The whole folder is built in a
temporary sibling and renamed into place at the end, so an interrupted run leaves no folder behind (or
the previous complete one).

Public API: ``open_demo`` / ``open_imagenet`` (a source, its per-image processing and its shard schema:
an ``Opened``), ``prepare(out, opened, ...)``, and the parallel machinery ``worker_pool`` /
``process_all``. The ``prepare`` stage (:mod:`pipeline.stages.prepare`) reads these values from params.yaml.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import islice
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.demo import SCHEMA as DEMO_SCHEMA
from pipeline.data.demo import DemoProcessing, DemoSource
from pipeline.data.imagenet import SCHEMA as IMAGENET_SCHEMA
from pipeline.data.imagenet import ImageNetFolder, ImageNetHF, Processing
from pipeline.data.shard_writer import MANIFEST, SAMPLES, SKIPPED, ShardWriter
from pipeline.data.transforms import Prepared, Skipped, apply, decode_stored
from pipeline.errors import InputError
from pipeline.io import atomic_dir, write_json

SAMPLES_PER_SPLIT = 10
CHUNK = 16  # tasks per worker round trip
WINDOW = 8  # chunks per worker in flight
Opened = tuple[Any, Any, Any]  # (source, per-image processing, shard schema)


def open_demo(seed: int, image_size: int, num_classes: int, per_class: dict[str, int], image_format: str,
              jpeg_quality: int) -> Opened:
    """The demo source (``per_class``: images per class of each split), its rendering and its shard schema."""
    source = DemoSource(seed, image_size, num_classes, per_class)
    return source, DemoProcessing(image_format, jpeg_quality), DEMO_SCHEMA


def open_imagenet(kind: str, root, splits, class_subset, max_per_class, synset_mapping, hf_dataset, *,
                  image_size: int, jpeg_draft: bool, image_format: str, jpeg_quality: int) -> Opened:
    """An ImageNet source (``kind``: ``imagenet_folder``, else the Hugging Face dataset ``hf_dataset``), its
    decoding and its shard schema.

    Opening it checks the input as a whole (raising ``InputError``) before any work starts.
    """
    processing = Processing(image_size, jpeg_draft, image_format, jpeg_quality)
    if kind == "imagenet_folder":
        source = ImageNetFolder(root, splits, class_subset, max_per_class, synset_mapping)
    else:
        source = ImageNetHF(hf_dataset, splits, class_subset, max_per_class, synset_mapping, root)
    return source, processing, IMAGENET_SCHEMA


@contextmanager
def worker_pool(workers: int) -> Iterator[Pool | None]:
    """A pool of ``workers`` processes, or None to work in this process when ``workers`` is 1.

    spawn: workers start clean (no inherited threads or locks) and import only the data modules.
    """
    if workers == 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool


def process_all(process, tasks: Iterable, pool: Pool | None, workers: int = 1) -> Iterator[Prepared | Skipped]:
    """``process`` over ``tasks``, results in task order.

    With a pool, tasks go out in windows of ``WINDOW`` chunks per worker, at most two windows ahead of
    the results being consumed: a streamed source (HF) is never read much faster than it is processed.
    """
    fn = partial(apply, process)
    if pool is None:
        yield from map(fn, tasks)
        return
    tasks, window = iter(tasks), WINDOW * CHUNK * workers
    pending: deque = deque()
    while batch := list(islice(tasks, window)):
        pending.append(pool.map_async(fn, batch, chunksize=CHUNK))
        if len(pending) > 2:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _samples_png(samples: dict[str, list[np.ndarray]], path: Path) -> None:
    """One row of images per split."""
    size = next((imgs[0].shape[0] for imgs in samples.values() if imgs), 0)
    if not size:
        return
    grid = np.full((size * len(samples), size * SAMPLES_PER_SPLIT, 3), 255, np.uint8)
    for r, imgs in enumerate(samples.values()):
        for c, img in enumerate(imgs):
            grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = img
    Image.fromarray(grid).save(path)


def prepare(out: Path, opened: Opened, *, seed: int, image_size: int, image_format: str, shard_size: int,
            workers: int, settings: dict, progress: bool = True) -> dict:
    """Build ``out`` (the prepared-data folder) atomically from an opened source; returns the manifest.

    ``opened``: what :func:`open_demo` / :func:`open_imagenet` return. ``settings``: the prepare parameters
    as JSON, recorded in the manifest (``params``); ``seed`` and ``image_size`` are recorded too.
    """
    source, process, schema = opened
    class_wnid = {c["index"]: c["wnid"] for c in source.classes}
    manifest: dict = {
        "format": "tokenizer-repro prepared shards v1",
        "source": source.name,
        "image_size": image_size,
        "image_format": image_format,
        "seed": seed,
        "params": settings,
        "classes": source.classes,
        "columns": schema.names,
        "splits": {},
        "skipped": {},
        "conversions": {},
    }
    report: dict = {"skipped": [], "repaired": []}
    samples: dict[str, list[np.ndarray]] = {}
    conversions: Counter = Counter()
    skip_kinds: Counter = Counter()
    with worker_pool(workers) as pool, atomic_dir(out) as tmp:
        for split in source.splits:
            writer = ShardWriter(tmp, split, shard_size, schema)
            per_class = dict.fromkeys(class_wnid.values(), 0)
            n_skipped = n_repaired = 0
            samples[split] = []
            results = process_all(process, source.tasks(split), pool, workers)
            for res in tqdm(results, total=source.length(split), desc=f"prepare {split}", unit="img",
                            disable=not progress, file=sys.stderr):
                if isinstance(res, Skipped):
                    report["skipped"].append({"split": split, "file": res.file, "kind": res.kind,
                                              "reason": res.detail})
                    skip_kinds[res.kind] += 1
                    n_skipped += 1
                    continue
                conversions.update(res.notes)
                if res.repaired:
                    report["repaired"].append({"split": split, "file": res.row.get("source_file", res.row["key"]),
                                               "notes": res.notes})
                    n_repaired += 1
                writer.add(res.row)
                per_class[class_wnid[res.row["label"]]] += 1
                if len(samples[split]) < SAMPLES_PER_SPLIT:
                    samples[split].append(decode_stored(res.row["image"]))
            if not sum(per_class.values()):
                raise InputError(f"the {split} split has no usable image ({n_skipped} inputs skipped, by kind: "
                                 f"{dict(skip_kinds)}); nothing was written. Check the input folder or dataset.")
            shards = writer.close()
            manifest["splits"][split] = {"count": sum(per_class.values()), "skipped": n_skipped,
                                         "repaired": n_repaired, "per_class": per_class, "shards": shards}
        manifest["skipped"] = dict(sorted(skip_kinds.items()))
        manifest["conversions"] = dict(sorted(conversions.items()))
        write_json(tmp / SKIPPED, report)
        write_json(tmp / MANIFEST, manifest)
        _samples_png(samples, tmp / SAMPLES)
    return manifest
