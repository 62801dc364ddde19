"""In-memory image batches for the metrics: every metric takes uint8 or float tensors directly.

Accepted layouts: (N, 3, H, W) or (N, H, W, 3), a single image without N, uint8 in [0, 255] or float in
[0, 1] (floats are clamped). A batch whose second and last dimensions are both 3 is read as NCHW.
torch-fidelity reads the same tensors through :class:`UInt8Images`, so no PNG folders are needed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def _nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"expected images (N, 3, H, W) or (N, H, W, 3), got shape {tuple(x.shape)}")
    return x if x.shape[1] == 3 else x.permute(0, 3, 1, 2)


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images -> uint8 (N, 3, H, W); floats in [0, 1] are rounded to the nearest level."""
    x = _nchw(images)
    if x.dtype == torch.uint8:
        return x.contiguous()
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def to_uint8_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images -> uint8 numpy (N, H, W, 3), as PNGs, matplotlib and the stages' ``.npz`` samples hold them."""
    return to_uint8(torch.as_tensor(images).detach().cpu()).permute(0, 2, 3, 1).numpy()


def to_float(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images -> float32 (N, 3, H, W) in [0, 1]."""
    x = _nchw(images)
    return x.float().div(255) if x.dtype == torch.uint8 else x.float().clamp(0, 1)


class UInt8Images(Dataset):
    """A torch-fidelity input: item i is image i as uint8 (3, H, W), converted when read (no copy)."""

    def __init__(self, images: torch.Tensor | np.ndarray) -> None:
        self.images = _nchw(images)  # a view: a 10k x 256^2 reference batch is not duplicated

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_uint8(self.images[i])[0]
