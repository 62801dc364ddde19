"""What ``params.yaml`` names, loaded: prepared data, the CLIP models and the FID set-up of the stages.

The stage side of the stage/library line: the library (``pipeline.models``, ``metrics``, ``data``,
``train``, ``experiments``) takes plain values (folders, model names, images) and never imports
``pipeline.params``; the stages turn their parameters into those values here.

- :func:`class_names`: the class names of the prepared data.
- :func:`objective_clip` / :func:`judge_clip`: the CLIP that token optimisation maximises and the
  independent judge that scores its results. Demo: the two models ``train_clip`` trains
  (``<paths.models>/clip`` and ``<paths.models>/clip/judge``: other image tower, other seed; no
  optimisation ever sees the judge). Paper: ``train_clip.objective`` (ViT-B-32 ``laion2b_s34b_b79k``) and
  ``train_clip.judge`` (SigLIP).
- :func:`feature_space`: the FID feature space: the demo judge's image encoder with zero-shot IS
  logits over the class names, or ADM's Inception (local weights).
- :func:`fid_reference`: reference statistics from ``fid.adm_npz`` when set, else from the first
  ``fid.reference_images`` images of a prepared split, cached in a file the caller names.
- :func:`fid_num_samples`: ``fid.samples_per_class`` x number of classes (50 x 1000 = 50k at paper scale).
- :func:`data_protocol` / :func:`reference_label`: the prepared data and the reference statistics in the
  words of an evaluation protocol, for the ``protocol`` records of the metrics files (the report
  compares them with the papers' protocols).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.shards import image_protocol, load_split, manifest_class_names, read_manifest
from pipeline.errors import InputError
from pipeline.layout import JUDGE_SUBDIR, prepared_root, trained_clip_dir
from pipeline.metrics.fid import (
    FeatureSpace,
    ReferenceStats,
    clip_feature_space,
    inception_feature_space,
    reference_stats,
)
from pipeline.models.clip import ClipModel, load_clip
from pipeline.params import Params


def _trained(folder: Path, config: str, device: str) -> ClipModel:
    if not (folder / "open_clip_config.json").is_file():
        raise InputError(f"{folder}/open_clip_config.json: the demo CLIP is not there. Run `dvc repro train_clip` "
                         "(or `python -m pipeline train_clip`) first")
    return load_clip(config, folder, device=device)


def objective_clip(params: Params, device: str = "cpu") -> ClipModel:
    """The CLIP that guides token optimisation (frozen, eval mode)."""
    if params.train_clip.source == "train":
        return _trained(trained_clip_dir(params), params.train_clip.config, device)
    w = params.train_clip.objective
    return load_clip(w.model, w.weights, tag=w.tag, device=device)


def judge_clip(params: Params, device: str = "cpu") -> ClipModel:
    """The model that scores optimised images (SigLIP at paper scale; the demo judge CLIP in the demo)."""
    if params.train_clip.source == "train":
        return _trained(trained_clip_dir(params) / JUDGE_SUBDIR, params.train_clip.judge_config, device)
    w = params.train_clip.judge
    return load_clip(w.model, w.weights, tag=w.tag, device=device)


def class_names(params: Params) -> list[str]:
    """Class names of the prepared data, in label order."""
    return manifest_class_names(prepared_root(params))


def feature_space(params: Params, clip: ClipModel | None = None) -> FeatureSpace:
    """The FID feature space of ``fid.feature_space`` (``clip``: the judge's, loaded if not given)."""
    if params.fid.feature_space == "inception":
        return inception_feature_space(params.fid.inception_weights)
    clip = clip if clip is not None else judge_clip(params)
    return clip_feature_space(clip, class_names(params), templates=params.train_clip.templates)


def fid_num_samples(params: Params) -> int:
    """Number of generated samples FID is computed on."""
    return params.fid.samples_per_class * len(class_names(params))


def fid_reference(params: Params, space: FeatureSpace, cache: str | Path, *,
                  split: str | None = None) -> ReferenceStats:
    """Reference statistics for ``space``: the ADM batch if ``fid.adm_npz``, else real images of ``split``.

    ``split`` defaults to ``fid.reference_split`` (train, as ADM's statistics); reconstruction FID
    passes ``"val"``, the split whose reconstructions are scored.
    """
    f = params.fid
    if f.adm_npz is not None and split in (None, f.reference_split):
        return reference_stats(space, adm_npz=f.adm_npz, cache=cache, prc_images=f.prc_images,
                               batch_size=f.batch_size)
    data = load_split(prepared_root(params), split or f.reference_split, limit=f.reference_images)
    return reference_stats(space, images=data.images, cache=cache, prc_images=f.prc_images, batch_size=f.batch_size)


def data_protocol(params: Params, split: str | None) -> dict[str, object]:
    """The protocol parts the prepared data fixes for images of ``split``: dataset, image size, crop, pixels."""
    return image_protocol(read_manifest(prepared_root(params)), split)


def reference_label(params: Params, reference: ReferenceStats, split: str | None = None) -> str:
    """The reference statistics of :func:`fid_reference` in protocol words: ``adm:<file>`` or the real images."""
    if reference.source.startswith("adm:"):
        return reference.source
    dataset = data_protocol(params, None)["dataset"].split(",")[0]
    return f"{dataset} {split or params.fid.reference_split}, {reference.num_images} images"
