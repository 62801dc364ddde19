"""The ``prepare`` stage: images from the demo generator or ImageNet into ``<paths.data>/prepared/``.

The work is :mod:`pipeline.data.prepare`'s; this module reads ``prepare.*``, ``seed`` and ``image_size``
from params.yaml, runs it and logs the counts to MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.data import prepare as engine
from pipeline.data.shard_writer import MANIFEST, SAMPLES, SKIPPED
from pipeline.layout import prepared_root
from pipeline.params import Params


def open_source(params: Params) -> engine.Opened:
    """The source named by ``prepare.source``, its per-image processing and its shard schema.

    Opening a source checks the input as a whole (raising ``InputError``) before any work starts.
    """
    p = params.prepare
    if p.source == "demo":
        d = p.demo
        per_class = {"train": d.train_per_class, "val": d.val_per_class, "ood": d.ood_per_class}
        return engine.open_demo(params.seed, params.image_size, d.num_classes, per_class, p.image_format,
                                p.jpeg_quality)
    inet = p.imagenet
    hf_dataset = None if p.source == "imagenet_folder" else inet.hf_dataset
    return engine.open_imagenet(p.source, inet.root, inet.splits, inet.class_subset, inet.max_per_class,
                                inet.synset_mapping, hf_dataset, image_size=params.image_size,
                                jpeg_draft=p.jpeg_draft, image_format=p.image_format, jpeg_quality=p.jpeg_quality)


def prepare(params: Params, out: Path, progress: bool = True, opened: engine.Opened | None = None) -> dict:
    """Build ``out`` (the prepared-data folder) as params.yaml says, atomically; returns the manifest.

    ``opened`` is the result of :func:`open_source` when the caller has checked the input already.
    """
    p = params.prepare
    return engine.prepare(out, opened or open_source(params), seed=params.seed, image_size=params.image_size,
                          image_format=p.image_format, shard_size=p.shard_size, workers=p.workers,
                          settings=p.model_dump(mode="json"), progress=progress)


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
