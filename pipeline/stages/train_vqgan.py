"""Stage ``train_vqgan``: the 2D VQGAN whose codes are TiTok's proxy codes and ALIT's input tokens.

Demo: ``vqgan_demo`` trained from scratch on the demo train split with L1 + L2 + quantiser loss (no
perceptual or GAN term: those need pretrained networks the demo does not have). Paper scale:
``source: official`` imports the released MaskGIT-VQGAN from a local snapshot folder. Either way
the result is written to ``<paths.models>/vqgan`` (config.json + model.safetensors) together with its
reconstruction quality on the val split: ``<paths.results>/train_vqgan/metrics.json`` (the headline, DVC
metrics), ``details.json`` (everything) and ``curve.csv`` (the training curve, a DVC plot).
"""

from __future__ import annotations

import torch

from pipeline.data.shards import training_images
from pipeline.io import atomic_dir, write_curve, write_metrics
from pipeline.layout import prepared_root, results_dir, vqgan_dir
from pipeline.metrics.images import to_float
from pipeline.models import count_parameters
from pipeline.models.maskgit_vqgan import MaskGITVQGAN
from pipeline.models.registry import build_model
from pipeline.params import Params
from pipeline.stages._common import (
    checkpoint_dir,
    final_metrics,
    remove_checkpoints,
    save_image_grid,
)
from pipeline.tracking import stage_run

STAGE = "train_vqgan"
# metrics.json (what `dvc metrics show` prints): flat name -> dotted key of details.json
HEADLINE = {"parameters": "parameters", "steps": "steps", "loss": "train/loss", "psnr": "val.psnr",
            "codebook_usage": "val.codebook_usage"}


@torch.no_grad()
def reconstruction_quality(vqgan: MaskGITVQGAN, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """PSNR / L1 of the VQGAN's reconstructions and its codebook usage on ``images`` (float, [0, 1])."""
    from pipeline.metrics.image_stats import l1, psnr

    vqgan.eval()
    psnrs, l1s, codes = [], [], []
    for batch in images.split(batch_size):
        z_q, indices, _ = vqgan.encode(batch)
        recon = vqgan.decode(z_q).clamp(0, 1)
        psnrs.append(psnr(recon, batch))
        l1s.append(l1(recon, batch))
        codes.append(indices.flatten())
    counts = torch.bincount(torch.cat(codes), minlength=vqgan.config.codebook_size).float()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
    return {"psnr": torch.cat(psnrs).mean().item(), "l1": torch.cat(l1s).mean().item(),
            "codebook_usage": (counts > 0).float().mean().item(), "codebook_perplexity": perplexity.item()}


def run(params: Params) -> int:
    """Train (or import) the VQGAN and write it with its metrics."""
    from pipeline.data.shards import load_split
    from pipeline.train.loop import train
    from pipeline.train.recipes import VQGANRecipe

    cfg = params.train_vqgan
    out_dir = vqgan_dir(params)
    results = results_dir(params, STAGE)
    torch.manual_seed(params.seed)
    with stage_run(STAGE, params) as run:
        if cfg.source == "official":
            vqgan = MaskGITVQGAN.from_pretrained(cfg.folder)
            train_metrics: dict[str, float] = {}
            history: list[dict[str, float]] = []
        else:
            vqgan = build_model(cfg.model, image_size=params.image_size)
            recipe = VQGANRecipe(vqgan, l1=cfg.l1, l2=cfg.l2, quantizer_weight=cfg.quantizer_weight)
            ckpt = checkpoint_dir(params, STAGE, cfg)
            data = training_images(prepared_root(params), params.seed)
            result = train(recipe, data, cfg.optim, ckpt, seed=params.seed, log_fn=run.log_metrics)
            if result.ema_state is not None:
                recipe.model.load_state_dict(result.ema_state)
            vqgan = recipe.tokenizer.cpu()
            train_metrics = {"steps": result.step, **final_metrics(result.metrics, "train/")}
            history = result.history
        val = to_float(load_split(prepared_root(params), "val").images)
        quality = reconstruction_quality(vqgan, val)
        with torch.no_grad():
            shown = val[:12]
            z_q, _, _ = vqgan.encode(shown)
            recon = vqgan.decode(z_q).clamp(0, 1)
        save_image_grid([shown, recon], results / "reconstructions.png", labels=["input", "VQGAN"],
                        title=f"{STAGE}: val reconstructions, PSNR {quality['psnr']:.2f} dB")
        with atomic_dir(out_dir) as tmp:
            vqgan.save_pretrained(tmp)
        metrics = {"source": cfg.source, "model": cfg.model if cfg.source == "train" else str(cfg.folder),
                   "parameters": count_parameters(vqgan),
                   "val": quality, **train_metrics}
        run.log_metrics({f"val/{k}": v for k, v in quality.items()})
        run.log_artifact(results / "reconstructions.png")
        write_curve(results / "curve.csv", history)
        write_metrics(results, metrics, HEADLINE)
        if cfg.source == "train":
            remove_checkpoints(ckpt)
    print(f"{STAGE}: val PSNR {quality['psnr']:.2f} dB, codebook usage {quality['codebook_usage']:.2f}")
    return 0
