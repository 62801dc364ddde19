"""Per-model recipes for ``pipeline.train.loop.train``: which module trains and with which losses.

- ``TiTokProxyCodeRecipe`` (two-stage TiTok, stage 1): cross-entropy of the TiTok decoder's logits
  against the proxy codes a frozen MaskGIT-VQGAN gives the same image, + 1.0 x quantiser loss
  (+ an optional pixel term). ``ProxyCodeImages`` precomputes those codes for a fixed in-memory set.
- ``TiTokDecoderRecipe`` (two-stage TiTok, stage 2): encoder, codebook and latent tokens frozen; the
  ViT decoder, the pixel codebook and the pixel decoder learn L2 + perceptual + GAN on pixels.
- ``TiTokSingleStageRecipe``: the whole TiTok (VQ or VAE, RGB head) on L2 + perceptual + GAN
  (+ quantiser loss, or KL for VAE models).
- ``VQGANRecipe``: a MaskGIT-VQGAN from scratch: L1 / L2 + quantiser loss (+ perceptual / GAN).

Paper-scale weights (official configs, see research/titok.md): stage 2 uses L2 1.0, perceptual 0.1,
GAN 0.01 from step 20k, LeCam 0.001. The demo passes ``perceptual=None`` (no pretrained network is
available offline) so the perceptual weight is 0 there.

Batches may be an image tensor, a tuple / list whose first element is the images, or a dict with
``image`` / ``images`` / ``pixel_values``; images are float in [0, 1], (B, 3, H, W).

After ``train`` the tokenizer is ``recipe.tokenizer`` (the raw module); load the EMA weights with
``recipe.model.load_state_dict(result.ema_state)`` first to export the averaged model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.models.losses import LPIPS, LeCam, PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from pipeline.models.maskgit_vqgan import MaskGITVQGAN
from pipeline.models.titok import TiTok
from pipeline.train.loop import Recipe

# names the official TiTok excludes from weight decay (a substring match, hence patch_embed too)
_NO_DECAY = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")


def batch_images(batch: Any) -> torch.Tensor:
    """The (B, 3, H, W) float images of a batch in any of the supported layouts."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in ("image", "images", "pixel_values"):
            if key in batch:
                return batch[key]
        raise KeyError(f"batch has no image entry (keys: {sorted(batch)})")
    return batch[0]


def _usage_metrics(info: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {f"codebook/{k}": info[k] for k in ("usage", "perplexity") if k in info}


@dataclass(frozen=True)
class GANSettings:
    weight: float = 0.01  # generator's adversarial weight once active
    start: int = 20_000  # optimiser step at which D starts training and the G term switches on
    lecam_weight: float = 0.001  # 0 = off
    lecam_decay: float = 0.999
    channels: int = 64
    n_layers: int = 3


class Discriminator(nn.Module):
    """A PatchGAN plus the LeCam EMAs that belong to it (checkpointed together)."""

    def __init__(self, gan: GANSettings) -> None:
        super().__init__()
        self.net = PatchDiscriminator(channels=gan.channels, n_layers=gan.n_layers)
        self.lecam = LeCam(gan.lecam_decay)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class PixelRecipe(Recipe):
    """Shared pixel losses: L1 / L2, optional perceptual, optional hinge GAN with delayed start + LeCam."""

    def __init__(self, l1: float = 0.0, l2: float = 1.0, perceptual: nn.Module | None = None,
                 perceptual_weight: float = 0.1, gan: GANSettings | None = None) -> None:
        super().__init__()
        self.l1, self.l2 = l1, l2
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight if perceptual is not None else 0.0
        self.gan = gan
        if gan is not None:
            self.discriminator = Discriminator(gan)

    def gan_active(self, step: int) -> bool:
        return self.gan is not None and step >= self.gan.start

    def pixel_losses(self, recon: torch.Tensor, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        recon, images = recon.float(), images.float()
        losses: dict[str, torch.Tensor] = {}
        if self.l1:
            losses["l1"] = self.l1 * F.l1_loss(recon, images)
        if self.l2:
            losses["l2"] = self.l2 * F.mse_loss(recon, images)
        if self.perceptual_weight:
            losses["perceptual"] = self.perceptual_weight * self.perceptual(recon, images).mean()
        if self.gan_active(step):
            losses["gan"] = self.gan.weight * hinge_generator_loss(self.discriminator(recon))
        return losses

    def discriminator_losses(self, out, batch, step, discriminator):
        if not self.gan_active(step):
            return None
        images = batch_images(batch)
        real, fake = discriminator(images), discriminator(out["recon"])
        losses = {"hinge": hinge_discriminator_loss(real, fake),
                  "logits_real": real.detach().float().mean(), "logits_fake": fake.detach().float().mean()}
        loss = losses["hinge"]
        if self.gan.lecam_weight:
            losses["lecam"] = self.gan.lecam_weight * self.discriminator.lecam.penalty(real, fake)
            loss = loss + losses["lecam"]
        return {"loss": loss, **losses}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return param.ndim < 2 or any(k in name for k in _NO_DECAY)


# -- TiTok, two-stage -------------------------------------------------------------------------

class ProxyCodeImages(Dataset):
    """An in-memory image dataset with the frozen VQGAN's proxy codes computed once, up front.

    Items are ``{"image": (3, H, W), "codes": (g*g,)}``; :class:`TiTokProxyCodeRecipe` then skips the
    teacher. Only for fixed images (no augmentation): the official run recomputes the codes every step
    because its random crops change them, as a streamed dataset here does.
    """

    def __init__(self, images: Dataset, vqgan: MaskGITVQGAN, batch_size: int = 128) -> None:
        self.images = images
        vqgan = vqgan.eval()
        codes = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([batch_images(images[i]) for i in range(start, min(start + batch_size,
                                                                                       len(images)))])
                codes.append(vqgan.encode(batch)[1])
        self.codes = torch.cat(codes)  # (N, g*g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": batch_images(self.images[i]), "codes": self.codes[i]}


class _ProxyCodeNet(nn.Module):
    def __init__(self, titok: TiTok, teacher: MaskGITVQGAN) -> None:
        super().__init__()
        self.tokenizer, self.teacher = titok, teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> _ProxyCodeNet:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        images = batch_images(batch)
        if isinstance(batch, Mapping) and "codes" in batch:  # precomputed (ProxyCodeImages)
            codes = batch["codes"]
        else:
            with torch.no_grad():
                _, codes, _ = self.teacher.encode(images)  # (B, g*g) proxy codes
        tokens, info = self.tokenizer.encode(images)
        logits = self.tokenizer.decoder_logits(tokens)  # (B, K_proxy, g, g)
        return {"logits": logits, "codes": codes, "images": images, **info}


class TiTokProxyCodeRecipe(Recipe):
    """Stage 1: predict the frozen VQGAN's codes of each image from TiTok's 1-D tokens.

    Loss: ``CE + quantizer_weight * VQ loss`` (the paper), plus ``pixel_weight`` times the L2 between
    the image and its soft-code-mix reconstruction through the frozen VQGAN decoder (0 in the paper;
    used by the short demo runs, see ``TrainTitok``).
    """

    def __init__(self, titok: TiTok, vqgan: MaskGITVQGAN, quantizer_weight: float = 1.0,
                 pixel_weight: float = 0.0) -> None:
        super().__init__()
        if not titok.config.legacy:
            raise ValueError("stage 1 needs the legacy proxy-code head (TiTokConfig.legacy=True)")
        if titok.config.freeze_encoder:
            raise ValueError("stage 1 trains the encoder: build the TiTok with freeze_encoder=False")
        if pixel_weight > 0 and not titok.config.pixel_decoder:
            raise ValueError("pixel_weight > 0 needs a TiTok with a pixel decoder (config.pixel_decoder=True)")
        if titok.config.pixel_decoder:  # frozen in stage 1 (and DDP wants every trained param used)
            if pixel_weight > 0:
                titok.load_pixel_decoder(vqgan)
            titok.pixel_decoder.requires_grad_(False)
            titok.pixel_quantize.requires_grad_(False)
        self.model = _ProxyCodeNet(titok, vqgan)
        self.quantizer_weight = quantizer_weight
        self.pixel_weight = pixel_weight

    @property
    def tokenizer(self) -> TiTok:
        return self.model.tokenizer

    def losses(self, out, batch, step):
        logits = out["logits"].float()
        target = out["codes"].view(logits.shape[0], *logits.shape[2:])  # (B, g, g)
        ce = F.cross_entropy(logits, target)
        quantizer = self.quantizer_weight * out["quantizer_loss"]
        accuracy = (logits.detach().argmax(dim=1) == target).float().mean()
        losses = {"loss": ce + quantizer, "proxy_ce": ce, "quantizer": quantizer}
        if self.pixel_weight > 0:
            pixels = self.tokenizer.logits_to_pixels(logits)
            losses["pixel_l2"] = self.pixel_weight * F.mse_loss(pixels.float(), out["images"].float())
            losses["loss"] = losses["loss"] + losses["pixel_l2"]
        return losses, {"proxy_accuracy": accuracy, **_usage_metrics(out)}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return param.ndim < 2 or any(k in name for k in _NO_DECAY)


class _ReconNet(nn.Module):
    """images -> reconstruction + the tokenizer's info (quantiser loss, usage, KL)."""

    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        recon, info = self.tokenizer(batch_images(batch))
        return {"recon": recon, **{k: v for k, v in info.items() if isinstance(v, torch.Tensor)}}


class TiTokDecoderRecipe(PixelRecipe):
    """Stage 2: fine-tune the decoder side towards pixels; encoder, codebook, latent tokens frozen."""

    def __init__(self, titok: TiTok, perceptual: LPIPS | None = None, perceptual_weight: float = 0.1,
                 gan: GANSettings | None = GANSettings(), l2: float = 1.0) -> None:  # noqa: B008 - frozen defaults
        super().__init__(l2=l2, perceptual=perceptual, perceptual_weight=perceptual_weight, gan=gan)
        if not (titok.config.legacy and titok.config.pixel_decoder and titok.config.freeze_encoder):
            raise ValueError("stage 2 needs a legacy TiTok with pixel_decoder=True and freeze_encoder=True "
                             "(load the stage-1 weights, then titok.load_pixel_decoder(vqgan))")
        for part in (titok.encoder, titok.quantize):
            part.requires_grad_(False)
        titok.latent_tokens.requires_grad_(False)
        self.model = _ReconNet(titok)

    @property
    def tokenizer(self) -> TiTok:
        return self.model.tokenizer

    def losses(self, out, batch, step):
        losses = self.pixel_losses(out["recon"], batch_images(batch), step)
        return {"loss": sum(losses.values()), **losses}, _usage_metrics(out)


class TiTokSingleStageRecipe(PixelRecipe):
    """Single-stage TiTok: everything trains on pixel losses (+ VQ loss, or KL for VAE models)."""

    def __init__(self, titok: TiTok, perceptual: LPIPS | None = None, perceptual_weight: float = 1.1,
                 gan: GANSettings | None = GANSettings(weight=0.1, start=200_000),  # noqa: B008
                 l2: float = 1.0, quantizer_weight: float = 1.0, kl_weight: float = 1e-6) -> None:
        super().__init__(l2=l2, perceptual=perceptual, perceptual_weight=perceptual_weight, gan=gan)
        if titok.config.freeze_encoder:
            raise ValueError("single-stage training trains the encoder: build the TiTok with freeze_encoder=False")
        self.model = _ReconNet(titok)
        self.quantizer_weight, self.kl_weight = quantizer_weight, kl_weight

    @property
    def tokenizer(self) -> TiTok:
        return self.model.tokenizer

    def losses(self, out, batch, step):
        losses = self.pixel_losses(out["recon"], batch_images(batch), step)
        if "kl" in out:  # VAE: KL summed over tokens, averaged over images (official)
            losses["kl"] = self.kl_weight * out["kl"].float().sum() / out["kl"].shape[0]
        else:
            losses["quantizer"] = self.quantizer_weight * out["quantizer_loss"]
        return {"loss": sum(losses.values()), **losses}, _usage_metrics(out)


# -- VQGAN (the demo's proxy-code tokenizer) ----------------------------------------------------

class VQGANRecipe(PixelRecipe):
    """A MaskGIT-VQGAN from scratch: L1 + L2 + quantiser loss, optionally perceptual and GAN."""

    def __init__(self, vqgan: MaskGITVQGAN, l1: float = 1.0, l2: float = 1.0, quantizer_weight: float = 1.0,
                 perceptual: LPIPS | None = None, perceptual_weight: float = 0.1,
                 gan: GANSettings | None = None) -> None:
        super().__init__(l1=l1, l2=l2, perceptual=perceptual, perceptual_weight=perceptual_weight, gan=gan)
        self.model = _ReconNet(vqgan)
        self.quantizer_weight = quantizer_weight

    @property
    def tokenizer(self) -> MaskGITVQGAN:
        return self.model.tokenizer

    def losses(self, out, batch, step):
        losses = self.pixel_losses(out["recon"], batch_images(batch), step)
        losses["quantizer"] = self.quantizer_weight * out["quantizer_loss"]
        return {"loss": sum(losses.values()), **losses}, _usage_metrics(out)
