"""ImageNet sources on a generated folder: bad inputs, both val layouts, HF datasets, subsets, errors."""

import json
from collections import Counter

import numpy as np
import pytest
from conftest import demo_params
from imagenet_folder import NAMES, WNIDS, good_files, make_imagenet

from pipeline import params as P
from pipeline.data.shards import load_split
from pipeline.errors import InputError
from pipeline.stages.prepare import prepare


def folder_params(root, **imagenet) -> P.Params:
    return demo_params({"image_size": 32, "prepare": {
        "source": "imagenet_folder", "imagenet": {"root": str(root), **imagenet}, "shard_size": 5, "workers": 1}})


def hf_params(hub, **imagenet) -> P.Params:
    return demo_params({"image_size": 32, "prepare": {
        "source": "imagenet_hf", "imagenet": {"hf_dataset": str(hub), **imagenet}, "shard_size": 5, "workers": 1}})


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """A folder with every kind of bad input and a flat val folder, prepared."""
    root = tmp_path_factory.mktemp("imagenet_flat")
    expected = make_imagenet(root / "in", "flat")
    manifest = prepare(folder_params(root / "in"), root / "prepared", progress=False)
    return root, expected, manifest


def test_bad_inputs_are_skipped_or_repaired_and_reported(flat):
    root, expected, m = flat
    report = json.loads((root / "prepared" / "skipped.json").read_text())
    assert Counter(s["kind"] for s in report["skipped"]) == expected["skipped"]
    assert m["skipped"] == dict(sorted(expected["skipped"].items()))
    assert {r["file"] for r in report["repaired"]} == expected["repaired"]
    by_file = {s["file"]: s for s in report["skipped"]}
    assert by_file[f"train/{WNIDS[0]}/{WNIDS[0]}_empty.JPEG"]["kind"] == "empty"
    assert by_file[f"train/{WNIDS[2]}/{WNIDS[2]}_dangling.JPEG"]["kind"] == "unreadable"
    grey = by_file[f"train/{WNIDS[0]}/{WNIDS[0]}_grey.JPEG"]  # cut to 3 KB: PIL would "repair" it to grey
    assert grey["kind"] == "mostly_fill" and "constant fill (128, 128, 128)" in grey["reason"]
    assert by_file["val/ILSVRC2012_val_00000099.JPEG"]["kind"] == "no_label"
    assert m["conversions"]["CMYK -> RGB"] == 1 and m["conversions"]["L -> RGB"] == 1
    assert m["conversions"]["PNG data in a .JPEG file"] == 1


def test_manifest_counts_classes_and_checksums(flat):
    root, expected, m = flat
    assert m["source"] == "imagenet_folder"
    assert m["classes"] == [{"index": i, "wnid": w, "name": NAMES[w]} for i, w in enumerate(WNIDS)]
    assert m["splits"]["train"]["count"] == expected["train"] == 16
    assert m["splits"]["train"]["per_class"] == {WNIDS[0]: 5, WNIDS[1]: 6, WNIDS[2]: 5}
    assert m["splits"]["val"]["count"] == expected["val"]
    assert m["splits"]["val"]["per_class"] == dict.fromkeys(WNIDS, 2)
    assert [s["rows"] for s in m["splits"]["train"]["shards"]] == [5, 5, 5, 1]
    from pipeline.data.shard_writer import sha256_file
    for s in m["splits"]["train"]["shards"]:
        assert sha256_file(root / "prepared" / s["file"]) == s["sha256"]


def test_rows_are_ordered_by_class_then_file_with_metadata(flat):
    root, _, _ = flat
    data = load_split(root / "prepared", "train")
    assert data.images.shape == (16, 32, 32, 3)
    assert list(data.labels) == sorted(data.labels)
    first = data.meta[0]
    assert first["key"] == f"{WNIDS[0]}/{WNIDS[0]}_1" and first["wnid"] == WNIDS[0]
    assert first["source_file"] == f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG"
    assert (first["orig_width"], first["orig_height"]) == (48, 36)
    assert first["caption"] == "a photo of a tench"


def test_parallel_workers_give_the_same_output(flat, tmp_path):
    root, _, m = flat
    params = folder_params(root / "in").model_copy(
        update={"prepare": folder_params(root / "in").prepare.model_copy(update={"workers": 2})})
    parallel = prepare(params, tmp_path / "prepared", progress=False)
    assert parallel["splits"] == m["splits"] and parallel["conversions"] == m["conversions"]
    assert (tmp_path / "prepared" / "skipped.json").read_text() == (root / "prepared" / "skipped.json").read_text()


def test_both_val_layouts_give_the_same_shards(flat, tmp_path):
    root, _, m = flat
    make_imagenet(tmp_path / "in", "folders")
    other = prepare(folder_params(tmp_path / "in", splits=["val"]), tmp_path / "prepared", progress=False)
    a, b = load_split(tmp_path / "prepared", "val"), load_split(root / "prepared", "val")
    np.testing.assert_array_equal(a.images, b.images)
    assert [r["key"] for r in a.meta] == [r["key"] for r in b.meta]  # only source_file differs
    assert a.meta[0]["source_file"] == f"val/{WNIDS[0]}/ILSVRC2012_val_00000001.JPEG"
    assert other["splits"]["val"]["per_class"] == m["splits"]["val"]["per_class"]
    assert other["skipped"] == {"outside_class_folder": 1}


def test_class_subset_and_cap(tmp_path):
    make_imagenet(tmp_path / "in", "flat", bad=False)
    subset = tmp_path / "subset.txt"
    subset.write_text(f"# two of three\n{WNIDS[2]}\n{WNIDS[0]}\n")
    m = prepare(folder_params(tmp_path / "in", class_subset=str(subset), max_per_class=3), tmp_path / "out",
                progress=False)
    assert [c["wnid"] for c in m["classes"]] == [WNIDS[0], WNIDS[2]]
    assert m["splits"]["train"]["per_class"] == {WNIDS[0]: 3, WNIDS[2]: 3}
    assert m["splits"]["val"]["per_class"] == {WNIDS[0]: 2, WNIDS[2]: 2}
    keys = [r["key"] for r in load_split(tmp_path / "out", "train").meta]
    assert keys == [f"{w}/{w}_{i}" for w in (WNIDS[0], WNIDS[2]) for i in (1, 2, 3)]
    assert set(load_split(tmp_path / "out", "val").labels) == {0, 1}


# ----------------------------------------------------------------------------- Hugging Face
def write_hub(hub, rows_by_split, names=WNIDS):
    """A local stand-in for the hub repo: one parquet file per split, written by `datasets`."""
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=list(names))})
    for split, rows in rows_by_split.items():
        ds = Dataset.from_dict({"image": [{"bytes": b, "path": p} for p, b, _ in rows],
                                "label": [lab for _, _, lab in rows]}, features=features)
        (hub / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(hub / "data" / f"{split}-00000-of-00001.parquet"))


def test_hf_source_matches_the_folder_source(flat, tmp_path):
    root, _, folder = flat
    files = good_files()
    write_hub(tmp_path / "hub", {
        "train": [(rel.split("/")[1], b, WNIDS.index(rel.split("/")[0])) for rel, b in files["train"].items()],
        "validation": [(rel.split("/")[1], b, WNIDS.index(rel.split("/")[0])) for rel, b in files["val"].items()],
    })
    params = hf_params(tmp_path / "hub", synset_mapping=str(root / "in" / "LOC_synset_mapping.txt"))
    hf = prepare(params, tmp_path / "prepared", progress=False)
    assert hf["source"] == "imagenet_hf" and hf["classes"] == folder["classes"]
    good = {f"train/{rel}" for rel in files["train"]}  # the folder also holds repaired extras
    for split in ("train", "val"):
        a, b = load_split(tmp_path / "prepared", split), load_split(root / "prepared", split)
        keep = [i for i, r in enumerate(b.meta) if split == "val" or r["source_file"] in good]
        np.testing.assert_array_equal(a.images, b.images[keep])
        np.testing.assert_array_equal(a.labels, b.labels[keep])
        assert [r["key"] for r in a.meta] == [b.meta[i]["key"] for i in keep]


def test_hf_labels_skips_and_cap(tmp_path):
    files = list(good_files()["train"].items())
    rows = [(rel.split("/")[1], b, WNIDS.index(rel.split("/")[0])) for rel, b in files]
    rows.insert(1, ("broken.JPEG", b"\xff\xd8 not really", 0))
    write_hub(tmp_path / "hub", {"train": rows})
    m = prepare(hf_params(tmp_path / "hub", splits=["train"], max_per_class=2), tmp_path / "out", progress=False)
    # the broken row is one of the first two of its class: it counts toward the cap, so the choice
    # of rows does not depend on decoding
    assert m["splits"]["train"]["per_class"] == {WNIDS[0]: 1, WNIDS[1]: 2, WNIDS[2]: 2}
    assert m["skipped"] == {"not_an_image": 1}
    assert [c["name"] for c in m["classes"]] == WNIDS  # no synset mapping: names are the wnids


def test_hf_label_names_are_translated_by_the_synset_mapping(tmp_path):
    # The hub's ImageNet labels are class names; the mapping file (in label order) gives the wnids.
    rows = [(rel.split("/")[1], b, WNIDS.index(rel.split("/")[0])) for rel, b in good_files()["val"].items()]
    write_hub(tmp_path / "hub", {"validation": rows}, names=[NAMES[w] for w in WNIDS])
    make_imagenet(tmp_path / "in", "flat", bad=False)
    (tmp_path / "subset.txt").write_text(f"{WNIDS[1]}\n")
    params = hf_params(tmp_path / "hub", splits=["val"], root=str(tmp_path / "in"),
                       class_subset=str(tmp_path / "subset.txt"))
    m = prepare(params, tmp_path / "out", progress=False)
    assert m["classes"] == [{"index": 0, "wnid": WNIDS[1], "name": NAMES[WNIDS[1]]}]
    assert m["splits"]["val"]["per_class"] == {WNIDS[1]: 2}
    with pytest.raises(InputError, match="synset_mapping"):
        prepare(hf_params(tmp_path / "hub", splits=["val"], class_subset=str(tmp_path / "subset.txt")),
                tmp_path / "out2", progress=False)


def test_hf_missing_dataset_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="HF_TOKEN"):
        prepare(hf_params(tmp_path / "nothing-here"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- whole-input failures
def test_missing_root(tmp_path):
    with pytest.raises(InputError, match=r"ImageNet folder not found \(prepare.imagenet.root\)"):
        prepare(folder_params(tmp_path / "missing"), tmp_path / "out", progress=False)


def test_no_class_folders(tmp_path):
    (tmp_path / "in" / "train").mkdir(parents=True)
    (tmp_path / "in" / "train" / "loose.JPEG").write_bytes(b"x")
    with pytest.raises(InputError, match="train: no class folders"):
        prepare(folder_params(tmp_path / "in"), tmp_path / "out", progress=False)


def test_val_labels_matching_no_train_class(tmp_path):
    make_imagenet(tmp_path / "in", "flat", bad=False)
    csv = tmp_path / "in" / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("n014", "n999"))
    with pytest.raises(InputError, match="no val label matches a train class"):
        prepare(folder_params(tmp_path / "in"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_flat_val_without_solution_csv(tmp_path):
    make_imagenet(tmp_path / "in", "flat", bad=False)
    (tmp_path / "in" / "LOC_val_solution.csv").unlink()
    with pytest.raises(InputError, match="LOC_val_solution.csv"):
        prepare(folder_params(tmp_path / "in"), tmp_path / "out", progress=False)


def test_class_subset_with_unknown_wnids(tmp_path):
    make_imagenet(tmp_path / "in", "flat", bad=False)
    subset = tmp_path / "subset.txt"
    subset.write_text(f"{WNIDS[0]}\nn09999999\n")
    with pytest.raises(InputError, match=r"subset.txt: 1 wnid\(s\) not among the classes .*n09999999"):
        prepare(folder_params(tmp_path / "in", class_subset=str(subset)), tmp_path / "out", progress=False)


def test_a_missing_val_folder_stops_before_any_train_image_is_processed(tmp_path, monkeypatch):
    from pipeline.data import imagenet

    make_imagenet(tmp_path / "in", "flat", bad=False)
    for f in (tmp_path / "in" / "val").iterdir():
        f.unlink()
    (tmp_path / "in" / "val").rmdir()
    processed = []
    monkeypatch.setattr(imagenet.Processing, "__call__", lambda self, task: processed.append(task))
    with pytest.raises(InputError, match="val folder not found"):
        prepare(folder_params(tmp_path / "in"), tmp_path / "out", progress=False)
    assert not processed and not (tmp_path / "out").exists()


def test_hidden_and_tool_folders_are_not_classes_and_stray_files_are_reported(tmp_path):
    make_imagenet(tmp_path / "in", "flat", bad=False)
    train = tmp_path / "in" / "train"
    for junk in (".ipynb_checkpoints", "__MACOSX"):
        (train / junk).mkdir()
        (train / junk / "x.JPEG").write_bytes((train / WNIDS[0] / f"{WNIDS[0]}_1.JPEG").read_bytes())
    (train / "stray.JPEG").write_bytes(b"x")
    m = prepare(folder_params(tmp_path / "in"), tmp_path / "out", progress=False)
    assert [c["wnid"] for c in m["classes"]] == WNIDS  # labels unshifted
    report = json.loads((tmp_path / "out" / "skipped.json").read_text())
    files = {s["file"]: s["kind"] for s in report["skipped"]}
    assert files == {"train/.ipynb_checkpoints/": "outside_class_folder", "train/__MACOSX/": "outside_class_folder",
                     "train/stray.JPEG": "outside_class_folder"}


def test_a_split_with_no_usable_image_is_an_error_and_writes_nothing(tmp_path):
    make_imagenet(tmp_path / "in", "flat", bad=False)
    for f in (tmp_path / "in" / "train").rglob("*.JPEG"):
        f.write_bytes(b"")
    with pytest.raises(InputError, match="train split has no usable image"):
        prepare(folder_params(tmp_path / "in"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
