"""The readers every stage uses: read_manifest, load_split, ShardDataset (workers, DDP ranks, epochs)."""

import numpy as np
import pytest
import torch
from conftest import demo_params
from torch.utils.data import DataLoader

from pipeline.data import shards
from pipeline.data.shards import ShardDataset, load_split, read_manifest
from pipeline.errors import InputError
from pipeline.stages.prepare import prepare


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Micro demo at 16 px: train 60 images in shards of 25 with row groups of 10 (6 units)."""
    out = tmp_path_factory.mktemp("shards") / "prepared"
    params = demo_params({"image_size": 16, "prepare": {
        "demo": {"num_classes": 10, "train_per_class": 6, "val_per_class": 3, "ood_per_class": 1},
        "shard_size": 25, "workers": 1}})
    import pipeline.data.shard_writer as writer

    old, writer.ROW_GROUP = writer.ROW_GROUP, 10
    try:
        prepare(params, out, progress=False)
    finally:
        writer.ROW_GROUP = old
    return out


def test_load_split(root):
    data = load_split(root, "val")
    assert data.images.shape == (30, 16, 16, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and list(data.labels[:10]) == list(range(10))
    assert data.meta[0]["key"] == "val-000000" and "image" not in data.meta[0] and "caption" in data.meta[0]
    few = load_split(root, "train", limit=27)  # crosses a shard boundary
    assert few.images.shape[0] == 27 and [m["key"] for m in few.meta] == [f"train-{i:06d}" for i in range(27)]
    np.testing.assert_array_equal(few.images, load_split(root, "train").images[:27])


def test_missing_folder_and_unknown_split(tmp_path, root):
    with pytest.raises(InputError, match=r"manifest.json missing\). Run `dvc repro prepare`"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"no split 'test' \(prepared splits: train, val, ood\).*dvc repro prepare"):
        load_split(root, "test")
    with pytest.raises(InputError, match="dvc repro prepare"):
        ShardDataset(tmp_path / "nothing", "train")


def keys_of(dataset, **loader) -> list[bytes]:
    """Image bytes-as-ids of one epoch (images are distinct in the demo)."""
    out = []
    for images, labels in DataLoader(dataset, batch_size=7, **loader):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16)
        assert 0 <= images.min() and images.max() <= 1 and labels.dtype == torch.int64
        out += [img.numpy().tobytes() for img in images]
    return out


def test_unshuffled_stream_is_the_file_order(root):
    ds = ShardDataset(root, "train", shuffle=False)
    assert len(ds) == 60
    expected = [(torch.from_numpy(img).permute(2, 0, 1).float() / 255).numpy().tobytes()
                for img in load_split(root, "train").images]
    assert keys_of(ds) == expected


def test_shuffle_is_seeded_per_epoch(root):
    ds = ShardDataset(root, "train", seed=3, buffer_size=16)
    e0, e0_again = keys_of(ds), keys_of(ds)
    ds.set_epoch(1)
    e1 = keys_of(ds)
    assert e0 == e0_again and e0 != e1 and sorted(e0) == sorted(e1) and len(set(e0)) == 60


def test_two_workers_split_the_work_without_duplicates(root):
    ds = ShardDataset(root, "train", seed=0)
    got = keys_of(ds, num_workers=2)
    assert len(got) == 60 and len(set(got)) == 60
    assert sorted(got) == sorted(keys_of(ds))


@pytest.mark.parametrize(("world", "workers"), [(2, 1), (2, 2), (4, 2)])
def test_ddp_ranks_get_equal_disjoint_shares(root, monkeypatch, world, workers):
    per_rank = []
    for rank in range(world):
        monkeypatch.setattr(shards, "_dist_rank_world", lambda rank=rank: (rank, world))
        ds = ShardDataset(root, "train", seed=1)
        ds.set_epoch(2)
        got = keys_of(ds, num_workers=workers) if workers > 1 else keys_of(ds)
        assert len(got) == len(ds)
        per_rank.append(got)
    assert len({len(r) for r in per_rank}) == 1  # DDP needs equal lengths
    flat = [k for r in per_rank for k in r]
    assert len(set(flat)) == len(flat) >= 60 - 10 * world  # disjoint; at most a few row groups dropped
