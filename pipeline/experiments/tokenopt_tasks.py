"""The three token-optimisation experiments as library functions: editing, generation, inpainting.

Each function batches many images through :func:`~pipeline.experiments.tokenopt.optimize_tokens` (every
image keeps its own prompt / known region) and returns a :class:`TaskOutput`: the images in [0, 1], one
JSON-ready record per image, and (inpainting) the masks. Batch ``i`` runs with the loop seed ``seed + i`` so
batches draw different noise and crops while the whole run stays reproducible.

* :func:`edit_images`: text-guided editing of seed images, one prompt per image.
* :func:`generate_class_images`: class-conditional generation with prompts ``template.format(name)``,
  initialised from a seed set (size, association ``random`` / ``clip_top1`` / ``clip_top1pct``) or from
  random tokens (:func:`random_start_tokens`, which the generation stage also decodes as a baseline).
* :func:`inpaint_images`: inpainting / outpainting with :func:`make_masks` (``center``, ``boxes``,
  ``half``): masked L1 on the known pixels (plus an optional CLIP prompt), seeded with the masked image,
  the known region re-encoded every ``config.reset_period`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline.experiments.tokenopt import (
    CLIPObjective,
    KnownRegion,
    MaskedReconstructionObjective,
    TokenOptConfig,
    WeightedSum,
    optimize_tokens,
)
from pipeline.metrics.clip_score import image_embeddings, text_embeddings
from pipeline.models.clip import ClipModel
from pipeline.models.titok import TiTok

Association = Literal["random", "clip_top1", "clip_top1pct"]
MaskKind = Literal["center", "boxes", "half"]


@dataclass
class TaskOutput:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1], on the CPU
    records: list[dict]  # one per image: its prompt / class / seed index / final loss ...
    masks: torch.Tensor | None = None  # inpainting: (N, 1, H, W), 1 = known pixel


def _optimize_in_batches(titok: TiTok, config: TokenOptConfig, n: int, batch_size: int,
                         objective_for: Callable[[slice], nn.Module], *, seed: int,
                         images: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                         known: KnownRegion | None = None, reset_period: int = 0,
                         progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the loop over ``n`` images in batches -> (images (n, 3, H, W), final loss (n,)) on the CPU.

    Batch i runs with the loop's seed ``seed + i``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outs, losses = [], []
    for i, start in enumerate(range(0, n, batch_size)):
        sl = slice(start, min(start + batch_size, n))
        result = optimize_tokens(
            titok, objective_for(sl), config,
            images=None if images is None else images[sl], tokens=None if tokens is None else tokens[sl],
            known=None if known is None else KnownRegion(known.images[sl], known.mask[sl]),
            reset_period=reset_period, seed=seed + i, progress=progress)
        outs.append(result.images.cpu())
        losses.append(result.loss_history[-1])
    return torch.cat(outs), torch.cat(losses)


def edit_images(titok: TiTok, clip: ClipModel, images: torch.Tensor, prompts: Sequence[str],
                config: TokenOptConfig, *, batch_size: int = 16, negative_prompts: Sequence[str] | None = None,
                guidance_scale: float = 1.0, seed: int = 0, progress=None) -> TaskOutput:
    """Text-guided editing: optimise the tokens of each seed image (N, 3, H, W) towards its prompt.

    ``seed``: of the loop (batch i: ``seed + i``)."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
    if negative_prompts is not None and len(negative_prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(negative_prompts)} negative prompts")
    device = titok.latent_tokens.device

    def objective_for(sl: slice) -> nn.Module:
        neg = None if negative_prompts is None else list(negative_prompts[sl])
        return CLIPObjective(clip, list(prompts[sl]), negative_prompts=neg, guidance_scale=guidance_scale)

    out, loss = _optimize_in_batches(titok, config, len(images), batch_size, objective_for, seed=seed,
                                     images=images.to(device), progress=progress)
    records = [{"index": i, "prompt": p, "final_loss": float(v)}
               for i, (p, v) in enumerate(zip(prompts, loss, strict=True))]
    return TaskOutput(out, records)


def associate_seeds(clip: ClipModel, seed_images: torch.Tensor, prompts: Sequence[str], association: Association,
                    generator: torch.Generator) -> torch.Tensor:
    """Index into ``seed_images`` for every prompt (len(prompts),).

    ``random``: uniform; ``clip_top1``: the seed whose CLIP image embedding is closest to the prompt's
    text embedding; ``clip_top1pct``: uniform among the closest 1 % of the seed set (at least one).
    """
    n = len(seed_images)
    if association == "random":
        return torch.randint(0, n, (len(prompts),), generator=generator)
    if association not in ("clip_top1", "clip_top1pct"):
        raise ValueError(f"association must be 'random', 'clip_top1' or 'clip_top1pct', got {association!r}")
    unique = sorted(set(prompts))
    sim = text_embeddings(clip, unique) @ image_embeddings(clip, seed_images).T  # (P, n)
    rows = torch.tensor([unique.index(p) for p in prompts])
    if association == "clip_top1":
        return sim.argmax(dim=1)[rows]
    top = sim.topk(max(1, math.ceil(0.01 * n)), dim=1).indices  # (P, k)
    pick = torch.randint(0, top.shape[1], (len(prompts),), generator=generator)
    return top[rows, pick]


def random_start_tokens(titok: TiTok, n: int, generator: torch.Generator, post_quantization: bool) -> torch.Tensor:
    """``n`` N(0, I) token sets (n, C, 1, N) on the CPU: where generation without seed images starts (a VAE's
    pre-quantisation tokens hold mean and log-variance, twice the channels)."""
    c = titok.config
    channels = c.token_size * (2 if c.quantize_mode == "vae" and not post_quantization else 1)
    return torch.randn(n, channels, 1, c.num_latent_tokens, generator=generator)


def generate_class_images(titok: TiTok, clip: ClipModel, class_names: Sequence[str], num_per_class: int,
                          config: TokenOptConfig, *, seed_images: torch.Tensor | None = None,
                          association: Association = "random",
                          template: str, batch_size: int = 16, seed: int = 0,
                          progress=None) -> TaskOutput:
    """Class-conditional generation: ``num_per_class`` images per class, prompt ``template.format(name)``.

    With ``seed_images`` (M, 3, H, W), the seed set (the caller draws it), each sample starts from the seed
    chosen by ``association``; without, from N(0, I) tokens.
    ``seed``: of those draws and of the loop (batch i: ``seed + i``).
    """
    if num_per_class < 1 or not class_names:
        raise ValueError(f"need at least one class and num_per_class >= 1, got {len(class_names)} classes and "
                         f"num_per_class={num_per_class}")
    generator = torch.Generator().manual_seed(seed)
    labels = [c for c in range(len(class_names)) for _ in range(num_per_class)]
    prompts = [template.format(class_names[c]) for c in labels]
    device = titok.latent_tokens.device
    records = [{"index": i, "class_index": c, "class_name": class_names[c], "prompt": p}
               for i, (c, p) in enumerate(zip(labels, prompts, strict=True))]

    if seed_images is None:
        tokens = random_start_tokens(titok, len(prompts), generator, config.optimize_post_quantization)
        init = {"tokens": tokens.to(device)}
    else:
        # a permutation of the seed set: it changes no choice's distribution, but keeps the draws (and so the
        # images) of the runs made when this function could also draw a subset
        subset = torch.randperm(len(seed_images), generator=generator)
        seeds = seed_images[subset]
        chosen = associate_seeds(clip, seeds, prompts, association, generator)
        init = {"images": seeds[chosen].to(device)}
        for record, j in zip(records, chosen.tolist(), strict=True):
            record["seed_index"] = int(subset[j])

    out, loss = _optimize_in_batches(titok, config, len(prompts), batch_size,
                                     lambda sl: CLIPObjective(clip, prompts[sl]), seed=seed, progress=progress, **init)
    for record, v in zip(records, loss, strict=True):
        record["final_loss"] = float(v)
    return TaskOutput(out, records)


def make_masks(kind: MaskKind, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Known-pixel masks (n, 1, size, size): 1 = known, 0 = to fill.

    ``center``: a centred square hole of half the side; ``boxes``: 1 to 3 random rectangular holes with
    sides between 1/8 and 1/2 of the image; ``half``: outpainting, the right half is unknown.
    """
    mask = torch.ones(n, 1, size, size)
    if kind == "center":
        lo, hi = size // 4, size - size // 4
        mask[..., lo:hi, lo:hi] = 0
    elif kind == "half":
        mask[..., size // 2:] = 0
    elif kind == "boxes":
        lo, hi = max(1, size // 8), max(1, size // 2)
        for i in range(n):
            for _ in range(int(torch.randint(1, 4, (), generator=generator))):
                h, w = (int(v) for v in torch.randint(lo, hi + 1, (2,), generator=generator))
                top = int(torch.randint(0, size - h + 1, (), generator=generator))
                left = int(torch.randint(0, size - w + 1, (), generator=generator))
                mask[i, :, top:top + h, left:left + w] = 0
    else:
        raise ValueError(f"mask kind must be 'center', 'boxes' or 'half', got {kind!r}")
    return mask


def inpaint_images(titok: TiTok, images: torch.Tensor, mask_kind: MaskKind, config: TokenOptConfig, *,
                   clip: ClipModel | None = None, prompts: Sequence[str] | None = None,
                   clip_weight: float = 1.0, reconstruction_weight: float = 1.0, batch_size: int = 16,
                   reset_period: int = 0, seed: int = 0, progress=None) -> TaskOutput:
    """Fill the unknown region of each image (N, 3, H, W): masked L1 (+ ``clip_weight`` x CLIP to ``prompts``).

    Starts from the masked image; with ``reset_period`` > 0 the known region is pasted back and
    re-encoded every that many steps (the paper's inpainting uses 5). ``seed``: of the masks and of the
    loop (batch i: ``seed + i``).
    """
    if (clip is None) != (prompts is None):
        raise ValueError("text-guided inpainting needs both clip and prompts (or neither)")
    if prompts is not None and len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    device = titok.latent_tokens.device
    masks = make_masks(mask_kind, len(images), images.shape[-1], torch.Generator().manual_seed(seed))
    images, masks_d = images.to(device).float(), masks.to(device)

    def objective_for(sl: slice) -> nn.Module:
        recon = MaskedReconstructionObjective(images[sl], masks_d[sl])
        if clip is None:
            return recon
        return WeightedSum([recon, CLIPObjective(clip, list(prompts[sl]))], [reconstruction_weight, clip_weight])

    out, loss = _optimize_in_batches(titok, config, len(images), batch_size, objective_for,
                                     seed=seed, images=images * masks_d, known=KnownRegion(images, masks_d),
                                     reset_period=reset_period, progress=progress)
    records = [{"index": i, "mask": mask_kind, "known_fraction": float(masks[i].mean()), "final_loss": float(v)}
               | ({"prompt": prompts[i]} if prompts is not None else {}) for i, v in enumerate(loss)]
    return TaskOutput(out, records, masks)
