"""Speed of the token-optimisation loop: images/s and seconds per 300-step optimisation.

Run by hand: ``python bench/token_opt.py [--device cpu] [--titok titok_demo] [--batch-sizes 1 4 16]``.
Models are randomly initialised (speed does not depend on the weights): a registry TiTok (``titok_demo``
on CPU; ``titok_l32`` at paper scale) and an open_clip config (the demo CLIP, or e.g. ``ViT-B-32``).
Each setting runs ``--iters`` steps after a one-step warm-up, ``--repeats`` times interleaved with the
other variants; the fastest per-step time counts and is scaled to ``--paper-iters`` (300) steps. The
``official`` rows time a reimplementation of the official loop's behaviour in the same run: gradients
accumulate on the frozen networks' weights, one crop per augmentation is shared by the batch, fp32.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from functools import partial

import torch

from pipeline.experiments.tokenopt import (
    CLIPObjective,
    RandomViews,
    TokenOptConfig,
    images_to_tokens,
    noise_scale,
    optimize_tokens,
    tokens_to_images,
)
from pipeline.models.clip import DEMO_CONFIG, create_clip
from pipeline.models.registry import build_model


def official_loop(titok, objective, config: TokenOptConfig, *, images: torch.Tensor) -> None:
    """The official loop's work per step: no ``requires_grad_(False)``, so every backward also fills
    ``.grad`` of TiTok's decoder and of CLIP (never zeroed, only the tokens' gradient is)."""
    titok.eval().requires_grad_(True)
    objective.eval().requires_grad_(True)
    z = images_to_tokens(titok, images).requires_grad_(True)
    z0, ema = z.detach().clone(), z.detach().clone()
    opt = torch.optim.Adam([z], lr=config.lr)
    views = RandomViews(config.num_augmentations, False, torch.Generator().manual_seed(0))
    for step in range(config.num_iter):
        with torch.no_grad():
            z.add_(torch.randn_like(z), alpha=config.token_noise * noise_scale(step, config.num_iter))
        loss = objective(tokens_to_images(titok, z)[0], views)
        loss = loss + config.reg_weight * (z - z0).pow(2).mean(dim=(1, 2, 3))
        loss.sum().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            ema.sub_((1 - (config.ema_decay if step else 0.0)) * (ema - z))


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--titok", default="titok_demo", help="a pipeline.models.registry name")
    parser.add_argument("--clip", default=str(DEMO_CONFIG), help="open_clip config name or JSON file")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--augmentations", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=5, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest counts")
    parser.add_argument("--paper-iters", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-official", action="store_true", help="skip the official-behaviour rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    titok = build_model(args.titok).to(device)
    clip_name, clip_cfg = (args.clip, None) if not args.clip.endswith(".json") else (
        args.clip.rsplit("/", 1)[-1][:-5], args.clip)
    clip = create_clip(clip_name, config=clip_cfg).to(device)
    size = titok.config.image_size
    print(f"device {device} ({torch.get_num_threads()} threads), TiTok {args.titok} ({size}px, "
          f"{titok.config.num_latent_tokens} tokens), CLIP {clip_name} ({clip.image_size[0]}px); "
          f"{args.iters} timed steps scaled to {args.paper_iters}")
    header = f"{'loop':<9}{'precision':<10}{'batch':>6}{'K':>4}{'s/step':>10}{'s/image@300':>13}{'images/s@300':>14}"
    print(header)
    print("-" * len(header))

    variants = [("engine", p) for p in args.precisions] + ([] if args.no_official else [("official", "fp32")])
    for k in args.augmentations:
        for batch in args.batch_sizes:
            images = torch.rand(batch, 3, size, size, device=device)
            objective = CLIPObjective(clip, [f"a photo of class {i % 10}" for i in range(batch)])
            best = {}
            for _ in range(args.repeats):  # interleaved, best of n: robust to other load on the machine
                for loop, precision in variants:
                    config = TokenOptConfig(num_iter=args.iters, num_augmentations=k, precision=precision)
                    start = optimize_tokens if loop == "engine" else official_loop
                    start(titok, objective, replace(config, num_iter=1), images=images)  # warm-up
                    seconds = timed(partial(start, titok, objective, config, images=images), device) / args.iters
                    titok.zero_grad(set_to_none=True)
                    objective.zero_grad(set_to_none=True)
                    best[loop, precision] = min(best.get((loop, precision), float("inf")), seconds)
            for (loop, precision), per_step in best.items():
                per_image = per_step * args.paper_iters / batch
                print(f"{loop:<9}{precision:<10}{batch:>6}{k:>4}{per_step:>10.3f}{per_image:>13.2f}"
                      f"{1 / per_image:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
