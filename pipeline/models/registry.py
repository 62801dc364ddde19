"""Named model configurations, timm style: one parametrised class per family, many names, one builder.

Each model file defines its own names at its bottom (``TITOK_CONFIGS`` in ``titok.py``,
``VQGAN_CONFIGS`` in ``maskgit_vqgan.py``, ``ALIT_CONFIGS`` in ``alit.py``, with what each name is);
this module only merges the tables, so it imports the models and no model imports it.

Public API
----------
``build_model(name, **overrides)``: a randomly initialised ``TiTok``, ``MaskGITVQGAN`` or ``ALIT``;
    keyword overrides replace config fields (e.g. ``build_model("titok_l32", pixel_decoder=False)``).
``model_config(name, **overrides)``: the config alone. ``MODEL_NAMES``: every known name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from pipeline.models.alit import ALIT, ALIT_CONFIGS, ALITConfig
from pipeline.models.maskgit_vqgan import VQGAN_CONFIGS, MaskGITVQGAN, VQGANConfig
from pipeline.models.titok import TITOK_CONFIGS, TiTok, TiTokConfig

ModelConfig = TiTokConfig | VQGANConfig | ALITConfig

CONFIGS: dict[str, Callable[[], ModelConfig]] = {**TITOK_CONFIGS, **VQGAN_CONFIGS, **ALIT_CONFIGS}
MODEL_NAMES = tuple(CONFIGS)
_MODEL_CLASSES: dict[type, type[nn.Module]] = {TiTokConfig: TiTok, VQGANConfig: MaskGITVQGAN, ALITConfig: ALIT}


def model_config(name: str, **overrides) -> ModelConfig:
    """The config of the named model, with ``overrides`` replacing fields (validated by the config)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return replace(CONFIGS[name](), **overrides)


def build_model(name: str, **overrides) -> TiTok | MaskGITVQGAN | ALIT:
    """The named model, randomly initialised (weights come from ``<Model>.from_pretrained``)."""
    config = model_config(name, **overrides)
    return _MODEL_CLASSES[type(config)](config)
