"""Adaptive token count: the fewest ALIT iterations whose reconstruction is good enough, per image.

``adaptive_tokenize`` rolls ALIT out one iteration at a time, decodes every image still running to
pixels, and lets an image stop at the first iteration whose reconstruction error is below the
threshold. Stopped images leave the batch, so later iterations run on fewer images, and the loop ends
as soon as every image has stopped. An image that never passes gets the iteration with its smallest
error, as the official ``encode`` does.

Differences from the official ``AdaptiveLengthImageTokenizer.encode(threshold=...)``:

* the official code averages the L1 error over the whole batch, so all images of a batch get the same
  token count; here the decision is made for each image separately (the batch size does not change
  any image's count, except through the random halting draws);
* the official code runs and decodes all iterations before choosing; here halted images stop.

The error is computed on the unclamped reconstruction, as the official criterion does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.models.alit import ALIT

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (recon, target) -> (B,) errors


def l1_error(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon - target).abs().flatten(1).mean(1)


def l2_error(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon - target).pow(2).flatten(1).mean(1)


def ssim_error(recon: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM (Gaussian window, images in [0, 1], averaged over channels and pixels)."""
    # Deliberately not pipeline.metrics.image_stats.ssim, whose numbers differ:
    # that metric clamps to [0, 1] (to_float) and computes in float64 with a float32-rounded window,
    # returning float32; this criterion judges the unclamped reconstruction, as the official ALIT
    # criterion does, in the input's dtype. 1 - image_stats.ssim differs from this in the last float32
    # bits even on in-range images (and by ~1e-2 on out-of-range ones), which can move an image's
    # stopping iteration across the threshold; the other way round, image_stats.ssim written as
    # 1 - ssim_error(float64) still differs by one float32 ulp on ~2% of images (the window's rounding).
    # Models may not import metrics either (tests/test_layering.py).
    c1, c2 = 0.01**2, 0.03**2
    coords = torch.arange(window, dtype=recon.dtype, device=recon.device) - window // 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    ch = recon.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(ch, 1, window, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=ch)  # valid convolution, as in the reference SSIM

    mu_x, mu_y = blur(recon), blur(target)
    var_x = blur(recon * recon) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(recon * target) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return 1 - ssim.flatten(1).mean(1)


CRITERIA: dict[str, Criterion] = {"l1": l1_error, "l2": l2_error, "ssim": ssim_error}


@dataclass
class AdaptiveResult:
    num_tokens: torch.Tensor  # (B,) int64: 1-D tokens chosen per image
    iterations: torch.Tensor  # (B,) int64: iterations run, 1-based (num_tokens = iterations * tokens/iter)
    reconstructions: torch.Tensor  # (B, 3, H, W) at the chosen length, unclamped
    per_iter_errors: torch.Tensor  # (B, max_iters): NaN after an image stopped
    code_indices: list[torch.Tensor]  # per image, (num_tokens,) int64: its 1-D tokens
    passed: torch.Tensor  # (B,) bool: the error went under the threshold


@torch.no_grad()
def adaptive_tokenize(model: ALIT, images: torch.Tensor, threshold: float, criterion: str | Criterion = "l1",
                      max_iters: int | None = None, generator: torch.Generator | None = None) -> AdaptiveResult:
    """Per-image adaptive length: stop each image at its first iteration with error < ``threshold``.

    ``criterion``: ``"l1"`` (default, mean absolute error), ``"l2"`` (mean squared error), ``"ssim"``
    (1 - SSIM) or a callable ``(recon, target) -> (B,)`` errors.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    error_fn = CRITERIA[criterion] if isinstance(criterion, str) else criterion
    max_iters = model.config.max_rollout_iters if max_iters is None else max_iters
    if not 1 <= max_iters <= model.config.max_rollout_iters:
        raise ValueError(f"max_iters must be in 1..{model.config.max_rollout_iters}, got {max_iters}")

    b = images.shape[0]
    chosen_iter = torch.full((b,), -1, dtype=torch.long)
    best_err = torch.full((b,), float("inf"))
    errors = torch.full((b, max_iters), float("nan"))
    recons = torch.zeros_like(images)
    codes: list[torch.Tensor | None] = [None] * b
    passed = torch.zeros(b, dtype=torch.bool)

    active = torch.arange(b)  # original indices of the images still running
    state = model.begin(images)
    for it in range(max_iters):
        out, state = model.step(state, decode_pixels=True, generator=generator)
        err = error_fn(out["reconstruction"], images[active]).float().cpu()  # (b_active,)
        errors[active, it] = err
        # keep each running image's best iteration so far, for images that never pass
        better = (err < best_err[active]) | (err < threshold)
        for j in better.nonzero().flatten().tolist():
            i = int(active[j])
            best_err[i], chosen_iter[i] = err[j], it
            recons[i] = out["reconstruction"][j]
            codes[i] = out["code_indices"][j]
        done = err < threshold
        passed[active[done]] = True
        if done.all():
            break
        active, state = active[~done], state.select(~done.to(state.x.device))

    return AdaptiveResult(
        num_tokens=(chosen_iter + 1) * model.config.num_init_latent_tokens, iterations=chosen_iter + 1,
        reconstructions=recons, per_iter_errors=errors, code_indices=codes, passed=passed)
