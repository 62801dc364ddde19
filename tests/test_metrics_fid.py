"""FID / IS / precision-recall through torch-fidelity in a CLIP feature space; ADM npz; Inception weights."""

import json
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
from conftest import TINY_CLIP

from pipeline.errors import InputError, MissingWeightsError
from pipeline.metrics import fid
from pipeline.metrics.images import UInt8Images
from pipeline.models.clip import create_clip

TINY = TINY_CLIP
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    path = tmp_path_factory.mktemp("cfg") / "clip_fid_tiny.json"
    path.write_text(json.dumps(TINY))
    torch.manual_seed(0)
    clip = create_clip("clip_fid_tiny", config=path)
    return fid.clip_feature_space(clip, ["red", "green", "blue"], templates=["a photo of a {}."], name="clip-test-tiny")


def _real(n=200, seed=0):
    """Smooth random images (uint8, NHWC) with a colour bias, so that corruption is visible."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=16, mode="bilinear", align_corners=False)
    x = 0.6 * x + 0.4 * torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def _corrupt(images, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 255
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_corruption(space):
    real = _real()
    ref = fid.reference_stats(space, images=real)
    assert ref.features.shape == (200, 16) and ref.num_images == 200
    same = fid.fidelity_metrics(real, ref, space, isc=False, prc=False)
    assert abs(same["fid"]) < 1e-6 and same["num_samples"] == 200
    values = [fid.fidelity_metrics(_corrupt(real, s), ref, space, isc=False, prc=False)["fid"]
              for s in (0.05, 0.2, 0.5)]
    assert 0 < values[0] < values[1] < values[2]


def test_fid_matches_a_direct_numpy_frechet_distance(space):
    a, b = _real(150, seed=0), _corrupt(_real(150, seed=2), 0.1)
    fa = fid.extract_features(a, space, layers=["clip"])["clip"].double().numpy()
    fb = fid.extract_features(b, space, layers=["clip"])["clip"].double().numpy()
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    ref = fid.reference_stats(space, images=b)
    got = fid.fidelity_metrics(a, ref, space, isc=False, prc=False)["fid"]
    assert got == pytest.approx(expected, rel=1e-4)
    # The same number as torch-fidelity's own entry point with our registered extractor.
    tf = torch_fidelity.calculate_metrics(input1=UInt8Images(a), input2=UInt8Images(b), feature_extractor=space.name,
                                          fid=True, cuda=False, verbose=False, cache=False, save_cpu_ram=True)
    assert got == pytest.approx(tf["frechet_inception_distance"], rel=1e-4)


def test_is_and_precision_recall(space):
    real = _real()
    ref = fid.reference_stats(space, images=real, prc_images=150)
    assert ref.features.shape[0] == 150
    m = fid.fidelity_metrics(real[:100], ref, space, isc_splits=2)
    assert 1.0 <= m["isc_mean"] <= 3.0  # at most the number of classes
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0 and m["precision"] > 0.8
    far = fid.fidelity_metrics(torch.zeros(100, 3, 16, 16), ref, space, isc=False)
    assert far["precision"] < m["precision"]
    assert "isc_mean" not in far
    n = fid.fidelity_metrics(real, ref, space, num_samples=50, isc=False, prc=False)["num_samples"]
    assert n == 50


def test_precision_recall_is_left_out_when_a_set_has_no_kth_neighbour(space):
    # k = 3: torch-fidelity needs 4 images in each set and fails with a bare kthvalue error below that
    real = _real(20)
    ref = fid.reference_stats(space, images=real, prc_images=20)
    few = fid.fidelity_metrics(real[:fid.PRC_NEIGHBOURS], ref, space, isc=False)
    assert "precision" not in few and "recall" not in few and few["num_samples"] == fid.PRC_NEIGHBOURS
    assert "precision" in fid.fidelity_metrics(real[:fid.PRC_NEIGHBOURS + 1], ref, space, isc=False)
    small_ref = fid.reference_stats(space, images=real, prc_images=fid.PRC_NEIGHBOURS)
    assert "recall" not in fid.fidelity_metrics(real, small_ref, space, isc=False)


def test_reference_statistics_are_cached(space, tmp_path):
    real = _real(100)
    cache = tmp_path / "ref.npz"
    first = fid.reference_stats(space, images=real, cache=cache)
    assert cache.is_file()
    again = fid.reference_stats(space, images=torch.zeros(100, 16, 16, 3, dtype=torch.uint8), cache=cache)
    assert np.array_equal(first.mu, again.mu) and torch.equal(first.features, again.features)
    other = fid.reference_stats(space, images=real, cache=cache, num_samples=50)  # different key: recomputed
    assert other.num_images == 50


def test_adm_reference_batch_with_float64_statistics(space, tmp_path):
    """An ADM-style npz: float64 mu/sigma (the dtype gotcha) and arr_0 images for precision/recall."""
    real = _real(120)
    feats = fid.extract_features(real, space, layers=["clip"])["clip"].double().numpy()
    npz = tmp_path / "VIRTUAL_test_labeled.npz"
    np.savez(npz, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), arr_0=real.numpy()[:80])
    with np.load(npz) as z:
        assert z["mu"].dtype == np.float64
    ref = fid.reference_stats(space, adm_npz=npz, cache=tmp_path / "adm.npz")
    assert ref.features.shape == (80, 16) and ref.source == "adm:VIRTUAL_test_labeled.npz"
    m = fid.fidelity_metrics(real, ref, space, isc=False)
    assert abs(m["fid"]) < 1e-3 and "precision" in m
    # torch-fidelity itself refuses mixed dtypes; frechet_distance casts both sides.
    own = {"mu": feats.mean(0).astype(np.float32), "sigma": np.cov(feats, rowvar=False)}
    with pytest.raises(AssertionError):
        torch_fidelity.metric_fid.fid_statistics_to_metric(own, ref.as_dict(), verbose=False)
    assert abs(fid.frechet_distance(own, ref.as_dict())) < 1e-3
    wrong = tmp_path / "inception.npz"
    np.savez(wrong, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(InputError, match="different dimension"):
        fid.fidelity_metrics(real, fid.reference_stats(space, adm_npz=wrong), space, isc=False)
    with pytest.raises(InputError, match="not found"):
        fid.reference_stats(space, adm_npz=tmp_path / "missing.npz")


def test_inception_weights_must_be_local(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(MissingWeightsError) as err:
        fid.inception_feature_space()
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and str(tmp_path / "torch-home") in msg
    with pytest.raises(MissingWeightsError, match="my/inception.pth"):
        fid.inception_feature_space(tmp_path / "my" / "inception.pth")
    # Found in the hub cache under pytorch-fid's name: construction would read it from there.
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    assert fid.inception_weights() == hub / "pt_inception-2015-12-05-6726825d.pth"


def test_an_extractor_is_built_once_per_space_and_layers_and_anew_for_a_re_registered_clip(space, monkeypatch):
    built = []
    create = fid.create_feature_extractor
    monkeypatch.setattr(fid, "create_feature_extractor", lambda *a, **k: built.append(a) or create(*a, **k))
    monkeypatch.setattr(fid, "_EXTRACTORS", {})
    images = _real(8)
    first = fid.extract_features(images, space, device="cpu")
    again = fid.extract_features(images, space, device="cpu")
    assert len(built) == 1 and all(torch.equal(first[k], again[k]) for k in first)
    fid.extract_features(images, space, layers=[space.fid_layer], device="cpu")
    assert len(built) == 2  # other layers: another extractor
    registered = fid.ClipFeatures.models[space.name]
    torch.manual_seed(1)
    other = fid.clip_feature_space(create_clip("clip_fid_tiny"), ["red", "green", "blue"],
                                   templates=["a photo of a {}."], name=space.name)
    try:
        changed = fid.extract_features(images, other, device="cpu")
        assert len(built) == 3 and not torch.equal(changed[space.fid_layer], first[space.fid_layer])
    finally:  # the module's other tests use the first model under this name
        fid.ClipFeatures.models[space.name] = registered
