"""Sharded storage of prepared images, and the readers every other stage uses.

Layout of ``<paths.data>/prepared/`` (written by the ``prepare`` stage, atomically):

- ``<split>-00000.parquet``, ``<split>-00001.parquet``, ...: ``shard_size`` images per file, row
  groups of at most ``ROW_GROUP`` rows. Columns: ``image`` (PNG or JPEG bytes of the
  ``image_size x image_size`` RGB image), ``label`` (int64 class index), ``key`` (stable id), then
  metadata: ``caption`` always; the demo factors for the demo; ``wnid``, ``source_file``,
  ``orig_width``, ``orig_height`` for ImageNet.
- ``manifest.json``: ``source``, ``image_size``, ``image_format``, ``seed``, ``params`` (the prepare
  parameters), ``classes`` (``[{index, wnid, name}]``), ``columns``, ``skipped`` (count per kind),
  ``conversions`` (count per conversion, e.g. ``"CMYK -> RGB"``), and per split ``count``,
  ``per_class`` (wnid -> count), ``skipped``, ``repaired`` and ``shards``
  (``[{file, rows, row_groups, sha256}]``).
- ``skipped.json``: ``{"skipped": [{split, file, kind, reason}], "repaired": [{split, file, notes}]}``:
  every input left out, and every damaged or mislabelled one that was converted and kept.
- ``samples.png``: a few images of each split, for a quick look.

Readers (the API other stages rely on):

- ``read_manifest(root) -> dict``; ``manifest_class_names(root) -> list[str]``, in label order;
  ``image_protocol(manifest, split)``: what the prepared images of a split are, in the words of an
  evaluation protocol (dataset, image size, crop, how the pixels were made), for metrics files;
- ``load_split(root, split, limit=None) -> SplitData``: a whole (small) split in memory:
  ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,), ``meta`` (one dict of all non-image columns
  per row), in file order;
- ``sample_split(root, split, n, seed, key="n") -> Sample``: ``n`` images drawn at random without
  replacement (``images``, ``labels``, ``indices``: the row of each in the split), in increasing split
  order, reading only the row groups that hold drawn rows;
- ``training_images(root, seed, split="train")``: a training split as a ``Dataset`` of
  ``(image float (3, H, W) in [0, 1], label)``: :class:`ImageTensors` in memory when small, else a
  shuffled :class:`ShardDataset`;
- ``ShardDataset(root, split, seed=0, shuffle=True)``: a ``torch.utils.data.IterableDataset`` that
  streams ``(image float32 (3, H, W) in [0, 1], label int)``. Work is split across DataLoader workers
  and DDP ranks (``torch.distributed``, when initialised) by row group (by row where there are fewer
  row groups than readers, as in tiny demo splits); with shuffling, the row-group
  order is permuted per epoch (call ``set_epoch(epoch)`` before each epoch; it reaches the workers
  when they are started per epoch, i.e. without ``persistent_workers``) and rows pass through a
  shuffle buffer. Under DDP every rank yields exactly ``len(dataset)`` rows per epoch (the surplus rows
  of an epoch are dropped, a different few each epoch), so no rank waits for another.

A missing ``prepared/`` folder or an unknown split raises :class:`~pipeline.errors.InputError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pipeline.data.shard_writer import MANIFEST
from pipeline.data.transforms import decode_stored
from pipeline.errors import InputError

REMEDY = "Run `dvc repro prepare` (or `python -m pipeline prepare`) to create it."
IN_MEMORY_BYTES = 2 << 30  # splits smaller than this are decoded once and held in memory (training_images)


# ----------------------------------------------------------------------------- readers
def read_manifest(root: Path) -> dict:
    """The manifest of a prepared-data folder (``<paths.data>/prepared``)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no prepared data here (manifest.json missing). {REMEDY}")
    return json.loads(path.read_text())


def manifest_class_names(root: Path) -> list[str]:
    """The class names of a prepared-data folder, in label order (index 0 first)."""
    return [c["name"] for c in sorted(read_manifest(root)["classes"], key=lambda c: c["index"])]


# The dataset each prepare source reads, and how its images were cut to image_size: the demo renders at
# size; ImageNet goes through ADM's centre crop (pipeline.data.transforms: short side resized, central square).
DATASETS = {"demo": ("demo", "none"), "imagenet_folder": ("imagenet", "center"), "imagenet_hf": ("imagenet", "center")}


def image_protocol(manifest: dict, split: str | None) -> dict[str, object]:
    """The protocol parts the prepared data fixes for images of ``split`` (``None``: the class set only).

    ``dataset`` ``"<dataset> <split>, <k> classes"``, ``image_size``, ``crop``, and ``pixels`` (not a
    compared part: how the pixels were made, e.g. JPEG draft decoding and the stored format, which move
    values slightly but not the protocol's geometry).
    """
    source = manifest.get("source", "unknown")
    dataset, crop = DATASETS.get(source, (source, "unknown"))
    prep = manifest.get("params") or {}
    stored = "png" if manifest.get("image_format") == "png" else f"jpeg q{prep.get('jpeg_quality')}"
    made = "rendered" if source == "demo" else f"{'draft' if prep.get('jpeg_draft') else 'full'} JPEG decode"
    where = f"{dataset} {split}" if split else dataset
    return {"dataset": f"{where}, {len(manifest['classes'])} classes", "image_size": manifest.get("image_size"),
            "crop": crop, "pixels": f"{made}, stored as {stored}"}


def _split_info(root: Path, split: str) -> dict:
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        known = ", ".join(manifest["splits"])
        raise InputError(f"{Path(root) / MANIFEST}: no split {split!r} (prepared splits: {known}). "
                         f"Set the prepare parameters to include it and {REMEDY[0].lower()}{REMEDY[1:]}")
    return manifest["splits"][split]


@dataclass
class SplitData:
    """A split loaded in memory."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    meta: list[dict]  # all non-image columns, one dict per row


def _decoded_images(table) -> list[np.ndarray]:
    """The ``image`` column of a shard table, decoded: uint8 (H, W, 3) arrays, in row order."""
    return [decode_stored(b) for b in table.column("image").to_pylist()]


def load_split(root: Path, split: str, limit: int | None = None) -> SplitData:
    """The first ``limit`` (default all) images of ``split``, in file order."""
    root = Path(root)
    info = _split_info(root, split)
    images, meta = [], []
    for shard in info["shards"]:
        if limit is not None and len(images) >= limit:
            break
        table = pq.read_table(root / shard["file"])
        if limit is not None:
            table = table.slice(0, limit - len(images))
        images += _decoded_images(table)
        meta += table.drop_columns(["image"]).to_pylist()
    labels = np.array([m["label"] for m in meta], dtype=np.int64)
    if not images:
        return SplitData(np.zeros((0, 0, 0, 3), np.uint8), labels, meta)
    return SplitData(np.stack(images), labels, meta)


@dataclass
class Sample:
    """Images drawn from a prepared split, in increasing split order."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) row of each image in the split


def sample_split(root: Path, split: str, n: int, seed: int, key: str = "n") -> Sample:
    """``n`` images drawn without replacement from ``split`` (all of them if it has exactly ``n``).

    A random draw rather than a prefix: ImageNet splits are stored class by class. Only the parquet row
    groups holding drawn rows are read. ``key`` names what asked for ``n`` (a parameter), for errors.
    """
    root = Path(root)
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
        images += _decoded_images(table)
        labels += table.column("label").to_pylist()
    return Sample(np.stack(images), np.asarray(labels, dtype=np.int64), wanted)


class ImageTensors(Dataset):
    """uint8 (N, H, W, 3) images as float (3, H, W) tensors in [0, 1], with their labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].permute(2, 0, 1).float().div_(255), int(self.labels[i])


def training_images(root: Path, seed: int, split: str = "train") -> Dataset:
    """A training split: held in memory when small (the demo), streamed from the shards otherwise.

    Small means ``count x image_size^2 x 3`` bytes (the manifest's ``image_size``) of at most
    ``IN_MEMORY_BYTES``; the stream is a :class:`ShardDataset` shuffled with ``seed``.
    """
    root = Path(root)
    manifest = read_manifest(root)
    count = manifest["splits"][split]["count"]
    if count * manifest["image_size"]**2 * 3 <= IN_MEMORY_BYTES:
        data = load_split(root, split)
        return ImageTensors(data.images, data.labels)
    return ShardDataset(root, split, seed=seed, shuffle=True)


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Stream ``(image float32 (3, H, W) in [0, 1], label)`` from the shards of ``split``.

    ``buffer_size`` encoded images are held in the shuffle buffer of each worker.
    """

    def __init__(self, root: Path, split: str, seed: int = 0, shuffle: bool = True,
                 buffer_size: int = 1000) -> None:
        super().__init__()
        self.root, self.split, self.seed, self.shuffle = Path(root), split, seed, shuffle
        self.buffer_size = buffer_size
        info = _split_info(self.root, split)
        # One unit of work: (shard file, row group index, rows).
        self.units = [(s["file"], g, n) for s in info["shards"] for g, n in enumerate(_row_groups(self.root, s))]
        self.total = info["count"]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling for ``epoch`` (call before creating each epoch's iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Rows this rank yields per epoch (the whole split without DDP)."""
        rank, world = _dist_rank_world()
        return self._rank_share(rank, world)[4]

    def _unit_order(self) -> list[int]:
        order = np.arange(len(self.units))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return [int(i) for i in order]

    def _rank_share(self, rank: int, world: int) -> tuple[list[int], int, int, int, int]:
        """What ``rank`` reads this epoch: (units, stride, offset) (keep every ``stride``-th row of the
        units from ``offset``), how many rows that is, and the length every rank yields."""
        order = self._unit_order()
        rows = [self.units[u][2] for u in order]
        if len(order) >= world:  # whole row groups, round robin; every rank stops at the smallest share
            per_rank = min(sum(rows[r::world]) for r in range(world))
            return order[rank::world], 1, 0, sum(rows[rank::world]), per_rank
        # fewer row groups than ranks: every rank reads them all and keeps every world-th row
        return order, world, rank, len(range(rank, self.total, world)), self.total // world

    def _rows(self, units: list[int], stride: int, offset: int) -> Iterator[tuple[bytes, int]]:
        """Encoded rows of ``units``, keeping every ``stride``-th row from ``offset``."""
        files: dict[str, pq.ParquetFile] = {}
        i = 0
        for u in units:
            name, group, n = self.units[u]
            if not any((i + k) % stride == offset for k in range(min(n, stride))):
                i += n  # nothing of ours in this row group
                continue
            if name not in files:
                files[name] = pq.ParquetFile(self.root / name)
            table = files[name].read_row_group(group, columns=["image", "label"])
            for img, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist(),
                                  strict=True):
                if i % stride == offset:
                    yield img, label
                i += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        rank, world = _dist_rank_world()
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        units, stride, offset, rank_rows, per_rank = self._rank_share(rank, world)
        if stride == 1 and len(units) >= nworkers:  # workers take turns over the rank's row groups
            rows = self._rows(units[wid::nworkers], 1, 0)
            worker_rows = [sum(self.units[u][2] for u in units[w::nworkers]) for w in range(nworkers)]
        else:  # too few row groups: workers take turns over the rank's rows
            rows = self._rows(units, stride * nworkers, offset + stride * wid)
            worker_rows = [len(range(w, rank_rows, nworkers)) for w in range(nworkers)]
        quota = _quota(worker_rows, per_rank, wid)
        if self.shuffle:
            rows = _shuffle_buffer(rows, self.buffer_size, np.random.default_rng([self.seed, self.epoch, rank, wid]))
        for n, (data, label) in enumerate(rows):
            if n >= quota:
                return
            image = torch.from_numpy(decode_stored(data).copy()).permute(2, 0, 1).float().div_(255)
            yield image, int(label)


def _row_groups(root: Path, shard: dict) -> list[int]:
    """Rows per row group of a shard, from the manifest or else from the parquet footer."""
    if "row_groups" in shard:
        return shard["row_groups"]
    meta = pq.read_metadata(root / shard["file"])
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _quota(worker_rows: list[int], per_rank: int, wid: int) -> int:
    """Split ``per_rank`` rows among workers that hold ``worker_rows``: drop the surplus from the
    workers with the most rows first (deterministic)."""
    quota = list(worker_rows)
    surplus = sum(quota) - per_rank
    while surplus > 0:
        w = int(np.argmax(quota))
        quota[w] -= 1
        surplus -= 1
    return quota[wid]


def _shuffle_buffer(rows: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    buffer: list = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = row
    rng.shuffle(buffer)
    yield from buffer
