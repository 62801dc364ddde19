"""Stage ``train_alit``: the ALIT tokenizer (32 to 256 tokens), trained or imported.

``train_alit.source: train``: builds the named ``ALITConfig`` (``train_alit.model``) at ``image_size``
(patch size = the VQGAN's downsampling factor, so the 2-D grids agree) on the base VQGAN
(``train_alit.vqgan``, default ``<paths.models>/vqgan`` from ``train_vqgan``), copies the VQGAN's
weights into ``alit.base_tokenizer.vqgan``, then trains on the prepared train split through the shared
loop: stage 1 (latent distillation, VQGAN frozen) and, when ``stage2.steps > 0``, stage 2 (pixel
losses, one iteration per step, cycling). Checkpoints go to ``<paths.models>/checkpoints/
train_alit-stage{1,2}-<hash of the parameters>/`` (a killed or preempted run resumes there; they are
removed once the stage completes).

``train_alit.source: official``: loads an official ALIT checkpoint folder (``ALIT.from_pretrained``)
and saves it in our format; nothing is trained.

Writes ``<paths.models>/alit/`` (config.json + model.safetensors, ``ALIT.from_pretrained``) atomically
and, under ``<paths.results>/train_alit/``, ``metrics.json`` (the headline, DVC metrics), ``details.json``
(everything) and one training curve per phase, ``curve_stage1.csv`` and ``curve_stage2.csv`` (DVC plots;
header only for a phase that did not run); logs to MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pipeline.convert_mage_vqgan import HOW
from pipeline.data.shards import training_images
from pipeline.errors import InputError, MissingWeightsError
from pipeline.io import atomic_dir, write_curve, write_metrics
from pipeline.layout import alit_dir, prepared_root, results_dir, vqgan_dir
from pipeline.models import count_parameters
from pipeline.models.alit import ALIT
from pipeline.models.maskgit_vqgan import MaskGITVQGAN
from pipeline.models.registry import model_config
from pipeline.params import Params
from pipeline.stages._common import (
    checkpoint_dir,
    final_metrics,
    prefixed_logger,
    remove_checkpoints,
)
from pipeline.tracking import stage_run
from pipeline.train.alit_recipes import CyclingReconstructionRecipe, LatentDistillationRecipe
from pipeline.train.loop import TrainConfig, train
from pipeline.train.recipes import GANSettings

STAGE = "train_alit"
# metrics.json (what `dvc metrics show` prints): flat name -> dotted key of details.json
HEADLINE = {"parameters": "parameters", "stage1_steps": "stage1.steps", "stage1_loss": "stage1.loss",
            "stage1_code_accuracy": "stage1.code_accuracy_last", "stage2_steps": "stage2.steps",
            "stage2_loss": "stage2.loss"}


def base_vqgan_dir(params: Params) -> Path:
    """The VQGAN ALIT distils: ``train_alit.vqgan``, or ``train_vqgan``'s model."""
    return Path(params.train_alit.vqgan) if params.train_alit.vqgan else vqgan_dir(params)


def load_base_vqgan(params: Params) -> MaskGITVQGAN:
    folder = base_vqgan_dir(params)
    if not (folder / "config.json").is_file():
        if params.train_alit.vqgan:
            raise MissingWeightsError(
                "ALIT's base VQGAN", str(folder / "config.json"),
                f"{HOW.format(folder=folder)}; or use train_alit.source: official with a released ALIT checkpoint")
        raise InputError(f"{folder}/config.json: the demo VQGAN is not there. Run `dvc repro train_vqgan` first")
    return MaskGITVQGAN.from_pretrained(folder)


def build_alit(params: Params, vqgan: MaskGITVQGAN) -> ALIT:
    """The named ALIT at ``image_size`` on ``vqgan`` (its config and weights)."""
    factor = vqgan.config.downsample_factor
    if params.image_size % factor:
        raise InputError(f"image_size {params.image_size} is not a multiple of the VQGAN's downsampling "
                         f"factor {factor}")
    config = model_config(params.train_alit.model, image_size=params.image_size, patch_size=factor,
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


def _run_stage(name: str, recipe, optim: TrainConfig, params: Params, run, *key) -> tuple[dict, list[dict], Path]:
    """Train ``recipe`` with the ``optim`` section; EMA weights (if any) end up in the recipe's model.

    Returns the stage's metrics, its training curve and its checkpoint folder (kept until both stages are
    done, so that a run killed in stage 2 does not redo stage 1).
    """
    cfg = params.train_alit
    ckpt = checkpoint_dir(params, f"{STAGE}-{name}", cfg.model, cfg.vqgan, *key, inputs=[base_vqgan_dir(params)])
    start = time.perf_counter()
    result = train(recipe, training_images(prepared_root(params), params.seed), optim, ckpt, seed=params.seed,
                   log_fn=prefixed_logger(run, f"{name}/"), collate_fn=_flip if cfg.hflip else None)
    if result.ema_state is not None:  # export the averaged weights, as the official evaluation does
        recipe.model.load_state_dict(result.ema_state)
    run.log_metrics({f"{name}/seconds": time.perf_counter() - start})
    return {"steps": result.step, **final_metrics(result.metrics)}, result.history, ckpt


def _train(params: Params, run) -> tuple[ALIT, dict, dict[str, list[dict]]]:
    cfg = params.train_alit
    alit = build_alit(params, load_base_vqgan(params))
    iters = alit.config.max_rollout_iters
    if len(cfg.iteration_weights) != iters:
        raise InputError(f"train_alit.iteration_weights: {len(cfg.iteration_weights)} weights, but {cfg.model} runs "
                         f"{iters} iterations: give one weight per iteration ({iters})")
    out: dict = {"source": "train", "model": cfg.model, "parameters": count_parameters(alit)}
    curves: dict[str, list[dict]] = {"stage1": [], "stage2": []}
    recipe1 = LatentDistillationRecipe(alit, cfg.iteration_weights, cfg.code_weight, cfg.quantizer_weight)
    stage1_key = (cfg.stage1, cfg.iteration_weights, cfg.code_weight, cfg.quantizer_weight, cfg.hflip)
    out["stage1"], curves["stage1"], ckpt1 = _run_stage("stage1", recipe1, cfg.stage1, params, run, *stage1_key)
    done = [ckpt1]
    if cfg.stage2.steps:
        perceptual = None
        if cfg.perceptual_vgg:
            from pipeline.models.losses import LPIPS

            perceptual = LPIPS(cfg.perceptual_vgg, cfg.perceptual_lin)
        gan = GANSettings(weight=cfg.gan_weight, start=cfg.gan_start, lecam_weight=0.0) if cfg.gan_weight else None
        recipe2 = CyclingReconstructionRecipe(alit, l1=cfg.l1_weight, perceptual=perceptual,
                                              perceptual_weight=cfg.perceptual_weight, gan=gan,
                                              train_vqgan=cfg.train_vqgan)
        stage2_key = (cfg.stage2, cfg.l1_weight, cfg.perceptual_vgg, cfg.perceptual_weight, cfg.gan_weight,
                      cfg.gan_start, cfg.train_vqgan)
        out["stage2"], curves["stage2"], ckpt2 = _run_stage("stage2", recipe2, cfg.stage2, params, run, *stage1_key,
                                                            *stage2_key)
        done.append(ckpt2)
    for ckpt in done:
        remove_checkpoints(ckpt)
    return alit.cpu(), out, curves


def _official(params: Params) -> tuple[ALIT, dict, dict[str, list[dict]]]:
    folder = Path(params.train_alit.folder)
    alit = ALIT.from_pretrained(folder)
    if alit.config.image_size != params.image_size:
        raise InputError(f"{folder}: the ALIT checkpoint works on {alit.config.image_size} px images but image_size "
                         f"is {params.image_size}")
    return alit, {"source": "official", "folder": str(folder),
                  "parameters": count_parameters(alit)}, {"stage1": [], "stage2": []}


def run(params: Params) -> int:
    """Train (or import) ALIT and write it with its training metrics."""
    start = time.perf_counter()
    with stage_run(STAGE, params) as run:
        alit, metrics, curves = _official(params) if params.train_alit.source == "official" else _train(params, run)
        with atomic_dir(alit_dir(params)) as tmp:
            alit.save_pretrained(tmp)
        results = results_dir(params, STAGE)
        for phase, curve in curves.items():
            write_curve(results / f"curve_{phase}.csv", curve)
        write_metrics(results, metrics, HEADLINE)
        seconds = time.perf_counter() - start  # printed only (stage_run logs the wall time)
        run.log_metrics({k: v for k, v in metrics.items() if k not in ("source", "model", "folder")})
    print(f"train_alit: wrote {alit_dir(params)} ({seconds:.1f} s)")
    return 0
