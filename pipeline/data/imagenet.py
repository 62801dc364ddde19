"""ImageNet-1k sources: a local folder in the official layout, or a Hugging Face ``datasets`` repo.

Both list the same kind of task (one input image with its label) and share :func:`process`, so they
write identical rows for identical inputs.

Folder layout (``prepare.imagenet.root``)::

    train/<wnid>/*.JPEG                      the classes are the sorted train class folders
    val/<wnid>/*.JPEG                        either class folders ...
    val/*.JPEG + LOC_val_solution.csv        ... or flat, labelled by the CSV (ImageId, PredictionString;
                                             the first token of PredictionString is the wnid)
    LOC_synset_mapping.txt                   optional: "n01440764 tench, Tinca tinca" per line

Hugging Face (``prepare.imagenet.hf_dataset``, e.g. the gated ``ILSVRC/imagenet-1k``; a local folder
of parquet files or an imagefolder works the same): ``load_dataset(id, split=..., streaming=True,
token=$HF_TOKEN)`` with splits ``train`` / ``validation`` and features ``image`` and ``label``
(``ClassLabel``). Images are taken as encoded bytes, so draft decoding applies. ImageNet's hub
labels are class names, not wnids: the wnids come from the synset mapping file, whose lines are in
label order (the standard sorted-wnid order); where the label names are wnids already (a local
imagefolder) they are used as they are.

Order and selection (deterministic): the folder source orders each split by (class, file name), the
same for both val layouts; the HF source keeps the dataset's order. ``class_subset`` (a text file, one
wnid per line, ``#`` comments allowed) keeps those classes, re-indexed 0..K-1 in sorted wnid order.
``max_per_class`` keeps the first N inputs of each class and split in that order (inputs that turn
out unusable still count, so the choice does not depend on decoding).

Whole-input failures raise :class:`~pipeline.errors.InputError`: root folder missing, no class
folders in ``train/``, a val folder without class folders and without ``LOC_val_solution.csv``, val
labels that match no train class, a ``class_subset`` naming unknown wnids, an HF dataset that cannot be
opened. Single bad inputs are skipped and reported (see :mod:`pipeline.data.transforms`): besides
unreadable images and truncated ones that decode mostly to fill (``mostly_fill``), a val image
missing from the CSV (``no_label``), one whose label is not a train class (``unknown_label``), an HF
row with label -1 or none (``no_label``), a file directly in ``val/`` when the val split has class
folders, a file directly in ``train/`` or a hidden or tool folder there (``.ipynb_checkpoints``,
``__MACOSX``: never a class) (``outside_class_folder``). The val layout is
checked when the source is opened, before any train image is processed.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.data.transforms import Prepared, SkipImage, Skipped, decode_rgb, encode, read_bytes
from pipeline.errors import InputError

SCHEMA = pa.schema([
    ("image", pa.binary()), ("label", pa.int64()), ("key", pa.string()), ("caption", pa.string()),
    ("wnid", pa.string()), ("source_file", pa.string()), ("orig_width", pa.int32()),
    ("orig_height", pa.int32()),
])
HF_SPLITS = {"train": "train", "val": "validation"}
WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Task:
    """One input image. ``path`` (a file to read) or ``data`` (its bytes) is set."""

    key: str
    label: int
    wnid: str
    name: str
    source_file: str
    path: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Processing:
    """How every image is turned into a stored row."""

    size: int
    draft: bool
    image_format: str
    jpeg_quality: int

    def __call__(self, task: Task) -> Prepared | Skipped:
        try:
            if task.data is None and task.path is None:
                raise SkipImage("empty", "the dataset row holds no image")
            data = task.data if task.data is not None else read_bytes(task.path)
            decoded = decode_rgb(data, self.size, self.draft, name=task.path or task.source_file)
        except SkipImage as err:
            return Skipped(task.source_file, err.kind, err.detail)
        row = {
            "image": encode(decoded.image, self.image_format, self.jpeg_quality),
            "label": task.label,
            "key": task.key,
            "caption": f"a photo of a {task.name.split(',')[0]}",
            "wnid": task.wnid,
            "source_file": task.source_file,
            "orig_width": decoded.width,
            "orig_height": decoded.height,
        }
        return Prepared(row, decoded.notes, decoded.repaired)


def read_synset_mapping(path: Path) -> dict[str, str]:
    """wnid -> name from ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` lines), in order."""
    mapping = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not WNID.match(wnid):
            raise InputError(f"{path}:{n}: expected '<wnid> <name>' (e.g. 'n01440764 tench, Tinca tinca'), "
                             f"found {line!r}")
        mapping[wnid] = name.strip() or wnid
    return mapping


def read_class_subset(path: Path) -> list[str]:
    """The wnids listed in a class-subset file."""
    if not path.is_file():
        raise InputError(f"{path}: class subset file not found (prepare.imagenet.class_subset). Give a text "
                         "file with one wnid per line, or set class_subset: null for all classes.")
    wnids = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    wnids = [w for w in wnids if w]
    if not wnids:
        raise InputError(f"{path}: class subset file lists no wnids (prepare.imagenet.class_subset)")
    return wnids


def _select(all_wnids: list[str], subset_file: str | None, known_from: str) -> list[str]:
    """The wnids to prepare, sorted: all, or those of the subset file (which must all be known)."""
    if subset_file is None:
        return sorted(all_wnids)
    subset = read_class_subset(Path(subset_file))
    unknown = [w for w in subset if w not in set(all_wnids)]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise InputError(f"{subset_file}: {len(unknown)} wnid(s) not among the classes of {known_from}: {shown}. "
                         "Fix the subset file (prepare.imagenet.class_subset) or the dataset.")
    return sorted(set(subset))


def _files(folder: Path) -> list[str]:
    """Non-hidden entry names of ``folder``, sorted (unreadable entries are reported when read)."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))


def _cap(tasks: list[Task], max_per_class: int | None) -> list[Task]:
    if max_per_class is None:
        return tasks
    seen: dict[int, int] = {}
    kept = []
    for t in tasks:
        seen[t.label] = seen.get(t.label, 0) + 1
        if seen[t.label] <= max_per_class:
            kept.append(t)
    return kept


class ImageNetFolder:
    """ImageNet in the official folder layout (see the module docstring)."""

    name = "imagenet_folder"

    def __init__(self, root: str, splits: list[str], class_subset: str | None = None,
                 max_per_class: int | None = None, synset_mapping: str | None = None) -> None:
        self.root = Path(root)
        self.splits, self.max_per_class = list(splits), max_per_class
        if not self.root.is_dir():
            raise InputError(f"{self.root}: ImageNet folder not found (prepare.imagenet.root). Point it at a "
                             "folder holding train/<wnid>/*.JPEG and val/.")
        train = self.root / "train"
        entries = sorted(train.iterdir()) if train.is_dir() else []
        # Hidden and tool folders (.ipynb_checkpoints, __MACOSX) are not classes: as classes they would
        # shift every real label. Files directly in train/ belong to no class. Both are reported.
        junk = [d for d in entries if d.is_dir() and d.name.startswith((".", "_"))]
        self.all_wnids = [d.name for d in entries if d.is_dir() and d not in junk]
        self.early_skips: dict[str, list[Skipped]] = {"train": [
            *(Skipped(f"train/{d.name}/", "outside_class_folder", "hidden or tool folder, not a class") for d in junk),
            *(Skipped(f"train/{f.name}", "outside_class_folder", "train/ has class folders")
              for f in entries if f.is_file() and not f.name.startswith("."))]}
        if not self.all_wnids:
            raise InputError(f"{train}: no class folders (expected {train}/<wnid>/*.JPEG, e.g. "
                             f"{train}/n01440764/n01440764_10026.JPEG); the classes are taken from here.")
        wnids = _select(self.all_wnids, class_subset, str(train))
        mapping_file = Path(synset_mapping) if synset_mapping else self.root / "LOC_synset_mapping.txt"
        if synset_mapping and not mapping_file.is_file():
            raise InputError(f"{mapping_file}: synset mapping not found (prepare.imagenet.synset_mapping)")
        names = read_synset_mapping(mapping_file) if mapping_file.is_file() else {}
        self.classes = [{"index": i, "wnid": w, "name": names.get(w, w)} for i, w in enumerate(wnids)]
        self._label = {c["wnid"]: c["index"] for c in self.classes}
        # The val layout is checked (and listed) now, before any train image is processed: a missing
        # val/ or label file must not surface after hours of train.
        self._val_listing = self._val() if "val" in self.splits else None

    def length(self, split: str) -> int | None:
        return None

    def tasks(self, split: str) -> Iterator[Task | Skipped]:
        """The split's inputs in (class, file name) order; skips found while labelling come first."""
        yield from self.early_skips.get(split, [])
        if split == "train":  # listed one class at a time: 1.28M tasks never sit in memory at once
            for wnid in self._label:
                listed = [self._task(Path("train", wnid, f), wnid) for f in _files(self.root / "train" / wnid)]
                yield from _cap(sorted(listed, key=lambda t: t.key), self.max_per_class)
            return
        listed, skips = self._val_listing if self._val_listing is not None else self._val()
        yield from skips
        yield from _cap(sorted(listed, key=lambda t: (t.label, t.key)), self.max_per_class)

    def _task(self, rel: Path, wnid: str) -> Task:
        c = self.classes[self._label[wnid]]
        return Task(key=f"{wnid}/{rel.stem}", label=c["index"], wnid=wnid, name=c["name"],
                    source_file=rel.as_posix(), path=str(self.root / rel))

    def _val(self) -> tuple[list[Task], list[Skipped]]:
        val = self.root / "val"
        if not val.is_dir():
            raise InputError(f"{val}: val folder not found. Provide it, or set prepare.imagenet.splits: [train].")
        entries = _files(val)
        folders = [e for e in entries if (val / e).is_dir()]
        listed, skips = [], []
        if folders:
            for e in entries:
                if e not in folders:
                    skips.append(Skipped(f"val/{e}", "outside_class_folder", "val/ has class folders"))
            labelled = [(Path("val", w, f), w) for w in folders for f in _files(val / w)]
        else:
            labels = self._val_solution()
            labelled = []
            for e in entries:
                wnid = labels.get(Path(e).stem)
                if wnid is None:
                    skips.append(Skipped(f"val/{e}", "no_label", "not in LOC_val_solution.csv"))
                else:
                    labelled.append((Path("val", e), wnid))
        known = set(self.all_wnids)
        if labelled and not any(w in known for _, w in labelled):
            found = ", ".join(sorted({w for _, w in labelled})[:5])
            raise InputError(f"{val}: no val label matches a train class (val labels include {found}; train "
                             f"classes are the folders of {self.root / 'train'}). Check that both come from "
                             "the same dataset.")
        for rel, wnid in labelled:
            if wnid not in known:
                skips.append(Skipped(rel.as_posix(), "unknown_label", f"{wnid} is not a train class"))
            elif wnid in self._label:
                listed.append(self._task(rel, wnid))
        return listed, skips

    def _val_solution(self) -> dict[str, str]:
        path = self.root / "LOC_val_solution.csv"
        if not path.is_file():
            raise InputError(f"{self.root / 'val'}: flat val folder (no class folders) needs {path} "
                             "(columns ImageId, PredictionString) to label the images.")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
                raise InputError(f"{path}: expected the columns ImageId and PredictionString, found "
                                 f"{reader.fieldnames}")
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader
                    if row["PredictionString"].strip()}


class ImageNetHF:
    """ImageNet through Hugging Face ``datasets``, streamed (see the module docstring)."""

    name = "imagenet_hf"

    def __init__(self, hf_dataset: str, splits: list[str], class_subset: str | None = None,
                 max_per_class: int | None = None, synset_mapping: str | None = None,
                 root: str | None = None) -> None:
        self.hf_dataset, self.splits, self.max_per_class = hf_dataset, list(splits), max_per_class
        self._streams = {s: self._open(s) for s in self.splits}
        features = next(iter(self._streams.values())).features
        if not features or "image" not in features or "label" not in features:
            raise InputError(f"prepare.imagenet.hf_dataset={hf_dataset!r}: expected the features image and "
                             f"label, found {list(features or {})}")
        hf_names = list(features["label"].names)
        if synset_mapping is None and root and (Path(root) / "LOC_synset_mapping.txt").is_file():
            synset_mapping = str(Path(root) / "LOC_synset_mapping.txt")
        mapping = read_synset_mapping(Path(synset_mapping)) if synset_mapping else {}
        if all(WNID.match(n) for n in hf_names):
            wnids, names = hf_names, [mapping.get(n, n) for n in hf_names]
        elif len(mapping) == len(hf_names):
            wnids, names = list(mapping), hf_names
        else:
            if class_subset:
                raise InputError(f"prepare.imagenet.hf_dataset={hf_dataset!r}: its labels are names, not "
                                 "wnids; a class_subset needs prepare.imagenet.synset_mapping (the 1000-line "
                                 "LOC_synset_mapping.txt) to translate them.")
            wnids, names = [f"label{i:04d}" for i in range(len(hf_names))], hf_names
        selected = _select(wnids, class_subset, f"the labels of {hf_dataset}")
        self.classes = [{"index": i, "wnid": w, "name": names[wnids.index(w)]} for i, w in enumerate(selected)]
        by_wnid = {c["wnid"]: c for c in self.classes}
        # HF label index -> our class (None for classes left out by the subset)
        self._class = [by_wnid.get(w) for w in wnids]

    def _open(self, split: str):
        from datasets import Image, load_dataset

        hf_split = HF_SPLITS[split]
        try:
            ds = load_dataset(self.hf_dataset, split=hf_split, streaming=True, token=os.environ.get("HF_TOKEN"))
        except Exception as err:
            raise InputError(
                f"prepare.imagenet.hf_dataset={self.hf_dataset!r}: cannot open split {hf_split!r}: "
                f"{type(err).__name__}: {err}\n  For the gated hub dataset, accept its terms on huggingface.co "
                "and export HF_TOKEN; offline, point hf_dataset at a local folder of parquet files or an "
                "imagefolder.") from None
        return ds.cast_column("image", Image(decode=False)) if ds.features and "image" in ds.features else ds

    def length(self, split: str) -> int | None:
        return None

    def tasks(self, split: str) -> Iterator[Task | Skipped]:
        """The split's rows in the dataset's order, as tasks carrying the encoded bytes."""
        hf_split = HF_SPLITS[split]
        left = {c["index"]: self.max_per_class for c in self.classes} if self.max_per_class else None
        for i, row in enumerate(self._streams[split]):
            image, label = row["image"], row["label"]
            path = (image or {}).get("path")
            source = path or f"{self.hf_dataset}:{hf_split}[{i}]"
            if label is None or label < 0:
                yield Skipped(source, "no_label", f"label {label}")
                continue
            c = self._class[label]
            if c is None:
                continue
            if left is not None:
                if left[c["index"]] == 0:
                    if not any(left.values()):
                        return
                    continue
                left[c["index"]] -= 1
            stem = Path(path).stem if path else f"{split}-{i:08d}"
            data = (image or {}).get("bytes")
            yield Task(key=f"{c['wnid']}/{stem}", label=c["index"], wnid=c["wnid"], name=c["name"],
                       source_file=source, path=None if data is not None else path, data=data)
