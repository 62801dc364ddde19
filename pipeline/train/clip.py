"""Contrastive training of the demo CLIP on the demo captions (a plain loop: the model is tiny).

The loss is CLIP's symmetric cross-entropy over the image-text similarities of a batch, with one change
for a captioned dataset whose captions repeat: images in a batch that share a caption are all positives
of that caption (soft targets), instead of being pushed apart as false negatives.

An image may have several captions (as COCO's five); each step draws one of them per image. The demo
uses a full caption plus shorter ones naming fewer factors: with full captions only, colour, count and
background already tell the pairs of a batch apart, and the model never needs to learn the shapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.models.clip import ClipModel
from pipeline.train.schedule import cosine_with_warmup


@dataclass(frozen=True)
class ClipTrainConfig:
    """Hyper-parameters of :func:`train_clip`."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 40
    seed: int = 0


@dataclass
class ClipTrainResult:
    losses: list[float]  # one per optimiser step
    seconds: float
    steps: int


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on unit embeddings (B, D); pairs with the same ``caption_ids`` (B,) are positives."""
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _param_groups(clip: ClipModel, weight_decay: float) -> list[dict]:
    # As in CLIP: no decay on gains, biases, embeddings and the temperature.
    decay, no_decay = [], []
    for name, p in clip.model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("token_embedding.weight"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip(clip: ClipModel, images: torch.Tensor, captions: Sequence[str | Sequence[str]], cfg: ClipTrainConfig,
               *, log: Callable[[int, dict[str, float]], None] | None = None) -> ClipTrainResult:
    """Train ``clip`` in place on uint8 images (N, H, W, 3) and their captions; returns the loss curve.

    ``captions[i]`` is one string or a list of alternatives for image i.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():  # the preprocessing is deterministic: resize and normalise once
        x01 = images.permute(0, 3, 1, 2).float().div(255)
        pixels = torch.cat([clip.preprocess(b) for b in x01.split(512)])  # (N, 3, h, w)
    options = [[c] if isinstance(c, str) else list(c) for c in captions]
    texts = list(dict.fromkeys(t for opts in options for t in opts))
    text_index = {t: i for i, t in enumerate(texts)}
    tokens = clip.tokenize(texts).cpu()  # (U, context_length)
    width = max(len(o) for o in options)
    # choice[i, j]: the j-th caption of image i, its alternatives repeated to a common width
    choice = torch.tensor([[text_index[o[j % len(o)]] for j in range(width)] for o in options])

    n = len(images)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the ragged last batch: constant batch statistics
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(_param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    clip.train()
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            lr = cosine_with_warmup(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                    total_steps=total)
            for g in opt.param_groups:
                g["lr"] = lr
            ids = choice[idx, torch.randint(width, (len(idx),), generator=gen)]  # one caption per image
            img = clip.model.encode_image(pixels[idx].to(clip.device), normalize=True)
            txt = clip.model.encode_text(tokens[ids].to(clip.device), normalize=True)
            loss = contrastive_loss(img, txt, clip.model.logit_scale, ids.to(clip.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # CLIP's clamp: temperature at most 100
                clip.model.logit_scale.clamp_(0, 4.6052)
            losses.append(loss.item())
            if log is not None:
                log(step, {"loss": losses[-1], "lr": lr, "logit_scale": clip.model.logit_scale.exp().item()})
            step += 1
    clip.eval()
    return ClipTrainResult(losses=losses, seconds=time.perf_counter() - start, steps=step)
