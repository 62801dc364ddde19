"""Small image towers for open_clip configs, registered as timm models (open_clip builds ``timm_model_name``).

``clip_demo_cnn``: the demo CLIP's image tower. Five 3x3 conv-BN-ReLU layers (three of stride 2, 64 px ->
8x8 features) and a global *max* pool, so that one small object anywhere in the image can decide its
embedding. With open_clip's own towers (ModifiedResNet's attention pool, a ViT) the demo's 1-5 small shapes
on a textured background are not learnt within the demo's CPU budget; this one reaches ~80% supervised top-1
on the demo val split in under a minute of CPU.

Registration happens on import (:mod:`pipeline.models.clip` imports this module), so a saved model folder
whose ``open_clip_config.json`` names the tower loads with ``open_clip.create_model("local-dir:...")``.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn


class ConvMaxPoolTower(nn.Module):
    """Conv-BN-ReLU stack + global pool (+ optional linear classifier), with timm's classifier interface."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32, 64, 64, 128, 128),
                 strides: tuple[int, ...] = (2, 1, 1, 2, 1, 2, 1),
                 num_classes: int = 0, global_pool: str = "max", in_chans: int = 3, **_: Any) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for w, s in zip(widths, strides, strict=True):
            layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.default_cfg: dict[str, Any] = {"pool_size": None}  # open_clip reads it; None: pooled 1-D features
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str = "max") -> None:
        if global_pool not in ("max", "avg"):
            raise ValueError(f"global_pool must be 'max' or 'avg', not {global_pool!r}")
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class _Residual(nn.Module):
    """A ResNet basic block with GroupNorm (no batch statistics: the judge scores any batch alike)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out),
                                  nn.SiLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.GroupNorm(8, c_out))
        self.skip = (nn.Identity() if c_in == c_out and stride == 1 else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(8, c_out)))

    def forward(self, x):
        return nn.functional.silu(self.body(x) + self.skip(x))


class ResidualTower(ConvMaxPoolTower):
    """The demo judge's image tower: a small ResNet (strided stem, GroupNorm, SiLU, residual blocks).

    Another architecture than the objective's tower (no batch norm, residual paths, other widths), so
    that an image the optimisation tuned to the objective's features is not scored by the same ones.
    The pool stays a max: with an average pool one small shape among background features is lost
    (supervised top-1 on the demo after 558 steps: 0.74 average, 0.81 max; the objective's tower 0.44
    average, 0.89 max).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 48, 64, 96), strides: tuple[int, ...] = (1, 2, 1, 2),
                 num_classes: int = 0, global_pool: str = "max", in_chans: int = 3, **_: Any) -> None:
        nn.Module.__init__(self)
        blocks: list[nn.Module] = [nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False), nn.GroupNorm(8, widths[0]),
                                   nn.SiLU()]
        c = widths[0]
        for w, s in zip(widths, strides, strict=True):
            blocks.append(_Residual(c, w, s))
            c = w
        self.features = nn.Sequential(*blocks)
        self.num_features = c
        self.default_cfg = {"pool_size": None}
        self.reset_classifier(num_classes, global_pool)


def _timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg")}


@register_model
def judge_demo_resnet(pretrained: bool = False, **kwargs: Any) -> ResidualTower:
    if pretrained:
        raise ValueError("judge_demo_resnet has no pretrained weights")
    return ResidualTower(**_timm_kwargs(kwargs))


@register_model
def clip_demo_cnn(pretrained: bool = False, **kwargs: Any) -> ConvMaxPoolTower:
    if pretrained:
        raise ValueError("clip_demo_cnn has no pretrained weights")
    return ConvMaxPoolTower(**_timm_kwargs(kwargs))
