"""Scores of token-optimisation outputs: CLIP and judge scores, zero-shot accuracy, FID / IS / precision-recall,
edit and inpainting statistics (the engine of the ``eval_tokenopt`` stage, which reads params.yaml and the
samples and writes the metrics; what each score means is in :mod:`pipeline.stages.eval_tokenopt`).

Public API: ``Scorer`` (the models and FID reference every score uses), ``editing_scores`` and
``inpainting_scores`` (from a stage's sample arrays and records), ``brightness_direction``. Images are
uint8 (N, H, W, 3) arrays, converted to float ``CHUNK`` at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.metrics.clip_score import clip_score, zero_shot_classifier, zero_shot_logits
from pipeline.metrics.fid import FeatureSpace, ReferenceStats, fidelity_metrics
from pipeline.metrics.image_stats import l1, mean_brightness, psnr
from pipeline.models.clip import ClipModel

CHUNK = 1024  # images converted to float at a time (50k x 256 px as float would not fit)


def _chunked(fn, images: np.ndarray, *args) -> torch.Tensor:
    """``fn(images[i:j], *args[i:j])`` over chunks of ``CHUNK`` images, concatenated."""
    return torch.cat([fn(images[i:i + CHUNK], *(a[i:i + CHUNK] for a in args)) for i in range(0, len(images), CHUNK)])


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean())


class Scorer:
    """The models and reference every score uses; ``isc_splits`` (at most one per image) and ``batch_size``
    are the FID settings."""

    def __init__(self, objective: ClipModel, judge: ClipModel, space: FeatureSpace, reference: ReferenceStats,
                 names: list[str], templates: list[str], *, isc_splits: int, batch_size: int) -> None:
        self.objective, self.judge, self.space, self.reference = objective, judge, space, reference
        self.isc_splits, self.batch_size = isc_splits, batch_size
        self.classifier = zero_shot_classifier(judge, names, templates)

    def clip(self, model: ClipModel, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        return _chunked(lambda x, p: clip_score(model, x, list(p)), images, prompts)

    def zero_shot_correct(self, images: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        logits = _chunked(lambda x: zero_shot_logits(self.judge, x, self.classifier), images)
        return logits.argmax(1) == torch.as_tensor(labels)

    def fidelity(self, images: np.ndarray, *, isc: bool = True, prc: bool = True) -> dict:
        if len(images) < 2:  # a covariance needs two samples
            return {"fid": None, "num_samples": len(images)}
        return fidelity_metrics(images, self.reference, self.space, isc=isc, prc=prc,
                                isc_splits=min(self.isc_splits, len(images)), batch_size=self.batch_size)

    def generation_row(self, images: np.ndarray, labels: np.ndarray, prompts: list[str]) -> dict:
        return self.fidelity(images) | {
            "clip_score": _mean(self.clip(self.objective, images, prompts)),
            "judge_score": _mean(self.clip(self.judge, images, prompts)),
            "judge_zero_shot_top1": _mean(self.zero_shot_correct(images, labels))}


def brightness_direction(template: str) -> int:
    """+1 for a prompt asking for a brighter image, -1 for a darker one, 0 when it does not say."""
    words = set(template.lower().replace(",", " ").split())
    return int("bright" in words or "brighter" in words) - int("dark" in words or "darker" in words)


def editing_scores(scorer: Scorer, arrays: dict[str, np.ndarray], records: list[dict]) -> dict:
    """Scores of ``tokenopt_edit``'s samples: overall and per prompt template (see the stage's docstring)."""
    source, edited = arrays["source"], arrays["edited"]
    before_images = source[[r["index"] % len(source) for r in records]]
    prompts = [r["prompt"] for r in records]
    s = {"clip_before": scorer.clip(scorer.objective, before_images, prompts),
         "clip_after": scorer.clip(scorer.objective, edited, prompts),
         "judge_before": scorer.clip(scorer.judge, before_images, prompts),
         "judge_after": scorer.clip(scorer.judge, edited, prompts),
         "psnr_to_source": _chunked(psnr, edited, before_images),
         "brightness_before": _chunked(mean_brightness, before_images),
         "brightness_after": _chunked(mean_brightness, edited)}
    direction = torch.tensor([brightness_direction(r["template"]) for r in records])
    moved = torch.sign(s["brightness_after"] - s["brightness_before"]) == direction

    def summary(idx: list[int]) -> dict:
        m = {k: _mean(v[idx]) for k, v in s.items()}
        m["clip_improved_fraction"] = _mean(s["clip_after"][idx] > s["clip_before"][idx])
        m["judge_improved_fraction"] = _mean(s["judge_after"][idx] > s["judge_before"][idx])
        asked = [i for i in idx if direction[i] != 0]
        m["brightness_as_prompted_fraction"] = _mean(moved[asked]) if asked else None
        return m | {"num_images": len(idx), "num_brightness_prompts": len(asked)}

    templates = list(dict.fromkeys(r["template"] for r in records))
    return {"overall": summary(list(range(len(records)))),
            "per_prompt": {t: summary([i for i, r in enumerate(records) if r["template"] == t]) for t in templates}}


def inpainting_scores(scorer: Scorer, arrays: dict[str, np.ndarray], records: list[dict]) -> dict:
    """Scores of ``tokenopt_inpaint``'s samples, per mask kind, for the result and the loop's start."""
    original = arrays["original"]
    out = {}
    for kind in dict.fromkeys(r["mask"] for r in records):
        idx = [i for i, r in enumerate(records) if r["mask"] == kind]
        orig = torch.from_numpy(original[[records[i]["image_index"] for i in idx]])
        known = torch.from_numpy(arrays["masks"][idx]).float()[:, None]  # (n, 1, H, W), 1 = known
        hole = 1 - known
        row: dict = {"num_images": len(idx), "image_size": int(orig.shape[1]), "known_fraction": _mean(known)}
        for name, key in (("result", "inpainted"), ("start", "start")):
            raw = torch.from_numpy(arrays[key][idx])
            composite = known.permute(0, 2, 3, 1) * orig + hole.permute(0, 2, 3, 1) * raw  # (n, H, W, 3)
            composite = composite.round().to(torch.uint8).numpy()
            row[name] = scorer.fidelity(composite, isc=False, prc=False) | {
                "l1_hole": _mean(l1(raw, orig, mask=hole)), "psnr_hole": _mean(psnr(raw, orig, mask=hole)),
                "psnr_known": _mean(psnr(raw, orig, mask=known))}
        out[kind] = row
    return out
