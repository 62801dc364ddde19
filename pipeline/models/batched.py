"""Batched TiTok round trips: the one encode / decode / reconstruct loop every stage uses.

Two kinds of tokens, kept apart because they compute different things:

- :func:`reconstruct`: ``titok.encode`` (quantised tokens; a VAE tokenizer samples its posterior) then
  ``titok.decode``, clamped to [0, 1]; also the code indices. Used by ``train_titok`` and ``eval_titok``.
- the token-optimisation variables (:func:`images_to_tokens` / :func:`tokens_to_images`: pre- or
  post-quantisation latents, VAE posterior mean) and their batched loops :func:`encode_batched` /
  :func:`decode_batched`, which move each batch to the model's device and bring the result back to the
  CPU. Used by ``pipeline.experiments.tokenopt`` and the ``tokenopt_*`` stages.

Batches are ``images.split(batch_size)``: the same batches, so the same numbers, as the loops they replace.
"""

from __future__ import annotations

import torch

from pipeline.models.titok import TiTok


@torch.no_grad()
def reconstruct(titok: TiTok, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions (clamped to [0, 1]) and code indices (N, num_tokens) of ``images``."""
    titok.eval()
    recons, codes = [], []
    for batch in images.split(batch_size):
        tokens, info = titok.encode(batch)
        recons.append(titok.decode(tokens).clamp(0, 1))
        codes.append(info["min_encoding_indices"].reshape(len(batch), -1))
    return torch.cat(recons), torch.cat(codes)


def tokens_to_images(titok: TiTok, tokens: torch.Tensor, *,
                     post_quantization: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Optimisation variables (B, C, 1, N) -> (images (B, 3, H, W), codes (B, 1, N) or None).

    Pre-quantisation VQ tokens go through the quantiser (straight-through); VAE tokens (B, 2C, 1, N)
    decode from the posterior mean; post-quantisation tokens are decoded as they are.
    """
    if titok.config.quantize_mode == "vae":
        return titok.decode(tokens if post_quantization else tokens.chunk(2, dim=1)[0]), None
    if post_quantization:
        with torch.no_grad():
            codes = titok.quantize(tokens)[1]["min_encoding_indices"]
        return titok.decode(tokens), codes
    quantized, info = titok.quantize(tokens)
    return titok.decode(quantized), info["min_encoding_indices"]


@torch.no_grad()
def images_to_tokens(titok: TiTok, images: torch.Tensor, *, post_quantization: bool = False) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) -> the optimisation variables (B, C, 1, N) (VAE: (B, 2C, 1, N))."""
    latents = titok.encode_continuous(images).float()
    if not post_quantization:
        return latents
    if titok.config.quantize_mode == "vae":
        return latents.chunk(2, dim=1)[0]
    return titok.quantize(latents)[0]


@torch.no_grad()
def encode_batched(titok: TiTok, images: torch.Tensor, batch_size: int, *,
                   post_quantization: bool = False) -> torch.Tensor:
    """:func:`images_to_tokens` over batches of ``images`` (N, 3, H, W) in [0, 1]; the tokens on the CPU."""
    dev = titok.latent_tokens.device
    return torch.cat([images_to_tokens(titok, b.to(dev), post_quantization=post_quantization).cpu()
                      for b in images.split(batch_size)])


@torch.no_grad()
def decode_batched(titok: TiTok, tokens: torch.Tensor, batch_size: int, *,
                   post_quantization: bool = False) -> torch.Tensor:
    """Tokens (N, C, 1, T) -> images (N, 3, H, W) in [0, 1] on the CPU (:func:`tokens_to_images` over batches)."""
    dev = titok.latent_tokens.device
    return torch.cat([tokens_to_images(titok, t.to(dev), post_quantization=post_quantization)[0].float()
                      .clamp(0, 1).cpu() for t in tokens.split(batch_size)])


@torch.no_grad()
def roundtrip_batched(titok: TiTok, images: torch.Tensor, batch_size: int, *,
                      post_quantization: bool = False) -> torch.Tensor:
    """``decode_batched(encode_batched(images))``: the images token optimisation starts from when seeded
    with ``images`` (N, 3, H, W); on the CPU."""
    tokens = encode_batched(titok, images, batch_size, post_quantization=post_quantization)
    return decode_batched(titok, tokens, batch_size, post_quantization=post_quantization)
