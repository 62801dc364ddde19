"""Test-time token optimisation (Lao Beyer et al., ICML 2025): edit and generate images with a frozen TiTok.

The optimisation variables are a batch of TiTok tokens; the loss is computed on the image they decode to.
Each step (the official ``tto/test_time_opt.py`` order, so its per-step losses are reproduced):

1. optional token noise ``z += token_noise * s(step) * N(0, I)`` with the cosine decay ``s`` that
   reaches zero at 2/3 of the run (:func:`noise_scale`);
2. ``images = decode(z)``: by default ``z`` are the continuous *pre-quantisation* tokens and decoding
   goes through the (l2-normalised) vector quantiser with straight-through gradients, so the image only
   changes when a code flips while the gradient reaches ``z`` through the normalisation;
3. ``loss = objective(images)`` per image, plus the ``seed`` (``mean((z - z0)^2)``) or ``zero``
   (``mean(z^2)``) regulariser; the sum over the batch is minimised with Adam at a constant rate (images
   are independent: Adam is element-wise and each loss sees only its own image);
4. for inpainting, every ``reset_period`` steps the tokens are replaced by the encoding of the decoded
   image with the known pixels pasted back (Adam's moments are kept);
5. EMA of the tokens (decay 0 at the first update, then ``ema_decay``); the result is decoded from it.

Objectives are small modules mapping decoded images (B, 3, H, W) to a loss per image (B,), given the
step's random views (:class:`RandomViews`: K random crops to the CLIP input size plus horizontal flips,
one draw shared by the batch as in the official code, or one per image). :class:`CLIPObjective`
(negative cosine similarity to a prompt per image, optional negative prompt),
:class:`MaskedReconstructionObjective` (L1 on known pixels) and :class:`WeightedSum` of these.

Tokens and images convert with :func:`pipeline.models.batched.images_to_tokens` /
:func:`~pipeline.models.batched.tokens_to_images`, shared with the stages' batched loops.

Departures from the official loop, all of which leave its results unchanged: the frozen networks get
``requires_grad_(False)`` (the official loop lets their ``.grad`` buffers fill up every step), the
random draws come from one seeded generator instead of the global RNG, and autocast may be bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.experiments.tokenopt_config import TokenOptConfig
from pipeline.models.batched import images_to_tokens, tokens_to_images
from pipeline.models.clip import ClipModel
from pipeline.models.titok import TiTok
from pipeline.train.precision import autocast

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def noise_scale(step: int, num_iter: int) -> float:
    """Cosine decay of the token noise: 1 at step 0, 0 from 2/3 of ``num_iter`` on."""
    t = min(1.0, 1.5 * step / max(num_iter - 1, 1))
    return 0.5 * (1.0 + math.cos(math.pi * t))


class RandomViews:
    """The views of the decoded images an objective scores, drawn once per step and model input size.

    ``num`` = 0: the whole image, bilinearly resized to the model's size (no antialiasing, as the
    official preprocessing). ``num`` = K >= 1: K random ``size`` x ``size`` crops, each flipped
    horizontally with probability 1/2; shared by all images of the batch unless ``per_sample``.
    Images smaller than ``size`` are first resized up to it.
    """

    def __init__(self, num: int, per_sample: bool, generator: torch.Generator) -> None:
        self.num, self.per_sample, self.generator = num, per_sample, generator

    def __call__(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Images (B, 3, H, W) -> views (max(K, 1), B, 3, h, w)."""
        if tuple(images.shape[-2:]) != tuple(size) and (self.num == 0 or min(images.shape[-2:]) < min(size)):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if self.num == 0:
            return images.unsqueeze(0)
        b, _, h, w = images.shape
        sh, sw = size
        shape = (self.num, b if self.per_sample else 1)
        top = torch.randint(0, h - sh + 1, shape, generator=self.generator)
        left = torch.randint(0, w - sw + 1, shape, generator=self.generator)
        flip = torch.rand(shape, generator=self.generator) < 0.5
        rows = top[..., None] + torch.arange(sh)  # (K, b', sh)
        cols = left[..., None] + torch.where(flip[..., None], torch.arange(sw - 1, -1, -1), torch.arange(sw))
        rows, cols = rows.expand(self.num, b, sh).to(images.device), cols.expand(self.num, b, sw).to(images.device)
        batch = torch.arange(b, device=images.device).view(1, b, 1, 1)
        views = images[batch, :, rows[..., :, None], cols[..., None, :]]  # (K, B, sh, sw, 3)
        return views.permute(0, 1, 4, 2, 3)


# -- objectives: (images (B, 3, H, W), views) -> loss per image (B,) ----------------------------------


class CLIPObjective(nn.Module):
    """Negative cosine similarity between the image's CLIP embedding and its prompt, averaged over views.

    ``prompts``: one string for the whole batch or one per image. With ``negative_prompts`` the loss is
    ``-cos(x, p) - (1 - guidance_scale) * cos(x, p_neg)`` (the official combination: a scale above 1
    pushes the image away from the negative prompt; the scale does nothing without one).
    """

    def __init__(self, clip: ClipModel, prompts: str | Sequence[str], *,
                 negative_prompts: str | Sequence[str] | None = None, guidance_scale: float = 1.0) -> None:
        super().__init__()
        self.clip = clip
        self.guidance_scale = guidance_scale
        self.register_buffer("text", self._embed(prompts), persistent=False)  # (1 or B, D)
        neg = None if negative_prompts is None else self._embed(negative_prompts)
        self.register_buffer("negative_text", neg, persistent=False)

    @torch.no_grad()
    def _embed(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("CLIPObjective needs at least one prompt")
        unique = sorted(set(prompts))  # class prompts repeat across a batch: embed each once
        emb = self.clip.encode_texts(unique, normalize=True).float()
        return emb[torch.tensor([unique.index(p) for p in prompts], device=emb.device)]

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (K, B, D) and text (1 or B, D) -> (K, B)."""
        return (image_emb * text_emb).sum(-1)

    def forward(self, images: torch.Tensor, views: RandomViews) -> torch.Tensor:
        b = images.shape[0]
        for name, text in (("prompts", self.text), ("negative_prompts", self.negative_text)):
            if text is not None and text.shape[0] not in (1, b):
                raise ValueError(f"{type(self).__name__}: {text.shape[0]} {name} for a batch of {b} images")
        x = views(images, self.clip.image_size)  # (K, B, 3, h, w)
        k = x.shape[0]
        x = (x.flatten(0, 1) - self.clip.mean) / self.clip.std
        emb = self.clip.model.encode_image(x, normalize=True).float().view(k, b, -1)  # (K, B, D)
        loss = -self.similarity(emb, self.text).mean(0)
        if self.negative_text is not None:
            loss = loss - (1.0 - self.guidance_scale) * self.similarity(emb, self.negative_text).mean(0)
        return loss


class MaskedReconstructionObjective(nn.Module):
    """Mean absolute error to ``target`` over the known pixels, per image.

    ``mask`` (B or 1, 1 or 3, H, W) is 1 where the pixel is known and 0 in the hole (soft values weight
    pixels); the loss is ``sum(|x - target| * m) / sum(m)`` over channels and pixels.
    """

    def __init__(self, target: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        if mask.dim() != 4 or mask.shape[1] not in (1, 3) or mask.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"mask must be (B or 1, 1 or 3, H, W) matching target {tuple(target.shape)}, "
                             f"got {tuple(mask.shape)}")
        self.register_buffer("target", target.float(), persistent=False)
        self.register_buffer("mask", mask.float().expand_as(target).contiguous(), persistent=False)

    def forward(self, images: torch.Tensor, views: RandomViews | None = None) -> torch.Tensor:
        if images.shape != self.target.shape:
            raise ValueError(f"images {tuple(images.shape)} do not match the target {tuple(self.target.shape)}")
        err = (images.float() - self.target).abs() * self.mask
        return err.sum((1, 2, 3)) / self.mask.sum((1, 2, 3)).clamp_min(1e-8)


class WeightedSum(nn.Module):
    """``sum_i weights[i] * objectives[i](images, views)`` (each objective draws its own views)."""

    def __init__(self, objectives: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(objectives) != len(weights) or not objectives:
            raise ValueError(f"WeightedSum needs one weight per objective, got {len(objectives)} objectives "
                             f"and {len(weights)} weights")
        self.objectives = nn.ModuleList(objectives)
        self.weights = [float(w) for w in weights]

    def forward(self, images: torch.Tensor, views: RandomViews) -> torch.Tensor:
        return sum(w * obj(images, views) for w, obj in zip(self.weights, self.objectives, strict=True))


# -- the loop ------------------------------------------------------------------------------------------


@dataclass
class KnownRegion:
    """Inpainting: the original ``images`` (B, 3, H, W) and ``mask`` (B or 1, 1, H, W), 1 = known pixel."""

    images: torch.Tensor
    mask: torch.Tensor


@dataclass
class StepInfo:
    """What the callback sees after step ``step``: the EMA tokens after it, the image and loss before it."""

    step: int
    tokens: torch.Tensor  # (B, C, 1, N) EMA tokens after the update
    images: torch.Tensor  # (B, 3, H, W) decoded before the update, not clamped
    loss: torch.Tensor  # (B,) objective before the update (without the regulariser)
    codes: torch.Tensor | None  # (B, 1, N) codes the image was decoded from (None for VAE tokenizers)


@dataclass
class TokenOptResult:
    tokens: torch.Tensor  # (B, C, 1, N) final EMA tokens
    codes: torch.Tensor | None  # (B, 1, N) their codes (None for VAE tokenizers)
    images: torch.Tensor  # (B, 3, H, W) decoded from the tokens, clamped to [0, 1]
    loss_history: torch.Tensor  # (steps, B) objective before each step, on the CPU


def optimize_tokens(titok: TiTok, objective: nn.Module, config: TokenOptConfig, *,
                    images: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                    known: KnownRegion | None = None, reset_period: int = 0, seed: int = 0,
                    callback: Callable[[StepInfo], bool | None] | None = None, progress=None) -> TokenOptResult:
    """Optimise a batch of tokens so that their decoded images minimise ``objective``.

    Start from seed ``images`` (B, 3, H, W) in [0, 1] (encoded) or from ``tokens`` (B, C, 1, N), e.g.
    ``torch.randn``; exactly one of the two. ``known`` with ``reset_period`` > 0 enables the inpainting
    reset (every that many steps). ``seed``: of the generator behind the noise and the crops.
    ``callback(StepInfo)`` returning True stops early. ``progress``: a tqdm bar, updated once per step.
    TiTok and the objective are frozen in place (eval mode, no gradients on their weights).
    """
    if (images is None) == (tokens is None):
        raise ValueError("pass exactly one of images (seed images to encode) and tokens (initial tokens)")
    if reset_period < 0:
        raise ValueError(f"reset_period must be >= 0, got {reset_period}")
    if reset_period and known is None:
        raise ValueError(f"reset_period={reset_period} needs the known region (known=KnownRegion(...))")
    titok.eval().requires_grad_(False)
    objective.eval().requires_grad_(False)
    device = titok.latent_tokens.device
    post = config.optimize_post_quantization
    if known is not None:
        known = KnownRegion(known.images.to(device).float(), known.mask.to(device).float())
    if images is not None:
        tokens = images_to_tokens(titok, images.to(device), post_quantization=post)
    z = tokens.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)  # (B, C, 1, N)
    z0 = z.detach().clone()  # anchor of the seed regulariser
    ema = z.detach().clone()
    opt = torch.optim.Adam([z], lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    generator = torch.Generator().manual_seed(seed)  # CPU draws: the same run on every device
    views = RandomViews(config.num_augmentations, config.per_sample_crops, generator)
    history = []

    for step in range(config.num_iter):
        if config.token_noise > 0:
            noise = torch.randn(z.shape, generator=generator).to(device)
            with torch.no_grad():
                z.add_(noise, alpha=config.token_noise * noise_scale(step, config.num_iter))
        with autocast(device, config.precision):
            decoded, codes = tokens_to_images(titok, z, post_quantization=post)
            loss = objective(decoded, views).float()  # (B,)
        total = loss
        if config.reg_type != "none" and config.reg_weight > 0:
            anchor = z0 if config.reg_type == "seed" else torch.zeros_like(z0)
            total = total + config.reg_weight * (z - anchor).pow(2).mean(dim=(1, 2, 3))
        scaler.scale(total.sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

        if reset_period and (step + 1) % reset_period == 0:
            with torch.no_grad():
                composite = (1 - known.mask) * decoded.float() + known.mask * known.images
                z.copy_(images_to_tokens(titok, composite, post_quantization=post))
        with torch.no_grad():  # diffusers-style EMA: the first update copies, later ones average
            decay = config.ema_decay if step > 0 else 0.0
            ema.sub_((1.0 - decay) * (ema - z))
        history.append(loss.detach())
        if progress is not None:
            progress.update(1)
            if step % 10 == 0 or step == config.num_iter - 1:
                progress.set_postfix(loss=f"{loss.detach().mean().item():.4f}")
        if callback is not None and callback(StepInfo(step, ema.clone(), decoded.detach(), loss.detach(), codes)):
            break

    with torch.no_grad(), autocast(device, config.precision):
        final, codes = tokens_to_images(titok, ema, post_quantization=post)
    return TokenOptResult(tokens=ema, codes=codes, images=final.float().clamp(0, 1),
                          loss_history=torch.stack(history).cpu())
