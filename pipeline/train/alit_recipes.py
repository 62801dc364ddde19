"""ALIT's two training stages as recipes for ``pipeline.train.loop.train``.

- ``LatentDistillationRecipe`` (stage 1): the base VQGAN is frozen; every iteration of the rollout is
  decoded and scored by ``latent_distillation_loss``: ``w_i * CE(logits_i, VQGAN codes) + MSE(soft
  code_i, target code) + VQ loss_i`` with the official per-iteration weights ``w`` (2.5, 2, 1.5, 1.25,
  1, 1, 1, 1); the MSE and VQ terms can be re-weighted (``code_weight``, ``quantizer_weight``).
- ``CyclingReconstructionRecipe`` (stage 2): everything trains (the VQGAN encoder and decoder too, as
  in the official full fine-tuning, unless ``train_vqgan=False``). Each optimiser step rolls out to one
  iteration, ``step % max_rollout_iters``, decodes it to pixels through the soft code mix, and scores it
  with L1 + perceptual + hinge GAN (``PixelRecipe``) + the 1-D VQ loss.

Differences from the official stage 2, all deliberate simplifications:

* one PatchGAN for all iterations instead of one per iteration (one discriminator keeps every trained
  parameter in use each step, which DDP without ``find_unused_parameters`` needs);
* a constant GAN weight from ``gan.start`` instead of taming's adaptive weight and the 0 / 0.2 / 0.8
  epoch schedule, and the discriminator is updated on every step (the official line updates it on 8
  of every 9 steps once the GAN is on);
* the perceptual network is the project's LPIPS (VGG16 + LPIPS v0.1 linear layers).

Weight decay skips 1-D tensors only (the Recipe default), as the official ``add_weight_decay`` does
(biases and norms; embeddings and tokens are decayed).

The iteration a stage-2 step trains is a buffer of the wrapped model (``next_iteration``), set at the
end of each step's ``losses`` call: it is checkpointed with the model, so a resumed run continues the
cycle where it stopped, and all micro-batches of one step (gradient accumulation) train the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pipeline.models.alit import ALIT, ITERATION_LOSS_WEIGHTS, latent_distillation_loss
from pipeline.train.loop import Recipe
from pipeline.train.recipes import GANSettings, PixelRecipe, batch_images


class _Distillation(nn.Module):
    """images -> ALIT outputs at every iteration; the VQGAN stays frozen in eval mode."""

    def __init__(self, alit: ALIT) -> None:
        super().__init__()
        self.alit = alit
        alit.base_tokenizer.requires_grad_(False)

    def train(self, mode: bool = True) -> _Distillation:
        super().train(mode)
        self.alit.base_tokenizer.eval()
        return self

    def forward(self, batch: Any) -> dict[str, Any]:
        return self.alit(batch_images(batch))


class LatentDistillationRecipe(Recipe):
    """Stage 1: the 1-D tokens of every iteration predict the frozen VQGAN's codes."""

    def __init__(self, alit: ALIT, iteration_weights: Sequence[float] = ITERATION_LOSS_WEIGHTS,
                 code_weight: float = 1.0, quantizer_weight: float = 1.0) -> None:
        super().__init__()
        if len(iteration_weights) < alit.config.max_rollout_iters:
            raise ValueError(f"{len(iteration_weights)} iteration weights for {alit.config.max_rollout_iters} "
                             "iterations")
        self.model = _Distillation(alit)
        self.iteration_weights = tuple(iteration_weights)
        self.code_weight = code_weight
        self.quantizer_weight = quantizer_weight

    @property
    def alit(self) -> ALIT:
        return self.model.alit

    def losses(self, out, batch, step):
        total, logs = latent_distillation_loss(out, self.alit.vqgan_codebook, self.iteration_weights,
                                               self.code_weight, self.quantizer_weight)
        targets = out["code_targets"]
        last = len(out["logits"]) - 1
        metrics: dict[str, Any] = {k: v for k, v in logs.items() if k.startswith("nll_loss_")}
        for name, i in (("first", 0), ("last", last)):  # code accuracy at 32 and at all tokens
            metrics[f"code_accuracy_{name}"] = (out["logits"][i].detach().argmax(-1) == targets).float().mean()
        if out["halting_mask"][0] is not None:
            metrics["halted_fraction_last"] = out["halting_mask"][last].float().mean()
        return {"loss": total}, metrics


class _CyclingReconstruction(nn.Module):
    """images -> the reconstruction at one iteration (``next_iteration``) and its VQ loss."""

    def __init__(self, alit: ALIT, train_vqgan: bool) -> None:
        super().__init__()
        self.alit = alit
        self.train_vqgan = train_vqgan
        self.register_buffer("next_iteration", torch.zeros((), dtype=torch.long))
        # the VQGAN codebook only gives targets and (detached) soft codes: it never gets a gradient
        alit.base_tokenizer.vqgan.quantize.requires_grad_(False)
        if not train_vqgan:
            alit.base_tokenizer.requires_grad_(False)

    def train(self, mode: bool = True) -> _CyclingReconstruction:
        super().train(mode)
        if not self.train_vqgan:
            self.alit.base_tokenizer.eval()
        return self

    def forward(self, batch: Any) -> dict[str, Any]:
        it = int(self.next_iteration)
        out = self.alit(batch_images(batch), num_iters=it + 1, decode_iters=[it], pixel_iters=[it])
        return {"recon": out["reconstruction"][0], "vq_loss": out["vq_loss"][0], "iteration": it}


class CyclingReconstructionRecipe(PixelRecipe):
    """Stage 2: L1 (+ perceptual, + GAN) on the pixels of one iteration per step, cycling 0, 1, ..."""

    def __init__(self, alit: ALIT, l1: float = 1.0, perceptual: nn.Module | None = None,
                 perceptual_weight: float = 1.0, gan: GANSettings | None = None, quantizer_weight: float = 1.0,
                 train_vqgan: bool = True) -> None:
        super().__init__(l1=l1, l2=0.0, perceptual=perceptual, perceptual_weight=perceptual_weight, gan=gan)
        self.model = _CyclingReconstruction(alit, train_vqgan)
        self.quantizer_weight = quantizer_weight

    @property
    def alit(self) -> ALIT:
        return self.model.alit

    def losses(self, out, batch, step):
        losses = self.pixel_losses(out["recon"], batch_images(batch), step)
        losses["quantizer"] = self.quantizer_weight * out["vq_loss"]
        # the step after this one trains the next iteration (same value for every micro-batch of a step)
        self.model.next_iteration.fill_((step + 1) % self.alit.config.max_rollout_iters)
        return {"loss": sum(losses.values()), **losses}, {}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return param.ndim < 2  # the official rule, not PixelRecipe's TiTok name list
