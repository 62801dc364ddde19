"""Contrastive training of the demo CLIP on the demo captions (a plain loop: the model is tiny).

The loss is CLIP's symmetric cross-entropy over the image-text similarities of a batch, with one change
for a captioned dataset whose captions repeat: images in a batch that share a caption are all positives
of that caption (soft targets), instead of being pushed apart as false negatives.

An image may have several captions (as COCO's five); each step draws one of them per image. The demo
uses a full caption plus shorter ones naming fewer factors: with full captions only, colour, count and
background already tell the pairs of a batch apart, and the model never needs to learn the shapes.

Labelled data (UniCL, Yang et al. 2022, "Unified Contrastive Learning in Image-Text-Label Space"): when
images come with class labels, every step also scores each image against the prompts of *all* classes
(``label_texts``, e.g. "a photo of a circle.") and adds ``label_weight`` x the cross-entropy of its own
class. In a batch of 32 an image meets one or two other shape prompts, mostly beaten by colour alone;
against all ten the image tower has to see the shape. Measured on the demo (3,000 images, 744 steps):
zero-shot top-1 0.27 without the term, see the README for with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.models.clip import ClipModel
from pipeline.train.config import ClipTrainConfig
from pipeline.train.schedule import cosine_with_warmup


@dataclass
class ClipTrainResult:
    losses: list[float]  # one per optimiser step
    seconds: float  # wall time
    cpu_seconds: float  # process CPU time (all threads)
    steps: int
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimiser step
    batch_size: int = 0

    def curve(self, every: int) -> list[dict[str, float]]:
        """Every ``every``-th step (0, every, ...): its loss, and the images/s since the previous row."""
        rows, previous = [], -1
        for step in range(0, len(self.losses), every):
            seconds = sum(self.step_seconds[previous + 1:step + 1])
            rows.append({"step": step, "loss": self.losses[step],
                         "images_per_s": self.batch_size * (step - previous) / max(seconds, 1e-9)})
            previous = step
        return rows


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on unit embeddings (B, D); pairs with the same ``caption_ids`` (B,) are positives."""
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each square image of a batch (B, C, H, H) under a random one of the 8 flips/rotations of the square."""
    flips = torch.rand(3, len(x), generator=gen) < 0.5
    x = torch.where(flips[0, :, None, None, None], x.flip(-1), x)
    x = torch.where(flips[1, :, None, None, None], x.flip(-2), x)
    return torch.where(flips[2, :, None, None, None], x.transpose(-1, -2), x)


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
               *, seed: int = 0, labels: torch.Tensor | None = None, label_texts: Sequence[str] | None = None,
               progress: str | None = None,
               log: Callable[[int, dict[str, float]], None] | None = None) -> ClipTrainResult:
    """Train ``clip`` in place on uint8 images (N, H, W, 3) and their captions; returns the loss curve.

    ``captions[i]`` is one string or a list of alternatives for image i. With ``cfg.label_weight > 0``,
    ``labels`` (N,) index ``label_texts`` (one prompt per class) for the class-prompt term. ``progress``:
    the description of a progress bar (none without). ``seed``: of the batch order, the captions drawn and
    the augmentations.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if cfg.label_weight > 0 and (labels is None or label_texts is None or len(labels) != len(images)):
        raise ValueError("label_weight > 0 needs one label per image and the class prompts (label_texts)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():  # the preprocessing is deterministic: resize and normalise once
        x01 = images.permute(0, 3, 1, 2).float().div(255)
        pixels = torch.cat([clip.preprocess(b) for b in x01.split(512)])  # (N, 3, h, w)
    options = [[c] if isinstance(c, str) else list(c) for c in captions]
    texts = list(dict.fromkeys(t for opts in options for t in opts))
    text_index = {t: i for i, t in enumerate(texts)}
    tokens = clip.tokenize(texts).cpu()  # (U, context_length)
    label_tokens = clip.tokenize(list(label_texts)).to(clip.device) if cfg.label_weight > 0 else None
    width = max(len(o) for o in options)
    # choice[i, j]: the j-th caption of image i, its alternatives repeated to a common width
    choice = torch.tensor([[text_index[o[j % len(o)]] for j in range(width)] for o in options])

    if cfg.init_logit_scale is not None:
        with torch.no_grad():
            clip.model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    n = len(images)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the ragged last batch: constant batch statistics
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(_param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    clip.train()
    losses: list[float] = []
    step_seconds: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    bar = tqdm(total=total, desc=progress, disable=progress is None, mininterval=5)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            step_start = time.perf_counter()
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            lr = cosine_with_warmup(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                    total_steps=total)
            for g in opt.param_groups:
                g["lr"] = lr
            ids = choice[idx, torch.randint(width, (len(idx),), generator=gen)]  # one caption per image
            x = pixels[idx]
            if cfg.augment and x.shape[-1] == x.shape[-2]:
                x = dihedral(x, gen)
            img = clip.model.encode_image(x.to(clip.device), normalize=True)
            uniq, inverse = ids.unique(return_inverse=True)  # short captions repeat: encode each once
            txt = clip.model.encode_text(tokens[uniq].to(clip.device), normalize=True)[inverse.to(clip.device)]
            loss = contrastive_loss(img, txt, clip.model.logit_scale, ids.to(clip.device))
            if label_tokens is not None:
                prompts = clip.model.encode_text(label_tokens, normalize=True)  # (K, D)
                logits = clip.model.logit_scale.exp() * img @ prompts.T
                loss = loss + cfg.label_weight * F.cross_entropy(logits, labels[idx].to(clip.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # CLIP's clamp: temperature at most 100
                clip.model.logit_scale.clamp_(0, 4.6052)
            losses.append(loss.item())  # (a host sync: the step's time below is its real time)
            step_seconds.append(time.perf_counter() - step_start)
            if log is not None:
                log(step, {"loss": losses[-1], "lr": lr, "logit_scale": clip.model.logit_scale.exp().item()})
            step += 1
            bar.update()
    bar.close()
    clip.eval()
    return ClipTrainResult(losses=losses, seconds=time.perf_counter() - start,
                           cpu_seconds=time.process_time() - cpu_start, steps=step, step_seconds=step_seconds,
                           batch_size=cfg.batch_size)
