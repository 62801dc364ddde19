"""Per-image reconstruction metrics and image statistics, on uint8 or [0, 1] float tensors.

Every function returns one value per image, shape (N,); callers average. Images are compared in [0, 1]
(uint8 is divided by 255), any layout :mod:`pipeline.metrics.images` accepts. ``mask`` (N, 1, H, W),
(N, H, W) or (H, W), weights in [0, 1], restricts PSNR and L1 to a region (the filled hole of an
inpainting, for instance).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.metrics.images import to_float, to_uint8

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like[:, :1])
    m = torch.as_tensor(mask, dtype=torch.float32)
    while m.ndim < 4:
        m = m.unsqueeze(0 if m.ndim == 2 else 1)
    return m.expand(like.shape[0], 1, *like.shape[-2:])


def _masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    m = _mask(mask, err)
    return (err * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * err.shape[1]).clamp_min(1e-12)


def mse(a: torch.Tensor, b: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in [0, 1] units."""
    return _masked_mean((to_float(a) - to_float(b)) ** 2, mask)


def psnr(a: torch.Tensor, b: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for a peak of 1 (inf for identical images)."""
    return -10 * torch.log10(mse(a, b, mask=mask))


def l1(a: torch.Tensor, b: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error in [0, 1] units."""
    return _masked_mean((to_float(a) - to_float(b)).abs(), mask)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()  # (size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of [0, 1] images, averaged over channels and positions.

    Gaussian 11x11 window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, per RGB channel, over the
    positions where the window fits (no padding, as the reference ``ssim.m``). Images must be at least
    ``window`` pixels on each side.
    """
    x, y = to_float(a).double(), to_float(b).double()
    c = x.shape[1]
    w = _gaussian_window(window, sigma).double().expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).float()


def luma(images: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) in [0, 1] (BT.601 weights)."""
    x = to_float(images)
    return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def mean_brightness(images: torch.Tensor) -> torch.Tensor:
    """Mean luma in [0, 1]."""
    return luma(images).mean(dim=(1, 2, 3))


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the 3x3 Laplacian of the luma (in [0, 1] units): falls as an image gets blurrier."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(luma(images), k).var(dim=(1, 2, 3))


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation ``(max - min) / max`` over pixels (0 for black pixels)."""
    x = to_float(images)
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    return torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi)).mean(dim=(1, 2))


def colour_temperature(images: torch.Tensor) -> torch.Tensor:
    """A warmth proxy: mean red minus mean blue, in [-1, 1] (positive = warm, negative = cool)."""
    x = to_float(images)
    return x[:, 0].mean(dim=(1, 2)) - x[:, 2].mean(dim=(1, 2))


def png_bits_per_pixel(images: torch.Tensor) -> torch.Tensor:
    """Size of each image as a PNG (PIL, compression level 9) in bits per pixel: a complexity measure."""
    x = to_uint8(images).permute(0, 2, 3, 1).numpy()
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=9)
        out.append(8 * buf.tell() / (img.shape[0] * img.shape[1]))
    return torch.tensor(out)


def image_statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """All per-image statistics of a batch: brightness, sharpness, saturation, colour temperature, PNG bpp."""
    return {"brightness": mean_brightness(images), "sharpness": sharpness(images),
            "saturation": saturation(images), "colour_temperature": colour_temperature(images),
            "png_bpp": png_bits_per_pixel(images)}
