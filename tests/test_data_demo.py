"""The demo dataset: deterministic, captioned, with factors that vary independently of the class."""

import json

import numpy as np
import pytest
from conftest import demo_params

from pipeline import params as P
from pipeline.data import demo
from pipeline.data.shards import load_split
from pipeline.stages.prepare import prepare

MICRO = {"image_size": 32, "prepare": {"demo": {"num_classes": 10, "train_per_class": 6, "val_per_class": 3,
                                                "ood_per_class": 2}, "shard_size": 25, "workers": 1}}


def micro(**overrides) -> P.Params:
    return demo_params(MICRO, *(f"{key}={value}" for key, value in overrides.items()))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "prepared"
    return out, prepare(micro(), out, progress=False)


@pytest.fixture(scope="module")
def many():
    """300 train images' factors at 32 px (30 per class)."""
    return [demo.render(demo.DemoSpec(0, "train", i, 10, 32))[1] for i in range(300)]


def test_same_seed_same_bytes_different_seed_different(prepared, tmp_path):
    _, first = prepared
    again = prepare(micro(), tmp_path / "again", progress=False)
    other = prepare(micro(seed=1), tmp_path / "other", progress=False)

    def digests(m):
        return [s["sha256"] for split in m["splits"].values() for s in split["shards"]]

    assert digests(again) == digests(first)
    assert not set(digests(other)) & set(digests(first))
    out, _ = prepared  # every file, manifest and samples included, is reproducible byte for byte
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()}


def test_workers_do_not_change_the_output(prepared, tmp_path):
    _, first = prepared
    parallel = prepare(micro(**{"prepare.workers": 2}), tmp_path / "parallel", progress=False)
    assert parallel["splits"] == first["splits"]


def test_manifest_counts_classes_and_splits(prepared):
    out, m = prepared
    assert m["source"] == "demo" and m["image_size"] == 32
    assert [c["name"] for c in m["classes"]] == list(demo.CLASSES[:10])
    assert m["classes"][3] == {"index": 3, "wnid": "demo0003", "name": "star"}
    counts = {s: info["count"] for s, info in m["splits"].items()}
    assert counts == {"train": 60, "val": 30, "ood": 20}
    assert set(m["splits"]["train"]["per_class"].values()) == {6}
    assert [s["rows"] for s in m["splits"]["train"]["shards"]] == [25, 25, 10]
    assert m["skipped"] == {} and json.loads((out / "skipped.json").read_text()) == {"skipped": [], "repaired": []}
    assert (out / "samples.png").is_file()


def test_every_image_has_a_caption_and_its_factors(prepared):
    out, _ = prepared
    data = load_split(out, "train")
    assert data.images.shape == (60, 32, 32, 3)
    factors = {"shape", "color", "color_index", "object_count", "size_name", "object_size", "texture",
               "texture_frequency", "palette", "style", "brightness", "blur", "complexity", "caption"}
    for row, label in zip(data.meta, data.labels, strict=True):
        assert factors <= set(row)
        assert row["shape"] == demo.CLASSES[label] and demo.COLORS[row["color_index"]][0] == row["color"]
        assert row["caption"].startswith("a ") and row["color"] in row["caption"]
        assert demo.TEXTURE_WORDS[row["texture"]] in row["caption"]
        assert 1 <= row["object_count"] <= 5 and 0 <= row["complexity"] <= 1


def test_caption_wording():
    f = {"shape": "cross", "object_count": 2, "size_name": "small", "color": "red", "texture": "stripes",
         "brightness": 1.0, "blur": 0.0}
    assert demo.caption(f, 64) == "a photo of two small red crosses on a striped background"
    f |= {"object_count": 1, "brightness": 0.5, "blur": 1.9, "texture": "dots"}
    assert demo.caption(f, 64) == "a dark blurry photo of a small red cross on a dotted background"


def test_ood_styles_never_occur_in_train_or_val(prepared):
    out, _ = prepared
    seen = {s: load_split(out, s).meta for s in ("train", "val", "ood")}
    for key in ("style", "texture", "color", "palette"):
        in_dist = {r[key] for r in seen["train"] + seen["val"]}
        assert not in_dist & {r[key] for r in seen["ood"]}, key
    assert {r["texture"] for r in seen["ood"]} <= set(demo.TEXTURES_OOD)


def test_brightness_and_blur_vary_widely_and_independently_of_class(many):
    labels = np.array([i % 10 for i in range(len(many))])
    for key, lo, hi in (("brightness", 0.45, 1.55), ("blur", 0.1, 0.95 * demo.BLUR_MAX_AT_64 * 32 / 64)):
        values = np.array([f[key] for f in many])
        assert values.min() < lo and values.max() > hi, key
        class_means = np.array([values[labels == c].mean() for c in range(10)])
        # 30 images a class: a class-dependent factor would shift some class mean by far more than this
        assert np.abs(class_means - values.mean()).max() < 0.8 * values.std(), key
    b, s = np.array([f["brightness"] for f in many]), np.array([f["blur"] for f in many])
    assert abs(np.corrcoef(b, s)[0, 1]) < 0.2


def test_complexity_tracks_scene_content(many):
    # in distribution the backgrounds have no edges: complexity is the objects' outline, so it grows
    # with their count and size; the ood split's textures add edges of their own
    c = np.array([f["complexity"] for f in many])
    count = np.array([f["object_count"] for f in many])
    size = np.array([f["object_size"] for f in many])
    assert {f["texture"] for f in many} <= set(demo.TEXTURES_IN)
    assert np.corrcoef(c, count)[0, 1] > 0.3 and np.corrcoef(c, size)[0, 1] > 0.1
    ood = [demo.render(demo.DemoSpec(0, "ood", i, 10, 32))[1]["complexity"] for i in range(40)]
    assert np.mean(ood) > c.mean()


def _rank_corr(a, b) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def test_brightness_and_blur_show_in_the_pixels():
    renders = [demo.render(demo.DemoSpec(0, "val", i, 10, 64)) for i in range(120)]
    gray = [img.astype(float).mean(-1) for img, _ in renders]
    mean = [g.mean() for g in gray]
    # high-frequency energy relative to contrast: lower when blurred, whatever the texture
    laplacian = [np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()
                 / (g.std() + 1e-6) for g in gray]
    assert _rank_corr([f["brightness"] for _, f in renders], mean) > 0.6
    assert _rank_corr([f["blur"] for _, f in renders], laplacian) < -0.4
