"""The ``prepare`` stage: images from the demo generator or ImageNet into ``<paths.data>/prepared/``.

One pass per split: the source lists tasks in a deterministic order, a pool of ``prepare.workers``
processes decodes / renders and encodes them (``imap`` in chunks, so the order is kept), and the rows
go into parquet shards of ``prepare.shard_size`` images. Then ``manifest.json``, ``skipped.json`` and
``samples.png`` are written; the format is described in :mod:`pipeline.data.shards`. The whole folder
is built in a temporary sibling and renamed into place at the end, so an interrupted run leaves no
``prepared/`` behind (or the previous complete one).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import islice
from multiprocessing.pool import Pool
from pathlib import Path

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
from pipeline.layout import prepared_root
from pipeline.params import Params

SAMPLES_PER_SPLIT = 10
CHUNK = 16  # tasks per worker round trip
WINDOW = 8  # chunks per worker in flight


def open_source(params: Params):
    """The source named by ``prepare.source``, its per-image processing and its shard schema.

    Opening a source checks the input as a whole (raising ``InputError``) before any work starts.
    """
    p = params.prepare
    if p.source == "demo":
        d = p.demo
        per_class = {"train": d.train_per_class, "val": d.val_per_class, "ood": d.ood_per_class}
        source = DemoSource(params.seed, params.image_size, d.num_classes, per_class)
        return source, DemoProcessing(p.image_format, p.jpeg_quality), DEMO_SCHEMA
    inet = p.imagenet
    processing = Processing(params.image_size, p.jpeg_draft, p.image_format, p.jpeg_quality)
    if p.source == "imagenet_folder":
        source = ImageNetFolder(inet.root, inet.splits, inet.class_subset, inet.max_per_class,
                                inet.synset_mapping)
    else:
        source = ImageNetHF(inet.hf_dataset, inet.splits, inet.class_subset, inet.max_per_class,
                            inet.synset_mapping, inet.root)
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


def prepare(params: Params, out: Path, progress: bool = True, opened: tuple | None = None) -> dict:
    """Build ``out`` (the prepared-data folder) atomically; returns the manifest.

    ``opened`` is the result of :func:`open_source` when the caller has checked the input already.
    """
    source, process, schema = opened or open_source(params)
    p = params.prepare
    class_wnid = {c["index"]: c["wnid"] for c in source.classes}
    manifest: dict = {
        "format": "tokenizer-repro prepared shards v1",
        "source": source.name,
        "image_size": params.image_size,
        "image_format": p.image_format,
        "seed": params.seed,
        "params": p.model_dump(mode="json"),
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
    with worker_pool(p.workers) as pool, atomic_dir(out) as tmp:
        for split in source.splits:
            writer = ShardWriter(tmp, split, p.shard_size, schema)
            per_class = dict.fromkeys(class_wnid.values(), 0)
            n_skipped = n_repaired = 0
            samples[split] = []
            results = process_all(process, source.tasks(split), pool, p.workers)
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


def run(params: Params) -> int:
    """``python -m pipeline prepare``: build ``<paths.data>/prepared`` and log it to MLflow."""
    from pipeline.tracking import stage_run

    out = prepared_root(params)
    opened = open_source(params)  # a whole-input failure stops here, before any run is recorded
    with stage_run("prepare", params) as tracked:
        start = time.perf_counter()
        manifest = prepare(params, out, opened=opened)
        seconds = time.perf_counter() - start  # for images/s; not in the manifest, which stays reproducible
        metrics = {"num_classes": len(manifest["classes"])}
        for split, info in manifest["splits"].items():
            metrics |= {f"{split}.count": info["count"], f"{split}.skipped": info["skipped"],
                        f"{split}.repaired": info["repaired"], f"{split}.shards": len(info["shards"])}
        total = sum(info["count"] for info in manifest["splits"].values())
        metrics["images_per_s"] = total / seconds
        tracked.log_metrics(metrics)
        for name in (MANIFEST, SKIPPED, SAMPLES):
            if (out / name).exists():
                tracked.log_artifact(out / name, "prepare")
    counts = ", ".join(f"{s} {i['count']}" for s, i in manifest["splits"].items())
    print(f"prepare: wrote {out} ({manifest['source']}: {counts}; skipped {sum(manifest['skipped'].values())})")
    return 0
