"""Reconstruction metrics and image statistics: known values, layouts, monotone behaviour."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.metrics import image_stats as st
from pipeline.metrics.images import UInt8Images, to_float, to_uint8, to_uint8_hwc


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_layouts_and_dtypes_agree():
    x = _images()
    u8 = to_uint8(x)
    assert u8.dtype == torch.uint8 and u8.shape == x.shape
    nhwc = u8.permute(0, 2, 3, 1).numpy()
    assert torch.equal(to_uint8(nhwc), u8)
    assert torch.allclose(to_float(nhwc), u8.float() / 255)
    assert to_float(u8[0]).shape == (1, 3, 32, 32)
    ds = UInt8Images(nhwc)
    assert len(ds) == 4 and ds[1].dtype == torch.uint8 and torch.equal(ds[1], u8[1])
    with pytest.raises(ValueError, match="expected images"):
        to_float(torch.zeros(2, 5, 8, 8))
    # the stages' PNG / npz layout: out-of-range floats clamp, tensors that need grad are accepted
    shifted = (x * 1.4 - 0.2).requires_grad_()
    hwc = to_uint8_hwc(shifted)
    assert isinstance(hwc, np.ndarray) and hwc.dtype == np.uint8 and hwc.shape == (4, 32, 32, 3)
    assert hwc.min() == 0 and hwc.max() == 255
    assert np.array_equal(hwc, to_uint8(shifted.detach()).permute(0, 2, 3, 1).numpy())


def test_psnr_known_values():
    a = torch.full((2, 3, 16, 16), 0.5)
    b = a + 0.1  # MSE = 0.01 -> 20 dB
    assert torch.allclose(st.psnr(a, b), torch.tensor([20.0, 20.0]), atol=1e-4)
    assert torch.isinf(st.psnr(a, a)).all()
    assert torch.allclose(st.l1(a, b), torch.tensor([0.1, 0.1]), atol=1e-6)
    # uint8 input: an error of 1/255 everywhere
    u = torch.full((1, 16, 16, 3), 100, dtype=torch.uint8)
    assert st.psnr(u, u + 1).item() == pytest.approx(20 * math.log10(255), abs=1e-3)


def test_masked_metrics_only_see_the_region():
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[..., :4] = 1.0  # wrong on the left half
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1  # evaluate the right half only
    assert torch.isinf(st.psnr(a, b, mask=mask)).all()
    assert st.l1(a, b, mask=1 - mask).item() == pytest.approx(1.0)
    assert st.l1(a, b).item() == pytest.approx(0.5)


def test_ssim_known_values():
    x = _images()
    assert torch.allclose(st.ssim(x, x), torch.ones(4), atol=1e-6)
    # Constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.6, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    val = st.ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert val.item() == pytest.approx(expected, rel=1e-5)
    # Inverted contrast around the same mean: luminance term 1, structure term ~ -1.
    ramp = torch.linspace(0.2, 0.8, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    assert st.ssim(ramp, 1 - ramp).item() < 0
    # More noise, lower SSIM; symmetric in its arguments.
    noisy = [x + s * torch.randn_like(x) for s in (0.02, 0.1, 0.3)]
    vals = [st.ssim(x, n.clamp(0, 1)).mean().item() for n in noisy]
    assert vals[0] > vals[1] > vals[2]
    assert torch.allclose(st.ssim(x, noisy[1]), st.ssim(noisy[1], x), atol=1e-6)


def test_ssim_matches_a_direct_numpy_computation():
    x, y = _images(1, 16, seed=1), _images(1, 16, seed=2)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for ch in range(3):
        a, b = x[0, ch].double().numpy(), y[0, ch].double().numpy()
        for i in range(16 - 10):
            for j in range(16 - 10):
                pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
                cov = (w * pa * pb).sum() - ma * mb
                vals.append((2 * ma * mb + 1e-4) * (2 * cov + 9e-4) / ((ma**2 + mb**2 + 1e-4) * (va + vb + 9e-4)))
    assert st.ssim(x, y).item() == pytest.approx(float(np.mean(vals)), rel=1e-5)


def test_image_statistics_track_their_factor():
    x = _images(2, 32)
    darker = x * 0.5
    assert (st.mean_brightness(darker) < st.mean_brightness(x)).all()
    assert st.mean_brightness(torch.ones(1, 3, 4, 4)).item() == pytest.approx(1.0)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert (st.sharpness(blurred) < st.sharpness(x)).all()
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    assert torch.allclose(st.saturation(grey), torch.zeros(2), atol=1e-6)
    assert st.saturation(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).item() == pytest.approx(1.0)
    warm = torch.tensor([0.9, 0.5, 0.2]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert st.colour_temperature(warm).item() == pytest.approx(0.7) and st.colour_temperature(warm.flip(1)) < 0
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert st.png_bits_per_pixel(flat).item() < st.png_bits_per_pixel(x[:1]).item()
    stats = st.image_statistics(x)
    assert set(stats) == {"brightness", "sharpness", "saturation", "colour_temperature", "png_bpp"}
    assert all(v.shape == (2,) for v in stats.values())
