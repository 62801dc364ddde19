"""Named model configurations, timm style: one parametrised class per family, many names.

Public API
----------
``build_model(name, **overrides)``: a randomly initialised ``TiTok`` or ``MaskGITVQGAN``; keyword
    overrides replace config fields (e.g. ``build_model("titok_l32", pixel_decoder=False)``).
``model_config(name, **overrides)``: the config alone. ``MODEL_NAMES``: every known name.
``count_parameters(model)``: all parameters (trainable or not) = the numbers of the state dict.

Names
-----
``titok_s128``, ``titok_b64``, ``titok_l32``: the released two-stage tokenizers (legacy proxy-code head
    + MaskGIT-VQGAN pixel decoder; 83.67M / 204.81M / 641.05M parameters with the pixel decoder).
``titok_bl64_vq8k``, ``titok_bl128_vq8k``, ``titok_sl256_vq8k``: single-stage VQ, RGB head.
``titok_ll32_vae``, ``titok_bl64_vae``, ``titok_bl128_vae``: single-stage VAE (16 channels), RGB head.
``maskgit_vqgan``: the official MaskGIT-VQGAN (f16, 1024 x 256 codebook, 54.5M parameters).
``vqgan_demo``: a tiny MaskGIT-style VQGAN for 64x64 images, 4x downsampling (16x16 = 256 codes per
    image, the grid TiTok's proxy codes and ALIT's 2-D tokens live on).
``titok_demo``: a tiny 32-token TiTok for 64x64 images with the legacy proxy-code head, whose pixel
    decoder and proxy codebook are ``vqgan_demo``'s (decoder grid 16x16 = the VQGAN grid); it starts
    position-local (``init="local"``) and keeps token j = latent j (``legacy_reshape=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from pipeline.models.maskgit_vqgan import MaskGITVQGAN, VQGANConfig
from pipeline.models.titok import VIT_SIZES, TiTok, TiTokConfig


def _vit(prefix: str, size: str) -> dict:
    width, depth, heads = VIT_SIZES[size]
    return {f"{prefix}_width": width, f"{prefix}_depth": depth, f"{prefix}_heads": heads}


def _titok_legacy(size: str, tokens: int) -> TiTokConfig:
    return TiTokConfig(**_vit("enc", size), **_vit("dec", size), num_latent_tokens=tokens, token_size=12,
                       codebook_size=4096, use_l2_norm=True, legacy=True, pixel_decoder=True)


def _titok_vq8k(enc: str, dec: str, tokens: int) -> TiTokConfig:
    return TiTokConfig(**_vit("enc", enc), **_vit("dec", dec), num_latent_tokens=tokens, token_size=64,
                       codebook_size=8192, use_l2_norm=False, legacy=False, pixel_decoder=False)


def _titok_vae(enc: str, dec: str, tokens: int) -> TiTokConfig:
    return TiTokConfig(**_vit("enc", enc), **_vit("dec", dec), num_latent_tokens=tokens, token_size=16,
                       quantize_mode="vae", legacy=False, pixel_decoder=False)


def _vqgan_demo() -> VQGANConfig:
    # Sized for 2 CPU cores: 8 channels at every level (22k parameters). One normalisation group over
    # all 8 channels: each group's mean and scale over the image are removed, so with few channels every
    # extra group erases colour the model then has to rebuild; on the demo shapes (2000 x 4 steps, 300
    # val images) one group gives 24.7 dB and sharper shapes, two groups 23.3 dB, two groups with 16
    # channels 21.4 dB in grey (colour lost). Judge top-1 on the reconstructions: 0.53 against 0.43.
    # Constant channels (ch_mult 1, 1, 1): where a level changes the channel count, the official
    # residual block drops its input (the nin_shortcut quirk), so the whole signal passes a GroupNorm;
    # with ch_mult (1, 2, 4) the demo VQGAN reached only the PSNR of each image's mean colour.
    # 256 codes, not the official 1024: with 1024 the VQGAN gains 0.4 dB but the demo TiTok, whose
    # proxy codes they are, falls from 21.8 to 19.2 dB in its 1000 steps.
    # Dead-code restarts: without them ~50 of the 256 codes stay in use, and TiTok's proxy codes and
    # ALIT's targets are poorer for it.
    return VQGANConfig(ch=8, ch_mult=(1, 1, 1), num_res_blocks=1, z_channels=32, codebook_size=256,
                       norm_groups=1, image_size=64, restart_dead_codes=True)


def _titok_demo() -> TiTokConfig:
    # Width 96 x 3 layers: a stage-1 step costs ~0.9 GFLOP per image, so the demo trains in minutes on CPU.
    # Dead-code restarts: with the official codebook, a few hundred steps leave every image with the same
    # 32 codes. init="local" (pipeline.models.local_init): from xavier or the official init the model
    # stays where every token carries the image's mean colour; the local start needs token j = latent j,
    # hence legacy_reshape=False (the proxy-code head and pixel decoder stay the legacy ones).
    return TiTokConfig(image_size=64, enc_width=96, enc_depth=3, enc_heads=4, enc_patch_size=8,
                       dec_width=96, dec_depth=3, dec_heads=4, dec_patch_size=4, num_latent_tokens=32,
                       token_size=12, codebook_size=256, use_l2_norm=True, restart_dead_codes=True,
                       init="local", legacy=True, legacy_reshape=False, pixel_decoder=True, vqgan=_vqgan_demo())


CONFIGS: dict[str, Callable[[], TiTokConfig | VQGANConfig]] = {
    "titok_s128": lambda: _titok_legacy("small", 128),
    "titok_b64": lambda: _titok_legacy("base", 64),
    "titok_l32": lambda: _titok_legacy("large", 32),
    "titok_bl64_vq8k": lambda: _titok_vq8k("base", "large", 64),
    "titok_bl128_vq8k": lambda: _titok_vq8k("base", "large", 128),
    "titok_sl256_vq8k": lambda: _titok_vq8k("small", "large", 256),
    "titok_ll32_vae": lambda: _titok_vae("large", "large", 32),
    "titok_bl64_vae": lambda: _titok_vae("base", "large", 64),
    "titok_bl128_vae": lambda: _titok_vae("base", "large", 128),
    "titok_demo": _titok_demo,
    "maskgit_vqgan": VQGANConfig,
    "vqgan_demo": _vqgan_demo,
}
MODEL_NAMES = tuple(CONFIGS)


def model_config(name: str, **overrides) -> TiTokConfig | VQGANConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return replace(CONFIGS[name](), **overrides)


def build_model(name: str, **overrides) -> TiTok | MaskGITVQGAN:
    config = model_config(name, **overrides)
    return TiTok(config) if isinstance(config, TiTokConfig) else MaskGITVQGAN(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
