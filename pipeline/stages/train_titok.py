"""Stage ``train_titok``: the 32-token TiTok, trained in two stages as the paper does, or imported.

The model's head picks the recipe. A legacy (proxy-code) TiTok, as the paper's L-32 and the demo's, trains
in two stages. Stage 1 ("proxy codes"): TiTok's decoder predicts, for every 2D position, the code the
frozen VQGAN of ``train_vqgan`` assigns to the image; cross-entropy + the quantiser loss. The VQGAN's
decoder and codebook then become TiTok's pixel decoder (softmax-weighted code mix), so the model
reconstructs pixels. Stage 2 (``stage2.steps > 0``) fine-tunes the decoder side on pixels with L2 (+ perceptual
when ``perceptual_vgg`` / ``perceptual_lin`` name local LPIPS files, + GAN when ``gan_weight > 0``), with encoder,
codebook and latent tokens frozen. A single-stage TiTok (RGB head: the ``*_vq8k`` and ``*_vae`` configs)
trains in one phase, ``stage1``, on those pixel losses (+ ``quantizer_weight`` x VQ loss, or the KL of a VAE
model); it has no stage 2 and needs no VQGAN. ``source: official`` imports a released checkpoint from a local
Hugging Face snapshot folder instead. The model is written to ``<paths.models>/titok``; under
``<paths.results>/train_titok/``: ``metrics.json`` (the headline, DVC metrics), ``details.json``
(everything), ``reconstructions.png`` and one training curve per phase, ``curve_stage1.csv`` and
``curve_stage2.csv`` (DVC plots; header only for a phase that did not run).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pipeline.data.shards import ImageTensors, load_split, training_images
from pipeline.errors import InputError
from pipeline.io import atomic_dir, write_curve, write_metrics
from pipeline.layout import prepared_root, results_dir, titok_dir, vqgan_dir
from pipeline.metrics.image_stats import psnr
from pipeline.metrics.images import to_float
from pipeline.models import count_parameters
from pipeline.models.batched import reconstruct
from pipeline.models.losses import LPIPS
from pipeline.models.maskgit_vqgan import MaskGITVQGAN
from pipeline.models.registry import build_model, model_config
from pipeline.models.titok import TiTok
from pipeline.params import Params
from pipeline.stages._common import (
    checkpoint_dir,
    final_metrics,
    prefixed_logger,
    remove_checkpoints,
    save_image_grid,
)
from pipeline.tracking import stage_run
from pipeline.train.loop import train
from pipeline.train.recipes import (
    GANSettings,
    ProxyCodeImages,
    TiTokDecoderRecipe,
    TiTokProxyCodeRecipe,
    TiTokSingleStageRecipe,
)

STAGE = "train_titok"
# metrics.json (what `dvc metrics show` prints): flat name -> key of details.json
HEADLINE = {"parameters": "parameters", "num_tokens": "num_tokens", "stage1_steps": "stage1/steps",
            "stage1_loss": "stage1/loss", "stage2_steps": "stage2/steps", "stage2_loss": "stage2/loss"}
Curve = list[dict[str, float]]  # TrainResult.history


def _stage1(params: Params, vqgan: MaskGITVQGAN, run) -> tuple[TiTok, dict[str, float], Curve, Path]:
    """Train stage 1 of a two-stage TiTok; the model, its final metrics, its curve and its checkpoint folder
    (removed once stage 2 is done: a preemption in stage 2 must not retrain stage 1)."""
    cfg = params.train_titok
    titok = build_model(cfg.model, image_size=params.image_size, vqgan=vqgan.config)
    recipe = TiTokProxyCodeRecipe(titok, vqgan, cfg.quantizer_weight, cfg.pixel_weight)
    ckpt = checkpoint_dir(params, f"{STAGE}-stage1", cfg.model, cfg.stage1, cfg.quantizer_weight, cfg.pixel_weight,
                          inputs=[vqgan_dir(params)])
    prefixed = prefixed_logger(run, "stage1/")
    data = training_images(prepared_root(params), params.seed)
    if isinstance(data, ImageTensors):  # fixed images held in memory: the teacher's codes once, not per step
        data = ProxyCodeImages(data, vqgan)
    result = train(recipe, data, cfg.stage1, ckpt, seed=params.seed, log_fn=prefixed)
    if result.ema_state is not None:
        recipe.model.load_state_dict(result.ema_state)
    titok = recipe.tokenizer.cpu()
    titok.load_pixel_decoder(vqgan)
    return titok, {"stage1/steps": result.step, **final_metrics(result.metrics, "stage1/")}, result.history, ckpt


def _gan(params: Params) -> GANSettings | None:
    cfg = params.train_titok
    return GANSettings(weight=cfg.gan_weight, start=cfg.gan_start) if cfg.gan_weight > 0 else None


def _single_stage(params: Params, perceptual: LPIPS | None, run) -> tuple[TiTok, dict[str, float], Curve]:
    """Train a single-stage TiTok (RGB head) on pixels; the model, its final metrics and its curve."""
    cfg = params.train_titok
    titok = build_model(cfg.model, image_size=params.image_size)
    recipe = TiTokSingleStageRecipe(titok, perceptual=perceptual, perceptual_weight=cfg.perceptual_weight,
                                    gan=_gan(params), quantizer_weight=cfg.quantizer_weight)
    ckpt = checkpoint_dir(params, f"{STAGE}-single", cfg.model, cfg.stage1, cfg.quantizer_weight, cfg.perceptual_vgg,
                          cfg.perceptual_weight, cfg.gan_weight, cfg.gan_start)
    data = training_images(prepared_root(params), params.seed)
    result = train(recipe, data, cfg.stage1, ckpt, seed=params.seed, log_fn=prefixed_logger(run, "stage1/"))
    if result.ema_state is not None:
        recipe.model.load_state_dict(result.ema_state)
    remove_checkpoints(ckpt)
    return recipe.tokenizer.cpu(), {"stage1/steps": result.step, **final_metrics(result.metrics, "stage1/")}, \
        result.history


def _perceptual(params: Params) -> LPIPS | None:
    """The pixel losses' LPIPS (None without ``perceptual_vgg``, or for a two-stage TiTok without stage 2):
    loaded before stage 1, so a missing file stops the stage before a million steps of stage 1, not after."""
    cfg = params.train_titok
    pixel_phase = cfg.stage2.steps > 0 or not model_config(cfg.model).legacy
    return LPIPS(cfg.perceptual_vgg, cfg.perceptual_lin) if pixel_phase and cfg.perceptual_vgg else None


def _stage2(params: Params, titok: TiTok, perceptual, run) -> tuple[TiTok, dict[str, float], Curve]:
    cfg = params.train_titok
    frozen = TiTok(dataclasses.replace(titok.config, freeze_encoder=True))
    frozen.load_state_dict(titok.state_dict())
    recipe = TiTokDecoderRecipe(frozen, perceptual=perceptual, perceptual_weight=cfg.perceptual_weight,
                                gan=_gan(params))
    ckpt = checkpoint_dir(params, f"{STAGE}-stage2", cfg.model, cfg.stage1, cfg.quantizer_weight, cfg.pixel_weight,
                          cfg.stage2, cfg.perceptual_vgg,
                          cfg.gan_weight, cfg.gan_start, inputs=[vqgan_dir(params)])
    prefixed = prefixed_logger(run, "stage2/")
    data = training_images(prepared_root(params), params.seed)
    result = train(recipe, data, cfg.stage2, ckpt, seed=params.seed + 1, log_fn=prefixed)
    if result.ema_state is not None:
        recipe.model.load_state_dict(result.ema_state)
    remove_checkpoints(ckpt)
    return recipe.tokenizer.cpu(), {"stage2/steps": result.step, **final_metrics(result.metrics, "stage2/")}, \
        result.history


def run(params: Params) -> int:
    """Train (or import) TiTok and write it with its training metrics and a reconstruction grid."""
    cfg = params.train_titok
    if cfg.source == "train" and not model_config(cfg.model).legacy and cfg.stage2.steps > 0:
        raise InputError(f"train_titok.model {cfg.model} is a single-stage TiTok (RGB head): it trains in one "
                         f"phase, train_titok.stage1, and has no stage 2; set train_titok.stage2.steps to 0")
    out_dir = titok_dir(params)
    results = results_dir(params, STAGE)
    torch.manual_seed(params.seed)
    with stage_run(STAGE, params) as run:
        curves: dict[str, Curve] = {"stage1": [], "stage2": []}
        if cfg.source == "official":
            titok = TiTok.from_pretrained(cfg.folder)
            train_metrics: dict[str, float] = {}
        elif not model_config(cfg.model).legacy:
            titok, train_metrics, curves["stage1"] = _single_stage(params, _perceptual(params), run)
        else:
            vqgan = MaskGITVQGAN.from_pretrained(vqgan_dir(params))
            # the draws of the VQGAN's random init, which loading took until it skipped the init: TiTok's init
            # comes after them, so a TiTok trained from this seed stays the one it was (the demo's, byte for byte)
            MaskGITVQGAN(vqgan.config)
            perceptual = _perceptual(params)
            titok, train_metrics, curves["stage1"], stage1_ckpt = _stage1(params, vqgan, run)
            if cfg.stage2.steps > 0:
                titok, stage2_metrics, curves["stage2"] = _stage2(params, titok, perceptual, run)
                train_metrics |= stage2_metrics
            remove_checkpoints(stage1_ckpt)
        val = to_float(load_split(prepared_root(params), "val", limit=256).images)
        recon, _ = reconstruct(titok, val)
        val_psnr = psnr(recon, val).mean().item()
        save_image_grid([val[:12], recon[:12]], results / "reconstructions.png", labels=["input", "TiTok"],
                        title=f"{STAGE}: val reconstructions from {titok.config.num_latent_tokens} tokens, "
                              f"PSNR {val_psnr:.2f} dB")
        with atomic_dir(out_dir) as tmp:
            titok.save_pretrained(tmp)
        metrics = {"source": cfg.source, "model": cfg.model if cfg.source == "train" else str(cfg.folder),
                   "num_tokens": titok.config.num_latent_tokens,
                   "parameters": count_parameters(titok),
                   "val_psnr_first_256": val_psnr, **train_metrics}
        run.log_metrics({"val_psnr_first_256": val_psnr})
        run.log_artifact(results / "reconstructions.png")
        for phase, curve in curves.items():
            write_curve(results / f"curve_{phase}.csv", curve)
        write_metrics(results, metrics, HEADLINE)
    print(f"{STAGE}: val PSNR {val_psnr:.2f} dB from {titok.config.num_latent_tokens} tokens")
    return 0
