"""FID, Inception Score and precision/recall through torch-fidelity, in a feature space the run has.

Two feature spaces, both registered with torch-fidelity as feature extractors:

* ``inception-v3-local`` (paper scale): torch-fidelity's ``inception-v3-compat`` (the TF 2015-12-05
  Inception of the ADM evaluator, pool_3 2048-d features, TF1-style bilinear resize to 299), whose
  weights must be a local file: a path from params, or the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``, torch-fidelity's name, or
  ``pt_inception-2015-12-05-6726825d.pth``, pytorch-fid's name for the same weights). It is never
  downloaded; a missing file raises :class:`MissingWeightsError`.
* a CLIP image encoder (the demo): features ``clip`` = the un-normalised image embedding (as
  torch-fidelity's own ``clip-*`` extractors) for FID and precision/recall, and ``logits`` = the CLIP's
  zero-shot logits over the class prompts ``"a photo of a {class}."`` (``exp(logit_scale) * cos``) for
  the Inception Score, which needs class probabilities. Demo numbers are therefore "FD in the demo
  CLIP space" and "IS under the demo CLIP's zero-shot classifier", comparable only among themselves.

Reference statistics come from an ADM reference batch ``.npz`` (``mu``/``sigma`` over the training set,
``arr_0`` = 10k images for precision/recall) when one is given, otherwise from real images, computed
once and cached in a file the caller names. Precision/recall use k=3 nearest neighbours on the same
features as FID, as the ADM evaluator does (on Inception pool_3); torch-fidelity's default ``prc`` runs on
VGG16 features and is not the ADM number. Metric functions take uint8 or float tensors (see
:mod:`pipeline.metrics.images`) or a ``Dataset`` of uint8 (3, H, W) tensors.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from pipeline.errors import InputError, MissingWeightsError
from pipeline.io import atomic_file
from pipeline.metrics.clip_score import zero_shot_classifier
from pipeline.metrics.images import UInt8Images
from pipeline.models.clip import ClipModel

INCEPTION = "inception-v3-local"
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
PRC_NEIGHBOURS = 3  # k of the ADM evaluator's precision/recall

Images = torch.Tensor | np.ndarray | Dataset


def inception_weights(path: str | Path | None = None) -> Path:
    """The local Inception weights file: ``path`` or the torch hub cache; never downloads."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [Path(path)] if path else [hub / name for name in INCEPTION_FILES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise MissingWeightsError(
            "the FID Inception network (torch-fidelity inception-v3-compat)", str(candidates[0]),
            f"download {INCEPTION_URL} to that path (or to {hub}/) and name it in params")
    return found


class InceptionLocal(FeatureExtractorInceptionV3):
    """torch-fidelity's ``inception-v3-compat`` with weights from a local file only.

    The file is first opened with ``torch.load(weights_only=True)``, so that a file holding anything but
    tensors is refused before torch-fidelity loads it (it calls ``weights_only=False``).
    """

    def __init__(self, name: str, features_list: Sequence[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:
        path = inception_weights(feature_extractor_weights_path)
        torch.load(path, map_location="cpu", weights_only=True)
        super().__init__(name, features_list, feature_extractor_weights_path=str(path), **kwargs)


class ClipFeatures(FeatureExtractorBase):
    """A CLIP image encoder as a torch-fidelity feature extractor (features ``clip`` and ``logits``)."""

    # torch-fidelity instantiates extractors from a registered class by name; the model and class
    # weights of each registered name live here.
    models: ClassVar[dict[str, tuple[ClipModel, torch.Tensor]]] = {}

    def __init__(self, name: str, features_list: Sequence[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        clip, classifier = self.models[name]
        self.clip = copy.deepcopy(clip)  # torch-fidelity moves and freezes its extractor in place
        self.register_buffer("classifier", classifier.clone())

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("clip", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "clip", "kid": "clip", "prc": "clip"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> None:
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # x: uint8 (B, 3, H, W)
        emb = self.clip.encode_images(x.float() / 255, normalize=False)  # (B, D)
        out = {"clip": emb.float()}
        if "logits" in self.features_list:
            unit = torch.nn.functional.normalize(emb, dim=-1)
            out["logits"] = self.clip.logits(unit, self.classifier).float()  # (B, C)
        return tuple(out[f] for f in self.features_list)


@dataclass(frozen=True)
class FeatureSpace:
    """A registered torch-fidelity feature extractor, the layers each metric uses, and its protocol name."""

    name: str
    fid_layer: str
    isc_layer: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # "inception" or "clip:<model name>": the features part of an evaluation protocol


def inception_feature_space(weights: str | Path | None = None) -> FeatureSpace:
    """The ADM-protocol Inception space (weights from ``weights`` or the torch hub cache)."""
    path = inception_weights(weights)
    if INCEPTION not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(INCEPTION, InceptionLocal)
    return FeatureSpace(INCEPTION, "2048", "logits_unbiased", {"feature_extractor_weights_path": str(path)},
                        label="inception")


def clip_feature_space(clip: ClipModel, class_names: Sequence[str], *, templates: Sequence[str],
                       name: str = "clip-demo") -> FeatureSpace:
    """The space of ``clip``'s image encoder, with IS logits over ``class_names``; registers ``name``."""
    ClipFeatures.models[name] = (clip, zero_shot_classifier(clip, class_names, templates))
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, ClipFeatures)
    elif FEATURE_EXTRACTORS_REGISTRY[name] is not ClipFeatures:
        raise InputError(f"torch-fidelity feature extractor {name!r} is already registered by something else")
    return FeatureSpace(name, "clip", "logits", label=f"clip:{clip.name}")


def _dataset(images: Images, num_samples: int | None) -> Dataset:
    ds = images if isinstance(images, Dataset) else UInt8Images(images)
    if num_samples is not None:
        if num_samples > len(ds):
            raise InputError(f"asked for {num_samples} samples but only {len(ds)} images were given")
        ds = Subset(ds, range(num_samples))
    return ds


# Extractors built in this process, by space, layers and device. A build is not free (Inception: its
# weights file read twice, 24M parameters initialised, then overwritten) and an evaluation asks for
# features many times (eval_alit: the references and every token count of every split).
_EXTRACTORS: dict[tuple, tuple[Any, FeatureExtractorBase]] = {}


def _extractor(space: FeatureSpace, layers: Sequence[str], cuda: bool) -> FeatureExtractorBase:
    """torch-fidelity's extractor of ``space`` for ``layers``, built on the first call and reused after."""
    key = (space.name, tuple(layers), cuda, tuple(sorted(space.kwargs.items())))
    # a CLIP space registered again under the same name holds another model: the old extractor is stale
    source = ClipFeatures.models.get(space.name)
    cached = _EXTRACTORS.get(key)
    if cached is not None and cached[0] is source:
        return cached[1]
    extractor = create_feature_extractor(space.name, list(layers), cuda=cuda, verbose=False, **space.kwargs)
    _EXTRACTORS[key] = (source, extractor)
    return extractor


def extract_features(images: Images, space: FeatureSpace, *, layers: Sequence[str] | None = None,
                     num_samples: int | None = None, batch_size: int = 64,
                     device: str | None = None) -> dict[str, torch.Tensor]:
    """Features of the images in ``space``: ``{layer: (N, D) float32}`` (FID and IS layers by default)."""
    layers = list(dict.fromkeys(layers or (space.fid_layer, space.isc_layer)))
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    extractor = _extractor(space, layers, cuda)
    return get_featuresdict_from_dataset(_dataset(images, num_samples), extractor, batch_size, cuda,
                                         save_cpu_ram=True, verbose=False)


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """``mu`` (D,) and ``sigma`` (D, D) of features (N, D), both float64."""
    f = features.double().numpy()
    return {"mu": f.mean(axis=0), "sigma": np.cov(f, rowvar=False)}


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """FID between two ``{mu, sigma}`` through torch-fidelity, with both sides cast to float64.

    torch-fidelity asserts equal dtypes; ADM npz statistics are float64 while its own ``mu`` is
    float32, so uncast statistics fail with a bare ``AssertionError``.
    """
    s1 = {k: np.asarray(stats_1[k], dtype=np.float64) for k in ("mu", "sigma")}
    s2 = {k: np.asarray(stats_2[k], dtype=np.float64) for k in ("mu", "sigma")}
    if s1["mu"].shape != s2["mu"].shape:
        raise InputError(f"FID statistics of different dimension: {s1['mu'].shape[0]} vs {s2['mu'].shape[0]} "
                         "(reference statistics from another feature space?)")
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


@dataclass
class ReferenceStats:
    """Reference statistics: FID ``mu``/``sigma`` (float64) and features for precision/recall."""

    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor | None  # (M, D) float32, None when the source has no images
    source: str
    num_images: int

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"mu": self.mu, "sigma": self.sigma}


def _save_reference(path: Path, ref: ReferenceStats, key: str) -> None:
    arrays = {"mu": ref.mu, "sigma": ref.sigma, "key": np.array(key),
              "meta": np.array(json.dumps({"source": ref.source, "num_images": ref.num_images}))}
    if ref.features is not None:
        arrays["features"] = ref.features.numpy()
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_reference(path: Path, key: str) -> ReferenceStats | None:
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            return None
        meta = json.loads(str(z["meta"]))
        feats = torch.from_numpy(z["features"]) if "features" in z else None
        return ReferenceStats(z["mu"], z["sigma"], feats, meta["source"], meta["num_images"])


def reference_stats(space: FeatureSpace, *, images: Images | None = None, adm_npz: str | Path | None = None,
                    cache: str | Path | None = None, num_samples: int | None = None, prc_images: int = 10_000,
                    batch_size: int = 64, device: str | None = None) -> ReferenceStats:
    """Reference statistics from an ADM reference batch, or from real ``images`` (cached in ``cache``).

    ``adm_npz``: ``mu``/``sigma`` are taken as stored (cast to float64; they must be in ``space``, i.e.
    Inception pool_3 for ADM's files); the features of up to ``prc_images`` images of ``arr_0`` serve as
    the precision/recall reference. Otherwise ``mu``/``sigma`` come from the first ``num_samples`` of
    ``images`` (all by default) and the first ``prc_images`` of their features are kept for
    precision/recall. With ``cache``, a file written earlier for the same source, feature space and
    sample count is read instead of recomputed; the caller names it and owns its invalidation (it is a
    DVC output of the stage that writes it).
    """
    if adm_npz is None and images is None:
        raise InputError("reference statistics need an ADM reference batch or real images")
    n = len(images) if images is not None and num_samples is None else num_samples
    source = f"adm:{Path(adm_npz).name}" if adm_npz else "images"
    key = f"{space.name}/{space.fid_layer}/{source}/{n}/{prc_images}"
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        ref = _load_reference(cache, key)
        if ref is not None:
            return ref
    if adm_npz is not None:
        if not Path(adm_npz).is_file():
            raise InputError(f"ADM reference batch {adm_npz} not found (e.g. VIRTUAL_imagenet256_labeled.npz from "
                             "openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/)")
        with np.load(adm_npz, allow_pickle=False) as z:
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            arr = z["arr_0"][:prc_images] if "arr_0" in z else None
        # mu/sigma of ADM batches cover the whole training set; num_images counts the arr_0 images used.
        feats = None
        if arr is not None and len(arr):
            feats = extract_features(arr, space, layers=[space.fid_layer], batch_size=batch_size,
                                     device=device)[space.fid_layer]
        ref = ReferenceStats(mu, sigma, feats, source, 0 if arr is None else len(arr))
    else:
        feats = extract_features(images, space, layers=[space.fid_layer], num_samples=num_samples,
                                 batch_size=batch_size, device=device)[space.fid_layer]
        stats = fid_statistics(feats)
        ref = ReferenceStats(stats["mu"], stats["sigma"], feats[:prc_images].contiguous(), source, len(feats))
    if cache is not None:
        _save_reference(cache, ref, key)
    return ref


def fidelity_protocol(space: FeatureSpace, samples: int, reference: str | None = None) -> dict[str, Any]:
    """What a score of :func:`fidelity_metrics` followed, as parts of an evaluation protocol.

    ``samples`` scored; ``reference``: the caller's description of the reference statistics (the words
    of ``pipeline.report.references``: ``"same images"``, ``"adm:<file>"``, ...; left out for a score
    without one, such as IS); ``uint8`` ``"round"``: every image reaches torch-fidelity through
    :class:`~pipeline.metrics.images.UInt8Images`, which rounds floats to the nearest of 256 levels;
    ``features``: the space's label.
    """
    return {"samples": samples, **({"reference": reference} if reference else {}), "uint8": "round",
            "features": space.label or space.name}


def fidelity_metrics(images: Images, reference: ReferenceStats, space: FeatureSpace, *, num_samples: int | None = None,
                     isc: bool = True, prc: bool = True, isc_splits: int = 10, batch_size: int = 64,
                     device: str | None = None, rng_seed: int = 2020) -> dict[str, float]:
    """FID (and IS, precision/recall) of generated or reconstructed ``images`` against ``reference``.

    Returns ``fid``, ``num_samples`` and, when asked, ``isc_mean``/``isc_std`` (torch-fidelity's IS:
    ``isc_splits`` splits of shuffled samples, 10 as ADM's 50k/5000) and ``precision``/``recall``/
    ``f_score`` (k=3 on the FID features; skipped when the reference has no features, or when either
    set has at most k images: the k-th nearest neighbour within a set must exist).
    """
    layers = [space.fid_layer] + ([space.isc_layer] if isc else [])
    feats = extract_features(images, space, layers=layers, num_samples=num_samples, batch_size=batch_size,
                             device=device)
    fid_feats = feats[space.fid_layer]
    out: dict[str, float] = {"fid": frechet_distance(fid_statistics(fid_feats), reference.as_dict()),
                             "num_samples": len(fid_feats)}
    if isc:
        m = isc_features_to_metric(feats[space.isc_layer], splits=isc_splits, shuffle=True, rng_seed=rng_seed)
        out.update(isc_mean=m["inception_score_mean"], isc_std=m["inception_score_std"])
    if prc and reference.features is not None and min(len(fid_feats), len(reference.features)) > PRC_NEIGHBOURS:
        m = prc_features_to_metric(fid_feats, reference.features, prc_neighborhood=PRC_NEIGHBOURS,
                                   prc_batch_size=10_000, save_cpu_ram=True, verbose=False)
        out.update(precision=m["precision"], recall=m["recall"], f_score=m["f_score"])
    return out
