"""Position-local attention initialisation for small TiTok models trained from scratch (the demo).

Why: trained end to end from a random init, a small TiTok sits on a saddle where every latent token
carries the image's mean colour (attention is uniform on both sides, so no token can specialise before
the other side does) and the decoder paints one flat colour per image. Each half learns locality quickly
when the other half is fixed; together they do not, within a CPU budget (README, "What the demo shows").

What: the model starts as a 2D tokenizer on a ``rows x cols`` grid of latent tokens and is free to
leave it (nothing constrains attention during training). Two head-sized subspaces of the residual stream
hold Fourier codes of 2D positions: ``A`` (the first ``head_dim`` channels) the positions of encoder
patches and decoder mask tokens, ``B`` (the next ``head_dim``) the positions of the latent tokens. In
every block, each head's ``W_q`` / ``W_k`` start as the identity from one subspace to the other
(encoder: latent queries read ``B``, patch keys read ``A``; decoder: mask-token queries read ``A``,
latent keys read ``B``), scaled by ``gain``. So an encoder latent token attends to the patches of its
grid cell, a decoder mask token to the latent token of its cell, and no token attends to a token of its
own kind by position. Everything that writes into the two subspaces (embeddings, ``out_proj``, MLP
outputs) starts at zero so that the codes survive the blocks; all other weights keep the ``xavier``
init, except the encoder's patch embedding, which starts centred (``vit.centre_patch_embedding_``) so
that the tokens depend on the image from the first step. The encoder must keep token ``j`` as latent
``j`` (``legacy_reshape=False``), or the chain from a cell through token ``j`` to the same cell breaks.

Either half alone does not do it on the demo (val PSNR of a 1000 x 8 stage-1 run on the demo VQGAN,
three seeds): xavier 18.9; local attention only 17.9 to 20.6 depending on the seed; both 21.5 / 21.5 / 21.6.

Public API: ``init_local_attention(model, gain=3.0)``, ``latent_grid(n)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.models.vit import centre_patch_embedding_

if TYPE_CHECKING:
    from pipeline.models.titok import TiTok


def latent_grid(n: int) -> tuple[int, int]:
    """The (rows, cols) grid, rows <= cols, on which ``n`` latent tokens start: 32 -> (4, 8)."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def _cell_centres(rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, 2) centres (y, x) in [0, 1] of a grid's cells, row-major."""
    y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    return torch.stack([y.flatten(), x.flatten()], dim=1)


def _position_code(yx: torch.Tensor, dim: int) -> torch.Tensor:
    """Unit-norm codes (n, dim) of 2D positions: sin / cos of dim/4 harmonics (0.5, 1, 1.5, ... cycles per
    image side) on each axis. The period of the lowest harmonic is twice the image, so code dot products
    fall off with distance and do not alias back."""
    f = dim // 4
    omega = math.pi * (torch.arange(f, dtype=torch.float32) + 1)
    oy, ox = yx[:, :1] * omega, yx[:, 1:] * omega
    return torch.cat([torch.sin(ox), torch.cos(ox), torch.sin(oy), torch.cos(oy)], dim=1) / math.sqrt(2 * f)


@torch.no_grad()
def _init_side(side: nn.Module, grid: int, latent_yx: torch.Tensor, heads: int, encoder: bool,
               gain: float) -> None:
    width = side.positional_embedding.shape[1]
    hd = width // heads
    a, b, codes = slice(0, hd), slice(hd, 2 * hd), slice(0, 2 * hd)
    # the codes as large as the rest of a random position embedding, so LayerNorm keeps them visible
    scale = side.positional_embedding[1:, 2 * hd:].norm(dim=1).mean() * math.sqrt(2)
    side.positional_embedding[:, codes] = 0
    side.positional_embedding[1:, a] = scale * _position_code(_cell_centres(grid, grid), hd)
    side.latent_token_positional_embedding[:, codes] = 0
    side.latent_token_positional_embedding[:, b] = scale * _position_code(latent_yx, hd)
    side.class_embedding[:, codes] = 0
    embed = side.patch_embed if encoder else side.decoder_embed
    embed.weight[codes] = 0
    embed.bias[codes] = 0
    if encoder:
        centre_patch_embedding_(embed)
    if not encoder:
        side.mask_token[..., codes] = 0
    query_reads, key_reads = (b, a) if encoder else (a, b)
    eye = gain * torch.eye(hd)
    for block in side.transformer:
        w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
        w[:2 * width] = 0
        bias[:2 * width] = 0
        for h in range(heads):
            w[h * hd:(h + 1) * hd, query_reads] = eye
            w[width + h * hd:width + (h + 1) * hd, key_reads] = eye
        for out in (block.attn.out_proj, block.mlp.c_proj):
            out.weight[codes] = 0
            out.bias[codes] = 0


@torch.no_grad()
def init_local_attention(model: TiTok, gain: float = 3.0) -> None:
    """Re-initialise ``model`` (xavier-initialised) in place as described in the module docstring.

    ``gain`` scales W_q and W_k: at 3, an encoder latent token puts ~99% of its attention on its cell's
    patches and a decoder mask token ~100% on its cell's latent token (demo sizes).
    """
    cfg = model.config
    for name, width, heads in (("encoder", cfg.enc_width, cfg.enc_heads), ("decoder", cfg.dec_width, cfg.dec_heads)):
        if width % heads or (width // heads) % 4 or heads < 3:
            raise ValueError(f"init='local' needs {name} heads >= 3 and a head size divisible by 4; "
                             f"got width {width}, heads {heads}")
    latent_yx = _cell_centres(*latent_grid(cfg.num_latent_tokens))
    model.latent_tokens[:, :2 * (cfg.enc_width // cfg.enc_heads)] = 0
    _init_side(model.encoder, cfg.enc_grid, latent_yx, cfg.enc_heads, encoder=True, gain=gain)
    _init_side(model.decoder, cfg.dec_grid, latent_yx, cfg.dec_heads, encoder=False, gain=gain)
