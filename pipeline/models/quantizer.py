"""Latent bottlenecks of TiTok: a vector quantiser and a diagonal-Gaussian (VAE) posterior.

Public API
----------
``VectorQuantizer(codebook_size, token_size, commitment_cost=0.25, use_l2_norm=False, restart_dead_codes=False)``
    ``forward(z)`` with ``z`` of shape (B, C, H, W) returns ``(z_q, info)``: ``z_q`` is the
    straight-through output ``z + sg(e - z)`` (same shape), ``info`` holds ``min_encoding_indices``
    (B, H, W) int64, ``quantizer_loss`` = ``commitment_loss`` + ``codebook_loss``, and the
    codebook-usage statistics ``perplexity`` and ``usage`` (fraction of codes used in the batch) plus
    ``code_counts`` (K,). ``get_codebook_entry(indices)`` looks codes up (l2-normalised when
    ``use_l2_norm``). State-dict key: ``embedding.weight`` (K, C), as in the official TiTok.
    ``restart_dead_codes`` (not in the official TiTok, off in every released configuration): see
    ``Codebook``; re-seeds unused codes from encoder outputs, as in Jukebox and CVQ-VAE. Small
    from-scratch runs need it: at initialisation every image's token at a given position falls on the
    same code, and the decoder never sees a difference to learn from.
``Codebook(codebook_size, dim, commitment_cost, restart_dead_codes)``
    The base of both quantisers (this one and the MaskGIT-VQGAN's): the ``embedding`` and its
    training-time dead-code restarts (``restart_dead_codes_(z_flat, indices)``, buffer ``usage_ema``).
``DiagonalGaussian(params)``
    ``params`` (B, 2C, H, W) is split into mean and log-variance (clamped to [-30, 20]);
    ``sample()``, ``mode()``, ``kl()`` (summed over channel and H only: shape (B, W), i.e. per token in
    TiTok's (B, C, 1, N) layout, as the official code does).
``GaussianLatent()``
    Parameter-free module wrapping ``DiagonalGaussian``: ``forward(params, sample=True)`` returns
    ``(sample or mean, info)`` with ``mean``, ``logvar``, ``std`` and ``kl`` (B, W).
``nearest_code(z, codebook)`` and ``codebook_usage(indices, K)``
    The shared nearest-neighbour search and usage statistics (also used by the MaskGIT-VQGAN quantiser).

The quantiser always runs in float32 (autocast is switched off inside) so that code assignments do
not depend on the training precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

RESTART_DECAY = 0.9
RESTART_BELOW = 0.03  # EMA count under which a code is dead: 1.0 * 0.9**33 < 0.03


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for every row of ``z`` (M, C); first index on ties."""
    # |z|^2 + |e|^2 - 2 z.e, the same expansion as the official code, so near-ties resolve alike
    d = z.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * z @ codebook.t()  # (M, K)
    return d.argmin(dim=1)


@torch.no_grad()
def codebook_usage(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Perplexity of the code histogram and the fraction of codes used, over all given indices."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()  # (K,)
    probs = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
    return {"perplexity": perplexity, "usage": (counts > 0).float().mean(), "code_counts": counts}


class Codebook(nn.Module):
    """A codebook ``embedding`` (K, C), initialised U(-1/K, 1/K) as in the official TiTok and MaskGIT,
    with the optional training-time dead-code restarts both quantisers share.

    ``restart_dead_codes``: in training mode, while both the encoder (``z_flat`` requires grad) and the
    codebook train, a code left unused for about 30 steps (an EMA of its per-step count, decay
    ``RESTART_DECAY``, under ``RESTART_BELOW``) is re-seeded with one of the batch's encoder outputs.
    So a frozen encoder or a fixed codebook (TiTok's stage 2 and proxy codes, ALIT's base tokenizer,
    whose stage 2 fine-tunes the encoder around its codebook) never moves it. The EMA is the buffer
    ``usage_ema`` (K,), present only when restarts are on; under DDP the counts are summed over ranks and
    the seeds broadcast from rank 0, so every rank keeps the same codebook.
    """

    def __init__(self, codebook_size: int, dim: int, commitment_cost: float, restart_dead_codes: bool) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_cost = commitment_cost
        self.restart_dead_codes = restart_dead_codes
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if restart_dead_codes:
            self.register_buffer("usage_ema", torch.ones(codebook_size))

    @torch.no_grad()
    def restart_dead_codes_(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        """Count this batch's code ``indices`` (M,) and re-seed dead codes from rows of ``z_flat`` (M, C)."""
        trains = self.training and z_flat.requires_grad and self.embedding.weight.requires_grad
        if not (self.restart_dead_codes and trains):
            return
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
        self.usage_ema.mul_(RESTART_DECAY).add_(counts, alpha=1 - RESTART_DECAY)
        dead = (self.usage_ema < RESTART_BELOW).nonzero().flatten()
        if len(dead) == 0:
            return
        seeds = z_flat[torch.randint(0, len(z_flat), (len(dead),)).to(z_flat.device)]
        if distributed:
            dist.broadcast(seeds, src=0)
        self.embedding.weight.data[dead] = seeds.to(self.embedding.weight.dtype)
        self.usage_ema[dead] = 1.0


class VectorQuantizer(Codebook):
    """Nearest-neighbour VQ with optional l2-normalised codes, straight-through gradients."""

    def __init__(self, codebook_size: int, token_size: int, commitment_cost: float = 0.25,
                 use_l2_norm: bool = False, restart_dead_codes: bool = False) -> None:
        super().__init__(codebook_size, token_size, commitment_cost, restart_dead_codes)
        self.token_size = token_size
        self.use_l2_norm = use_l2_norm

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, c, h, w = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        z_flat = z.reshape(-1, c)  # (B*H*W, C)
        codebook = self.embedding.weight
        if self.use_l2_norm:
            z_flat = F.normalize(z_flat, dim=-1)
            codebook = F.normalize(codebook, dim=-1)
            z = z_flat.view(b, h, w, c)
        indices = nearest_code(z_flat, codebook)  # (B*H*W,)
        e = self.get_codebook_entry(indices).view(b, h, w, c)
        self.restart_dead_codes_(z_flat, indices)

        commitment_loss = self.commitment_cost * torch.mean((e.detach() - z) ** 2)
        codebook_loss = torch.mean((e - z.detach()) ** 2)
        z_q = z + (e - z).detach()  # straight-through: gradients go to the encoder unchanged
        z_q = z_q.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

        info = {
            "quantizer_loss": commitment_loss + codebook_loss,
            "commitment_loss": commitment_loss,
            "codebook_loss": codebook_loss,
            "min_encoding_indices": indices.view(b, h, w),
            **codebook_usage(indices, self.codebook_size),
        }
        return z_q, info

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook rows for integer ``indices`` of any shape -> (*indices.shape, C)."""
        e = self.embedding(indices)
        return F.normalize(e, dim=-1) if self.use_l2_norm else e


class DiagonalGaussian:
    """Diagonal Gaussian posterior over continuous tokens, from encoder output (B, 2C, H, W)."""

    def __init__(self, params: torch.Tensor) -> None:
        self.params = params
        self.mean, logvar = params.float().chunk(2, dim=1)  # (B, C, H, W) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # drawn on the CPU generator, then moved: the same numbers on every device for a given seed
        noise = torch.randn(self.mean.shape, generator=generator)
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) summed over dims 1 and 2 only: (B, W), one value per token in TiTok."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2])


class GaussianLatent(nn.Module):
    """The VAE bottleneck as a module: (B, 2C, H, W) posterior parameters -> (sample, info)."""

    def forward(self, params: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        posterior = DiagonalGaussian(params)
        z = posterior.sample(generator) if sample else posterior.mode()
        info = {"mean": posterior.mean, "logvar": posterior.logvar, "std": posterior.std, "kl": posterior.kl()}
        return z, info
