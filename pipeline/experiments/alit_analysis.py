"""ALIT analyses: reconstruction vs token count, adaptive length against complexity and familiarity,
linear probes on the tokens, and the decoder's attention per token group.

Images come in as uint8 (N, H, W, 3) arrays (the prepared shards) and are fed to ALIT in [0, 1].
Reconstructions are clamped and rounded to uint8 before any metric, as saved PNGs would be.

Public API
----------
``rollout(model, images, token_counts, ...)`` -> ``Rollout``: reconstructions and flattened quantised
    1-D latents at each token count, from one rollout per batch.
``adaptive(model, images, threshold, criterion, ...)`` -> ``(num_tokens (N,), reconstructions)``.
``reconstruction_errors(recon, images)`` -> per-image ``l1`` and ``psnr``.
``evaluate_split(model, images, token_counts, ...)``: L1, PSNR and rFID at each count and at the adaptive
    length (with 95% intervals over images, and a classifier's top-1 when given one), the adaptive counts,
    the latents and the reconstructions at the largest count.
``mean_ci95(values)``: the mean and the half-width of its 95% interval (normal approximation).
``halting_generator(model, seed)``: the seeded generator of the halting draws.
``spearman(x, y)``: rank correlation (None where a side is constant).
``linear_probe(train_x, train_y, test_x, test_y, num_classes, ...)``: test accuracy of a multinomial
    logistic regression (L-BFGS, L2 penalty) on standardised features.
``decoder_attention(model, images, layer)``: softmax(QK^T / sqrt(d)) of one decoder block at the last
    iteration, recomputed by a forward hook from the block's own input (the fused attention kernel
    returns no weights), head-averaged, grid positions x latent tokens (B, N, n).
``attention_per_group(attn, tokens_per_group)``: the attention of each grid position summed over each
    iteration's block of tokens (B, G, N).
Plots: ``plot_tokens_curve``, ``plot_complexity``, ``plot_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from pipeline.metrics import image_stats
from pipeline.metrics.fid import FeatureSpace, fidelity_metrics, reference_stats
from pipeline.metrics.images import to_float, to_uint8
from pipeline.models.alit import ALIT
from pipeline.models.alit_adaptive import adaptive_tokenize


def _batches(images: np.ndarray | torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield to_float(torch.as_tensor(images[start:start + batch_size]))  # (B, 3, H, W) in [0, 1]


def iteration_of(model: ALIT, num_tokens: int) -> int:
    """0-based iteration after which ALIT holds ``num_tokens`` tokens."""
    per = model.config.num_init_latent_tokens
    if num_tokens % per or not 1 <= num_tokens // per <= model.config.max_rollout_iters:
        raise ValueError(f"{num_tokens} tokens: expected a multiple of {per} up to "
                         f"{per * model.config.max_rollout_iters}")
    return num_tokens // per - 1


@dataclass
class Rollout:
    recon: dict[int, torch.Tensor]  # tokens -> uint8 (N, 3, H, W); empty without pixels
    latents: dict[int, torch.Tensor]  # tokens -> (N, tokens * token_dim) quantised 1-D latents


@torch.no_grad()
def rollout(model: ALIT, images: np.ndarray | torch.Tensor, token_counts: Sequence[int], *, batch_size: int = 32,
            pixels: bool = True, generator: torch.Generator | None = None) -> Rollout:
    """Reconstructions and quantised latents at each of ``token_counts``; one rollout per batch."""
    iters = [iteration_of(model, n) for n in token_counts]
    device = next(model.parameters()).device
    recon: dict[int, list[torch.Tensor]] = {n: [] for n in token_counts}
    latents: dict[int, list[torch.Tensor]] = {n: [] for n in token_counts}
    for x in _batches(images, batch_size):
        out = model(x.to(device), num_iters=max(iters) + 1, decode_iters=iters, pixel_iters=iters if pixels else (),
                    generator=generator)
        by_iter = dict(zip(out["iterations"], range(len(out["iterations"])), strict=True))
        for n, it in zip(token_counts, iters, strict=True):
            j = by_iter[it]
            latents[n].append(out["quantized_latents"][j].flatten(1).float().cpu())  # (B, n * D)
            if pixels:
                recon[n].append(to_uint8(out["reconstruction"][j].float().cpu()))
    return Rollout(recon={n: torch.cat(v) for n, v in recon.items() if v},
                   latents={n: torch.cat(v) for n, v in latents.items()})


@torch.no_grad()
def adaptive(model: ALIT, images: np.ndarray | torch.Tensor, threshold: float, criterion: str = "l1", *,
             batch_size: int = 32, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image adaptive token counts (N,) and the uint8 reconstructions (N, 3, H, W) at those counts."""
    device = next(model.parameters()).device
    counts, recon = [], []
    for x in _batches(images, batch_size):
        result = adaptive_tokenize(model, x.to(device), threshold, criterion, generator=generator)
        counts.append(result.num_tokens.cpu())
        recon.append(to_uint8(result.reconstructions.float().cpu()))
    return torch.cat(counts), torch.cat(recon)


def reconstruction_errors(recon: torch.Tensor, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image L1 (mean absolute error in [0, 1]) and PSNR (dB, peak 1)."""
    ref = torch.as_tensor(images)
    return {"l1": image_stats.l1(recon, ref), "psnr": image_stats.psnr(recon, ref)}


def halting_generator(model: ALIT, seed: int) -> torch.Generator:
    """A seeded generator for the halting draws, on the model's device (torch.bernoulli needs that)."""
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-image values and the half-width of its 95% interval (normal approximation)."""
    v = values.double()
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0


def evaluate_split(model: ALIT, images: np.ndarray, token_counts: Sequence[int], *, threshold: float, criterion: str,
                   space: FeatureSpace, seed: int, batch_size: int = 32, fid_batch_size: int = 64,
                   classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Fixed-length and adaptive reconstruction of one split: ``per_tokens`` (count -> ``l1``, ``psnr``,
    ``rfid``, the 95% half-widths ``l1_ci95`` and ``psnr_ci95``, and with ``classify`` (uint8 images ->
    per-image bool, right class) ``judge_top1`` and ``judge_top1_ci95``), ``adaptive`` (mean / median count,
    its scores, the count histogram), ``originals`` (``judge_top1`` of the images themselves, with
    ``classify``), and for the analyses ``tokens`` (each image's adaptive count), ``latents`` (count ->
    flattened 1-D latents) and ``recon_last`` (uint8 reconstructions at the largest count). rFID is
    against the same images, in ``space``."""
    gen = halting_generator(model, seed)
    fixed = rollout(model, images, token_counts, batch_size=batch_size, generator=gen)
    tokens, adaptive_recon = adaptive(model, images, threshold, criterion, batch_size=batch_size, generator=gen)
    reference = reference_stats(space, images=images, batch_size=fid_batch_size)

    def judged(x: torch.Tensor) -> dict[str, float]:
        if classify is None:
            return {}
        top1, ci = mean_ci95(classify(x))
        return {"judge_top1": top1, "judge_top1_ci95": ci}

    def score(recon: torch.Tensor) -> dict[str, float]:
        errors = reconstruction_errors(recon, images)
        fid = fidelity_metrics(recon, reference, space, isc=False, prc=False, batch_size=fid_batch_size)["fid"]
        intervals = {f"{k}_ci95": mean_ci95(errors[k])[1] for k in ("l1", "psnr")}
        return {"l1": float(errors["l1"].mean()), "psnr": float(errors["psnr"].mean()), "rfid": fid, **intervals,
                **judged(recon)}

    adaptive_scores = score(adaptive_recon)
    return {
        "originals": judged(to_uint8(images)),
        "per_tokens": {n: score(fixed.recon[n]) for n in token_counts},
        "adaptive": {"mean_tokens": float(tokens.float().mean()), "median_tokens": float(tokens.float().median()),
                     **adaptive_scores,
                     "histogram": {int(n): int((tokens == n).sum()) for n in torch.unique(tokens)}},
        "tokens": tokens, "latents": fixed.latents, "recon_last": fixed.recon[max(token_counts)],
    }


def spearman(x: Sequence[float] | np.ndarray | torch.Tensor, y: Sequence[float] | np.ndarray | torch.Tensor,
             ) -> float | None:
    """Spearman rank correlation; None when either side is constant (the correlation is undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, *, max_iter: int = 100, weight_decay: float = 1e-3) -> float:
    """Test accuracy of softmax regression on standardised features (train statistics), fit by L-BFGS."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    linear = torch.nn.Linear(xs.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    y = torch.as_tensor(train_y, dtype=torch.long)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(xs), y) + 0.5 * weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((linear(xt).argmax(1) == torch.as_tensor(test_y)).double().mean())


@torch.no_grad()
def decoder_attention(model: ALIT, images: torch.Tensor, layer: int = -1, *,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Head-averaged attention of decoder block ``layer`` at the last iteration: (B, N grid, n latents)."""
    attn_module = model.decoder.transformer[layer].attn
    captured: list[torch.Tensor] = []

    def recompute(module, args, output) -> None:
        x = args[0]  # (B, L, W): the block's normed input, L = 1 + N + n
        b, length, w = x.shape
        d = w // module.heads
        qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)
        q, k, _ = qkv.view(b, length, 3, module.heads, d).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        captured.append((q @ k.transpose(-2, -1) * d**-0.5).softmax(-1).mean(1))  # (B, L, L)

    handle = attn_module.register_forward_hook(recompute)
    try:
        last = model.config.max_rollout_iters - 1
        model(images, decode_iters=[last], generator=generator)
    finally:
        handle.remove()
    n_grid = model.config.num_image_tokens
    return captured[-1][:, 1:1 + n_grid, 1 + n_grid:]  # queries: grid positions; keys: the 1-D tokens


def attention_per_group(attn: torch.Tensor, tokens_per_group: int) -> torch.Tensor:
    """(B, N, n) -> (B, G, N): each grid position's attention summed over each group of tokens."""
    b, n_grid, n = attn.shape
    return attn.view(b, n_grid, n // tokens_per_group, tokens_per_group).sum(-1).transpose(1, 2)


# ---- figures -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tokens_curve(tokens: Sequence[int], series: dict[str, dict[str, Sequence[float]]],
                      adaptive_points: dict[str, dict[str, float]], path: Path) -> None:
    """One panel per metric (rFID, L1, PSNR): a line per split, the adaptive length as a marker."""
    plt = _pyplot()
    metrics = ("rfid", "l1", "psnr")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, (split, values) in enumerate(series.items()):
            ax.plot(tokens, values[metric], marker="o", color=f"C{i}", label=f"{split}: fixed length")
            point = adaptive_points.get(split)
            if point is not None:
                ax.scatter([point["mean_tokens"]], [point[metric]], marker="*", s=160, color=f"C{i}",
                           edgecolor="k", zorder=3, label=f"{split}: adaptive (mean tokens)")
        ax.set_xlabel("1-D tokens")
        ax.set_ylabel({"rfid": "rFID", "l1": "L1", "psnr": "PSNR (dB)"}[metric])
        ax.set_xticks(list(tokens))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("ALIT reconstruction vs token count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_complexity(num_tokens: np.ndarray, measures: dict[str, np.ndarray], rho: dict[str, float | None],
                    path: Path) -> None:
    """Adaptive token count against each complexity measure (jittered so that ties show)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(measures), figsize=(4.4 * len(measures), 3.6), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-4, 4, len(num_tokens))
    for ax, (name, values) in zip(axes[0], measures.items(), strict=True):
        ax.scatter(values, num_tokens + jitter, s=10, alpha=0.6)
        r = rho.get(name)
        ax.set_title(f"Spearman rho = {r:.3f}" if r is not None else "Spearman rho undefined (constant)")
        ax.set_xlabel(name)
        ax.set_ylabel("adaptive 1-D tokens")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(images: torch.Tensor, recon: torch.Tensor, groups: torch.Tensor, tokens_per_group: int,
                   path: Path, recon_title: str = "reconstruction") -> None:
    """Rows: images; columns: input, reconstruction, then the attention map of each token group."""
    plt = _pyplot()
    b, g, n_grid = groups.shape
    side = math.isqrt(n_grid)
    cols = 2 + g
    fig, axes = plt.subplots(b, cols, figsize=(1.5 * cols, 1.5 * b + 0.4), squeeze=False)
    for i in range(b):
        row = [to_uint8(images[i])[0].permute(1, 2, 0).numpy(), to_uint8(recon[i])[0].permute(1, 2, 0).numpy()]
        for ax, picture, title in zip(axes[i][:2], row, ("input", recon_title), strict=True):
            ax.imshow(picture)
            ax.set_title(title if i == 0 else "", fontsize=7)
        for j in range(g):
            ax = axes[i][2 + j]
            ax.imshow(groups[i, j].view(side, side).numpy(), cmap="viridis")
            if i == 0:
                ax.set_title(f"tokens {j * tokens_per_group}-{(j + 1) * tokens_per_group - 1}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("decoder attention of the grid positions to each iteration's tokens (last iteration)", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86, wspace=0.05, hspace=0.15)
    fig.savefig(path, dpi=110)
    plt.close(fig)
