"""A tiny ImageNet-layout folder for the data tests: 3 classes, a few small JPEGs, one file of each bad kind.

``make_imagenet(root, val_layout)`` writes it and returns what the ``prepare`` stage should report.
Images are random smooth colour fields (so JPEG artefacts stay small) in several sizes and aspect ratios.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850"]
NAMES = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"}
TRAIN_PER_CLASS = 4
VAL_PER_CLASS = 2


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A smooth random RGB image."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def corrupt_jpeg(data: bytes) -> bytes:
    """A JPEG PIL can identify but not decode, even with LOAD_TRUNCATED_IMAGES: the last Huffman
    table segment claims a length that runs into the scan."""
    g = bytearray(data)
    g[g.rfind(b"\xff\xc4") + 3] = 0xFF
    return bytes(g)


def good_files() -> dict[str, dict[str, bytes]]:
    """{split: {name: JPEG bytes}}: the usable images (train names are class-prefixed)."""
    sizes = [(48, 36), (36, 48), (40, 40), (64, 30)]
    out: dict[str, dict[str, bytes]] = {"train": {}, "val": {}}
    for c, wnid in enumerate(WNIDS):
        for i in range(TRAIN_PER_CLASS):
            w, h = sizes[i % len(sizes)]
            out["train"][f"{wnid}/{wnid}_{i + 1}.JPEG"] = jpeg_bytes(photo(100 * c + i, w, h))
    n = 0
    for c, wnid in enumerate(WNIDS):
        for i in range(VAL_PER_CLASS):
            n += 1
            w, h = sizes[(i + c) % len(sizes)]
            out["val"][f"{wnid}/ILSVRC2012_val_{n:08d}.JPEG"] = jpeg_bytes(photo(1000 + n, w, h))
    return out


def make_imagenet(root: Path, val_layout: str = "flat", bad: bool = True) -> dict:
    """Write the folder; return the expected counts and reports."""
    files = good_files()
    for rel, data in files["train"].items():
        (root / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / rel).write_bytes(data)
    labels = {}
    for rel, data in files["val"].items():
        wnid, name = rel.split("/")
        labels[Path(name).stem] = wnid
        path = root / "val" / (rel if val_layout == "folders" else name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {NAMES[w]}\n" for w in WNIDS))
    if val_layout == "flat":
        with open(root / "LOC_val_solution.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            for stem, wnid in sorted(labels.items()):
                writer.writerow([stem, f"{wnid} 10 20 30 40 {wnid} 5 5 9 9"])
    expected = {"train": TRAIN_PER_CLASS * len(WNIDS), "val": VAL_PER_CLASS * len(WNIDS),
                "skipped": {}, "repaired": set()}
    if not bad:
        return expected

    t, w = root / "train", WNIDS
    base = photo(7, 50, 40)
    (t / w[0] / f"{w[0]}_empty.JPEG").write_bytes(b"")                            # skipped: empty
    (t / w[0] / f"{w[0]}_truncated.JPEG").write_bytes(jpeg_bytes(base)[:-200])    # repaired
    (t / w[0] / f"{w[0]}_grey.JPEG").write_bytes(jpeg_bytes(photo(8, 500, 375))[:3000])  # skipped: mostly fill
    (t / w[1] / f"{w[1]}_png.JPEG").write_bytes(png_bytes(base.convert("RGBA")))  # repaired (PNG, alpha)
    (t / w[1] / f"{w[1]}_cmyk.JPEG").write_bytes(jpeg_bytes(base.convert("CMYK")))  # repaired (CMYK)
    (t / w[2] / f"{w[2]}_gray.JPEG").write_bytes(jpeg_bytes(base.convert("L")))  # converted, kept
    (t / w[2] / f"{w[2]}_text.JPEG").write_text("not an image\n")                 # skipped: not an image
    (t / w[2] / f"{w[2]}_corrupt.JPEG").write_bytes(corrupt_jpeg(jpeg_bytes(base)))  # skipped: corrupt
    (t / w[2] / f"{w[2]}_dangling.JPEG").symlink_to(root / "does-not-exist.JPEG")  # skipped: unreadable
    expected["train"] += 4
    expected["skipped"] = {"empty": 1, "not_an_image": 1, "corrupt": 1, "mostly_fill": 1, "unreadable": 1}
    expected["repaired"] = {f"train/{w[0]}/{w[0]}_truncated.JPEG", f"train/{w[1]}/{w[1]}_png.JPEG",
                            f"train/{w[1]}/{w[1]}_cmyk.JPEG"}
    if val_layout == "flat":  # an image the CSV does not label
        (root / "val" / "ILSVRC2012_val_00000099.JPEG").write_bytes(jpeg_bytes(base))
        expected["skipped"]["no_label"] = 1
    else:  # a stray file beside the class folders
        (root / "val" / "stray.JPEG").write_bytes(jpeg_bytes(base))
        expected["skipped"]["outside_class_folder"] = 1
    return expected
