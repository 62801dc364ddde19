"""Position-local initialisation of small 1-D tokenizers trained from scratch (the demo TiTok and ALIT).

Why: trained end to end from a random init, a small 1-D tokenizer sits on a saddle where every latent
token carries the image's mean colour (attention is uniform on both sides, so no token can specialise
before the other side does) and the decoder paints one flat colour per image. Each half learns locality
quickly when the other half is fixed; together they do not, within a CPU budget (README, "What the demo
shows").

What: the model starts as a 2D tokenizer on a ``rows x cols`` grid of latent tokens and is free to
leave it (nothing constrains attention during training). Two head-sized blocks of channels of the
residual stream hold Fourier codes of 2D positions: ``A`` the positions of image tokens (encoder
patches, decoder mask tokens), ``B`` the positions of the latent tokens. In every block, each head's
``W_q`` / ``W_k`` start as the identity from one block to the other (encoder: latent queries read
``B``, image-token keys read ``A``; decoder: mask-token queries read ``A``, latent keys read ``B``),
scaled by ``gain``. So an encoder latent token attends to the image tokens of its grid cell, a decoder
mask token to the latent token of its cell, and no token attends to a token of its own kind by
position. Everything that writes into the two blocks (embeddings, ``out_proj``, MLP outputs) starts at
zero so that the codes survive the layers; all other weights keep their (``xavier``) init.

- TiTok (``init_local_attention``): ``A`` / ``B`` are the first two head-sized channel blocks; the
  encoder's patch embedding also starts centred (``vit.centre_patch_embedding_``) so that the tokens
  depend on the image from the first step. The encoder must keep token ``j`` as latent ``j``
  (``legacy_reshape=False``), or the chain from a cell through token ``j`` to the same cell breaks.
- ALIT (``init_local_attention_alit``): ``A`` / ``B`` are taken from the pixel patch embedding's
  channels (after the VQGAN's ``z_channels``), which then start at zero: at init the image tokens carry
  the VQGAN features only. Every iteration's latent block starts on the same grid, and the decoder's
  latent ``k`` on cell ``k mod rows * cols``.

Either half of the TiTok start alone does not do it on the demo (val PSNR of a 1000 x 8 stage-1 run on
the demo VQGAN): xavier 18.9; centred only 19.3; local attention only 17.9 to 20.6 depending on the
seed; both 21.5 / 21.5 / 21.6 over three seeds.

Public API: ``init_local_attention(titok, gain=3.0)``, ``init_local_attention_alit(alit, gain=3.0)``,
``latent_grid(n)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.vit import centre_patch_embedding_


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


def _code_scale(embedding: torch.Tensor, codes: slice) -> torch.Tensor:
    """The codes as large as the rest of a random position embedding, so LayerNorm keeps them visible."""
    rest = torch.ones(embedding.shape[1], dtype=torch.bool)
    rest[codes] = False
    return embedding[:, rest].norm(dim=1).mean() * math.sqrt(embedding.shape[1] / rest.sum())


def _local_attention_(blocks: nn.ModuleList, heads: int, query_reads: slice, key_reads: slice, codes: slice,
                      gain: float) -> None:
    """W_q / W_k of every block: gain x identity from ``query_reads`` / ``key_reads``, zero elsewhere;
    the attention and MLP outputs stop writing into ``codes``."""
    for block in blocks:
        w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
        width = w.shape[1]
        hd = width // heads
        w[:2 * width] = 0
        bias[:2 * width] = 0
        eye = gain * torch.eye(hd)
        for h in range(heads):
            w[h * hd:(h + 1) * hd, query_reads] = eye
            w[width + h * hd:width + (h + 1) * hd, key_reads] = eye
        for out in (block.attn.out_proj, block.mlp.c_proj):
            out.weight[codes] = 0
            out.bias[codes] = 0


def _check_heads(name: str, width: int, heads: int) -> int:
    if width % heads or (width // heads) % 4 or heads < 3:
        raise ValueError(f"a local init needs {name} heads >= 3 and a head size divisible by 4; "
                         f"got width {width}, heads {heads}")
    return width // heads


@torch.no_grad()
def _init_titok_side(side: nn.Module, grid: int, latent_yx: torch.Tensor, heads: int, encoder: bool,
                     gain: float) -> None:
    hd = side.positional_embedding.shape[1] // heads
    a, b, codes = slice(0, hd), slice(hd, 2 * hd), slice(0, 2 * hd)
    scale = _code_scale(side.positional_embedding[1:], codes)
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
    else:
        side.mask_token[..., codes] = 0
    _local_attention_(side.transformer, heads, *((b, a) if encoder else (a, b)), codes, gain)


@torch.no_grad()
def init_local_attention(model: nn.Module, gain: float = 3.0) -> None:
    """Re-initialise a (xavier-initialised) ``TiTok`` in place as described in the module docstring.

    Typed ``nn.Module``: the models call this from their constructors, so naming their classes here
    would make the two modules import each other.

    ``gain`` scales W_q and W_k: at 3, an encoder latent token puts ~99% of its attention on its cell's
    patches and a decoder mask token ~100% on its cell's latent token (demo sizes).
    """
    cfg = model.config
    enc_hd = _check_heads("encoder", cfg.enc_width, cfg.enc_heads)
    _check_heads("decoder", cfg.dec_width, cfg.dec_heads)
    latent_yx = _cell_centres(*latent_grid(cfg.num_latent_tokens))
    model.latent_tokens[:, :2 * enc_hd] = 0
    _init_titok_side(model.encoder, cfg.enc_grid, latent_yx, cfg.enc_heads, encoder=True, gain=gain)
    _init_titok_side(model.decoder, cfg.dec_grid, latent_yx, cfg.dec_heads, encoder=False, gain=gain)


@torch.no_grad()
def init_local_attention_alit(model: nn.Module, gain: float = 3.0) -> None:
    """Re-initialise a (xavier-initialised) ``ALIT`` in place as described in the module docstring."""
    c = model.config
    hd = _check_heads("ALIT", c.width, c.num_heads)
    z = c.vqgan.z_channels
    if c.width - z < 2 * hd:
        raise ValueError(f"a local ALIT init needs 2 x head size ({2 * hd}) patch-embedding channels; "
                         f"width {c.width} - z_channels {z} = {c.width - z}")
    a, b, codes = slice(z, z + hd), slice(z + hd, z + 2 * hd), slice(z, z + 2 * hd)
    grid_code = _position_code(_cell_centres(c.grid_size, c.grid_size), hd)
    cells = latent_grid(c.num_init_latent_tokens)
    latent_code = _position_code(_cell_centres(*cells), hd)
    # encoder: image tokens [VQGAN features ; patch embedding]; the patch channels in A / B start at zero
    model.patch_embed.weight[codes.start - z:codes.stop - z] = 0
    model.patch_embed.bias[codes.start - z:codes.stop - z] = 0
    scale = _code_scale(model.encoder_positional_embedding[1:], codes)
    model.encoder_positional_embedding[:, codes] = 0
    model.encoder_positional_embedding[1:, a] = scale * grid_code
    for p in (model.encoder_class_embedding, model.encoder_mask_token, model.latent_tokens,
              model.timestep_embedding):
        p[..., codes] = 0
    model.latent_token_positional_embedding[:, codes] = 0
    model.latent_token_positional_embedding[:, b] = scale * latent_code
    _local_attention_(model.encoder.transformer, c.num_heads, b, a, codes, gain)
    # decoder: [class ; mask tokens ; latents]; latent k sits on cell k mod (rows * cols)
    dec = model.decoder
    scale = _code_scale(model.decoder_positional_embedding[1:], codes)
    model.decoder_positional_embedding[:, codes] = 0
    model.decoder_positional_embedding[1:, a] = scale * grid_code
    model.decoder_class_embedding[:, codes] = 0
    model.decoder_mask_token[..., codes] = 0
    rows = torch.arange(dec.latent_token_positional_embedding.shape[0]) % len(latent_code)
    dec.latent_token_positional_embedding[:, codes] = 0
    dec.latent_token_positional_embedding[:, b] = scale * latent_code[rows]
    dec.decoder_embed.weight[codes] = 0
    dec.decoder_embed.bias[codes] = 0
    _local_attention_(dec.transformer, c.num_heads, a, b, codes, gain)
