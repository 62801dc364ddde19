"""Stage ``train_alit``: the ALIT tokenizer (32 to 256 tokens), trained or imported.

``train_alit.source: train``: builds the named ``ALITConfig`` (``train_alit.model``) at ``image_size``
(patch size = the VQGAN's downsampling factor, so the 2-D grids agree) on the base VQGAN
(``train_alit.vqgan``, default ``<paths.models>/vqgan`` from ``train_vqgan``), copies the VQGAN's
weights into ``alit.base_tokenizer.vqgan``, then trains on the prepared train split through the shared
loop: stage 1 (latent distillation, VQGAN frozen) and, when ``stage2.steps > 0``, stage 2 (pixel
losses, one iteration per step, cycling). Checkpoints go to ``<paths.models>/checkpoints/train_alit/
stage{1,2}/`` (a killed or preempted run resumes there; they are removed once the model is saved).

``train_alit.source: official``: loads an official ALIT checkpoint folder (``ALIT.from_pretrained``)
and saves it in our format; nothing is trained.

Writes ``<paths.models>/alit/`` (config.json + model.safetensors, ``ALIT.from_pretrained``) atomically
and ``<paths.results>/train_alit/metrics.json`` (DVC metrics); logs to MLflow.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.data.shards import ShardDataset
from pipeline.errors import InputError, MissingWeightsError
from pipeline.io import atomic_dir, write_json
from pipeline.models.alit import ALIT, ALITConfig
from pipeline.models.maskgit_vqgan import MaskGITVQGAN
from pipeline.params import Params
from pipeline.tracking import stage_run
from pipeline.train.alit_recipes import CyclingReconstructionRecipe, LatentDistillationRecipe
from pipeline.train.loop import TrainConfig, TrainResult, train
from pipeline.train.recipes import GANSettings

STAGE = "train_alit"


def alit_dir(params: Params) -> Path:
    """Where this stage writes the tokenizer the ALIT evaluation reads."""
    return Path(params.paths.models) / "alit"


def load_base_vqgan(params: Params) -> MaskGITVQGAN:
    folder = Path(params.train_alit.vqgan) if params.train_alit.vqgan else Path(params.paths.models) / "vqgan"
    if not (folder / "config.json").is_file():
        if params.train_alit.vqgan:
            raise MissingWeightsError("ALIT's base VQGAN", str(folder / "config.json"),
                                      "convert the MAGE / MaskGIT VQGAN into a from_pretrained folder (config.json + "
                                      "model.safetensors), or use train_alit.source: official with an ALIT checkpoint")
        raise InputError(f"{folder}/config.json: the demo VQGAN is not there. Run `dvc repro train_vqgan` first")
    return MaskGITVQGAN.from_pretrained(folder)


def build_alit(params: Params, vqgan: MaskGITVQGAN) -> ALIT:
    """The named ALIT at ``image_size`` on ``vqgan`` (its config and weights)."""
    factor = 2 ** (len(vqgan.config.ch_mult) - 1)
    if params.image_size % factor:
        raise InputError(f"image_size {params.image_size} is not a multiple of the VQGAN's downsampling "
                         f"factor {factor}")
    config = replace(ALITConfig.named(params.train_alit.model), image_size=params.image_size, patch_size=factor,
                     vqgan=vqgan.config)
    torch.manual_seed(params.seed)
    alit = ALIT(config)
    alit.base_tokenizer.vqgan.load_state_dict(vqgan.state_dict())
    return alit


def _flip(batch):
    images = torch.stack([b[0] for b in batch])  # (B, 3, H, W)
    flip = torch.rand(len(images)) < 0.5
    images[flip] = images[flip].flip(-1)
    return images, torch.tensor([b[1] for b in batch])


def _train_config(stage, cfg, params: Params) -> TrainConfig:
    return TrainConfig(steps=stage.steps, batch_size=stage.batch_size, lr=stage.lr, min_lr=stage.min_lr,
                       warmup_steps=stage.warmup_steps, betas=tuple(cfg.betas), weight_decay=stage.weight_decay,
                       grad_clip=cfg.grad_clip, precision=cfg.precision, ema_decay=cfg.ema_decay,
                       ckpt_every=cfg.ckpt_every, log_every=max(1, min(50, stage.steps // 10)), seed=params.seed,
                       num_workers=cfg.num_workers)


def _finish(recipe, result: TrainResult) -> None:
    if result.ema_state is not None:  # export the averaged weights, as the official evaluation does
        recipe.model.load_state_dict(result.ema_state)


def _train(params: Params, run) -> tuple[ALIT, dict]:
    cfg = params.train_alit
    alit = build_alit(params, load_base_vqgan(params))
    data = ShardDataset(Path(params.paths.data) / "prepared", "train", seed=params.seed)
    collate = _flip if cfg.hflip else None
    ckpt = Path(params.paths.models) / "checkpoints" / STAGE
    out: dict = {"source": "train", "model": cfg.model, "train_images": len(data),
                 "parameters": sum(p.numel() for p in alit.parameters())}

    start = time.perf_counter()
    recipe1 = LatentDistillationRecipe(alit, cfg.stage1.iteration_weights)
    result = train(recipe1, data, _train_config(cfg.stage1, cfg, params), ckpt / "stage1",
                   log_fn=lambda m, s: run.log_metrics({f"stage1/{k}": v for k, v in m.items()}, step=s),
                   collate_fn=collate)
    _finish(recipe1, result)
    out["stage1"] = {"steps": result.step, "seconds": round(time.perf_counter() - start, 1),
                     **{k: result.metrics[k] for k in sorted(result.metrics)
                        if k in ("loss", "code_accuracy_first", "code_accuracy_last")}}

    s2 = cfg.stage2
    if s2.steps:
        start = time.perf_counter()
        perceptual = None
        if s2.perceptual_weight:
            from pipeline.models.losses import LPIPS

            perceptual = LPIPS(s2.lpips_vgg, s2.lpips_lin)
        gan = GANSettings(weight=s2.gan_weight, start=s2.gan_start, lecam_weight=0.0) if s2.gan_weight else None
        recipe2 = CyclingReconstructionRecipe(alit, l1=s2.l1_weight, perceptual=perceptual,
                                              perceptual_weight=s2.perceptual_weight, gan=gan,
                                              train_vqgan=s2.train_vqgan)
        result = train(recipe2, data, _train_config(s2, cfg, params), ckpt / "stage2",
                       log_fn=lambda m, s: run.log_metrics({f"stage2/{k}": v for k, v in m.items()}, step=s),
                       collate_fn=collate)
        _finish(recipe2, result)
        out["stage2"] = {"steps": result.step, "seconds": round(time.perf_counter() - start, 1),
                         **{k: result.metrics[k] for k in sorted(result.metrics) if k in ("loss", "l1")}}
    shutil.rmtree(ckpt, ignore_errors=True)  # complete: a rerun with other params must not resume from these
    return alit, out


def _official(params: Params) -> tuple[ALIT, dict]:
    folder = Path(params.train_alit.folder)
    alit = ALIT.from_pretrained(folder)
    if alit.config.image_size != params.image_size:
        raise InputError(f"{folder}: the ALIT checkpoint works on {alit.config.image_size} px images but image_size "
                         f"is {params.image_size}")
    return alit, {"source": "official", "folder": str(folder), "parameters": sum(p.numel() for p in alit.parameters())}


def run(params: Params) -> int:
    start = time.perf_counter()
    logged = {"train_alit": params.train_alit.model_dump(mode="json"), "image_size": params.image_size,
              "seed": params.seed}
    with stage_run(STAGE, logged) as run:
        alit, metrics = _official(params) if params.train_alit.source == "official" else _train(params, run)
        with atomic_dir(alit_dir(params)) as tmp:
            alit.save_pretrained(tmp)
        metrics["stage_seconds"] = round(time.perf_counter() - start, 1)
        write_json(Path(params.paths.results) / STAGE / "metrics.json", metrics)
        run.log_metrics({k: v for k, v in metrics.items() if k not in ("source", "model", "folder")})
    print(f"train_alit: wrote {alit_dir(params)} ({metrics['stage_seconds']} s)")
    return 0
