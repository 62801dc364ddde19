"""Loss networks for tokenizer training: PatchGAN discriminator, hinge GAN loss, LeCam, LPIPS-style
perceptual distance. Pure PyTorch (+ torchvision's VGG16 layer layout); nothing is downloaded.

Public API
----------
``PatchDiscriminator(channels=64, n_layers=3)``: images [0, 1] (B, 3, H, W) -> patch logits
    (B, 1, h, w). A pix2pix-style PatchGAN with GroupNorm instead of BatchNorm, so that it behaves the
    same in DDP and for any per-GPU batch. (The official TiTok stage 2 uses MaskBit's variant with
    blur-pool downsampling and a 16x16 adaptive max-pool; its checkpoints are not needed to reproduce
    the tokenizer, so the simpler classic design is used here.)
``hinge_discriminator_loss(real, fake)`` = 0.5 (mean relu(1 - real) + mean relu(1 + fake));
``hinge_generator_loss(fake)`` = -mean(fake).
``LeCam(decay=0.999)``: EMA of the mean real / fake logits (buffers, so they are checkpointed with
    the discriminator that holds it); ``penalty(real, fake)`` updates the EMAs and returns
    mean relu(real - ema_fake)^2 + mean relu(ema_real - fake)^2 (Tseng et al., 2021).
``LPIPS(vgg_path, lin_path)``: the learned perceptual distance of Zhang et al. (2018) on VGG16
    features relu1_2 ... relu5_3: per layer, unit-normalise the channels, square the difference, weight
    channels with the learned 1x1 layer, average over space, sum over layers. ``forward(x, y)`` with
    images in [0, 1] -> (B,) distances. Weights come from two local files, read and loaded strictly
    by ``pipeline.models.checkpoints`` (``torch.load(weights_only=True)``): torchvision's ImageNet
    VGG16 state dict (``features.*`` keys, e.g. ``vgg16-397923af.pth``) and the LPIPS v0.1 linear
    layers (``lin{0..4}.model.1.weight``, the ``vgg.pth`` shipped in the ``lpips`` package). A missing
    file raises ``MissingWeightsError``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg as tv_vgg

from pipeline.errors import MissingWeightsError
from pipeline.models.checkpoints import load_state_dict_strict, read_state_dict


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3, groups: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1  # the last block keeps the resolution
            layers += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(groups, out), out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)  # (B, 1, h, w) logits, one per overlapping patch


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean())


def hinge_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.float().mean()


class LeCam(nn.Module):
    """LeCam regulariser: keeps discriminator logits near the EMA of the other side's logits."""

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real, fake = real.float(), fake.float()
        with torch.no_grad():
            self.ema_real.lerp_(real.mean(), 1.0 - self.decay)
            self.ema_fake.lerp_(fake.mean(), 1.0 - self.decay)
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()


# torchvision vgg16().features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_TAPS = (3, 8, 15, 22, 29)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_VGG_HOW = ("torchvision's ImageNet VGG16 weights: on a machine with internet run "
            "`python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` and copy "
            "$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth (or "
            "https://download.pytorch.org/models/vgg16-397923af.pth) to this path")
_LIN_HOW = ("the LPIPS v0.1 linear layers: `pip download lpips` (or clone richzhang/PerceptualSimilarity) and "
            "copy lpips/weights/v0.1/vgg.pth to this path")


def _read_local(path: str | Path, what: str, how: str) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file; a missing file says how to get it (nothing is downloaded)."""
    if not Path(path).is_file():
        raise MissingWeightsError(what, str(path), how)
    return read_state_dict(path)


class LPIPS(nn.Module):
    def __init__(self, vgg_path: str | Path, lin_path: str | Path) -> None:
        super().__init__()
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"])[: _LPIPS_TAPS[-1] + 1]  # vgg16 up to relu5_3
        vgg = _read_local(vgg_path, "the LPIPS VGG16 backbone", _VGG_HOW)
        vgg = {k.removeprefix("features."): v for k, v in vgg.items()
               if k.startswith("features.") and int(k.split(".")[1]) <= _LPIPS_TAPS[-1]}
        load_state_dict_strict(features, vgg, vgg_path, expected="torchvision VGG16 features (features.* keys)")
        bounds = (0, *(t + 1 for t in _LPIPS_TAPS))
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))

        lin = _read_local(lin_path, "the LPIPS linear layers", _LIN_HOW)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        lin = {f"{i}.weight": lin.get(f"lin{i}.model.1.weight") for i in range(len(_LPIPS_CHANNELS))}
        load_state_dict_strict(self.lins, {k: v for k, v in lin.items() if v is not None}, lin_path,
                               expected="the LPIPS linear layers (keys lin{i}.model.1.weight)")
        # the LPIPS input scaling: images in [-1, 1] are standardised with these per-channel constants
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric network: never in training mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]) * 2.0 - 1.0  # (2B, 3, H, W), one pass for both
        h = (h - self.shift) / self.scale
        dist = 0.0
        for block, lin in zip(self.slices, self.lins, strict=True):
            h = block(h)
            a, b = F.normalize(h.float(), dim=1, eps=1e-10).chunk(2)
            dist = dist + lin((a - b).pow(2)).mean(dim=(1, 2, 3))  # (B,)
        return dist

