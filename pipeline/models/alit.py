"""ALIT: adaptive-length image tokenization by recurrent allocation (Duggal et al., ICLR 2025).

A VQGAN turns an image into a g x g grid of continuous features and their nearest codes. ALIT distils
that grid into 1-D tokens: one shared transformer encoder runs for up to ``max_rollout_iters``
iterations over ``[class ; g*g image tokens ; latents]``; every iteration appends the same learned
block of ``num_init_latent_tokens`` latents plus an iteration embedding, so the 1-D token count grows
32, 64, ..., 256 at paper scale. The image tokens are carried from one iteration to the next (not reset
to the input), so the encoder refines them together with the latents. After every iteration the latents
are quantised (l2-normalised VQ after a projection to ``vq_token_dim``), and a decoder predicts, from
``[class ; g*g mask tokens ; latents]``, logits over the VQGAN codebook at every grid position. Pixels
come from the VQGAN decoder applied to the softmax-weighted mix of VQGAN codes ("soft code").

Dynamic halting: image tokens whose correct VQGAN code the decoder already predicts with probability
``p >= dynamic_halting_threshold`` are replaced, with probability ``p`` (a Bernoulli draw, also in eval
mode, as in the official code), by a mask token before the next iteration. The decision is remade every
iteration. The official code also draws the mask after the last iteration (its guard compares Python's
builtin ``iter``); we do the same, so the recorded masks line up, and it changes no output.

State-dict keys are those of the official ``AdaptiveLengthImageTokenizer`` (VQGAN base tokenizer,
quantised latents), so official checkpoints load with ``strict=True`` once the training-only
``gan_losses.*`` modules (LPIPS + PatchGAN per iteration) are dropped; see ``ALIT.from_pretrained``.

Public API
----------
``ALITConfig`` (``to_dict`` / ``from_dict``, which also reads the official constructor arguments);
    ``ALIT_CONFIGS``, the named configs ``alit_small``, ``alit_base``, ``alit_semilarge`` and
    ``alit_demo`` (at the bottom of this file), built through ``pipeline.models.registry``.
``ALIT(config)``: ``forward(images, ...)`` -> per-iteration dict (logits, code targets, soft codes,
    VQ losses, codes, halting masks, optional reconstructions); ``begin`` / ``step`` to run one
    iteration at a time (used by ``alit_adaptive``); ``reconstruct_all_iterations(images)``;
    ``decode_tokens(code_indices)``; ``from_pretrained(folder)`` / ``save_pretrained(folder)``.
``latent_distillation_loss(outputs, codebook, weights)``: the official stage-1 loss.
``ITERATION_LOSS_WEIGHTS``: the official per-iteration cross-entropy weights (8 iterations).

Differences from the official code, all without numerical effect on the recorded fixtures:

* The 2-D grid side is ``ALITConfig.grid_size`` = ``image_size // patch_size`` and must equal the
  VQGAN's latent grid; the official reconstruction path hard-codes a 16 x 16 grid, so it only runs at
  256 px / patch 16 (or 64 px / patch 4, the fixture). ``alit_demo`` keeps a 16 x 16 grid (64 px, the
  demo VQGAN downsamples 4x) and so the paper's 32, 64, ..., 256 token counts.
* Only the quantised-latent variant is built (every released VQGAN checkpoint but one is quantised).
* ``forward`` returns the per-iteration tensors a trainer or an analysis needs (see ``forward``)
  instead of a list of log dicts; the losses are in ``latent_distillation_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models.checkpoints import build_and_load, read_json, read_state_dict, weights_file, write_snapshot
from pipeline.models.local_init import init_local_attention_alit
from pipeline.models.maskgit_vqgan import VQGAN_CONFIGS, MaskGITVQGAN, VQGANConfig
from pipeline.models.quantizer import VectorQuantizer
from pipeline.models.vit import Transformer, weight_init

# Per-iteration weights of the code cross-entropy in stage 1 (official ``lambda_loss_weight``).
ITERATION_LOSS_WEIGHTS = (2.5, 2.0, 1.5, 1.25, 1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ALITConfig:
    """Architecture of one ALIT tokenizer and of its VQGAN base tokenizer."""

    width: int = 1024  # encoder and decoder transformers (symmetric in every released config)
    num_layers: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    image_size: int = 256
    patch_size: int = 16  # pixel patch embedding; image_size // patch_size = VQGAN grid side
    num_init_latent_tokens: int = 32  # latents appended per iteration
    max_rollout_iters: int = 8
    max_latent_tokens: int = 256  # rows of the decoder's latent position table
    vq_codebook_size: int = 4096
    vq_token_dim: int = 12
    vq_commitment_cost: float = 0.25
    dynamic_halting: bool = True
    dynamic_halting_threshold: float = 0.55
    restart_dead_codes: bool = False  # training-time restarts of the 1-D VQ (see VectorQuantizer); demo only
    # "vit": the official trunc-normal(0.02); demo only: "xavier", and "local", xavier plus a position-local
    # start (pipeline.models.local_init), without which the demo ALIT outputs one and the same image for
    # every input
    init: Literal["vit", "xavier", "local"] = "vit"
    vqgan: VQGANConfig = field(default_factory=lambda: _mage_vqgan())  # the released base tokenizer

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2

    def tokens_at(self, iteration: int) -> int:
        """Number of 1-D tokens after 0-based ``iteration``."""
        return self.num_init_latent_tokens * (iteration + 1)

    def __post_init__(self) -> None:
        weight_init(self.init)  # a known initialiser name
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        vq_grid = self.image_size // self.vqgan.downsample_factor
        if vq_grid != self.grid_size:
            raise ValueError(f"the VQGAN grid ({vq_grid}x{vq_grid}) must equal image_size // patch_size "
                             f"({self.grid_size}); change patch_size or the VQGAN's ch_mult")
        if self.tokens_at(self.max_rollout_iters - 1) > self.max_latent_tokens:
            raise ValueError(f"{self.max_rollout_iters} iterations of {self.num_init_latent_tokens} tokens "
                             f"exceed max_latent_tokens={self.max_latent_tokens}")
        if self.vqgan.z_channels >= self.width:
            raise ValueError("width must exceed the VQGAN's z_channels (the rest is the patch embedding)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ALITConfig:
        """Our own config.json, or the official constructor arguments (as in the fixtures)."""
        if "AdaptiveLengthImageTokenizer_kwargs" in d:
            return cls._from_official(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown ALIT config keys {unknown}; expected a subset of {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("vqgan"), dict):
            d["vqgan"] = VQGANConfig.from_dict(d["vqgan"])
        return cls(**d)

    @classmethod
    def _from_official(cls, d: dict[str, Any]) -> ALITConfig:
        kw = d["AdaptiveLengthImageTokenizer_kwargs"]
        yaml = next(v for k, v in d.items() if k.startswith("vqgan_yaml") or k == "vqgan_yaml")
        p = yaml["model"]["params"]
        if kw["encoder_width"] != kw["decoder_width"] or kw["encoder_num_layers"] != kw["decoder_num_layers"]:
            raise InputError("asymmetric encoder/decoder ALIT configs are not supported")
        if not kw.get("quantize_latent", True):
            raise InputError("only the quantised-latent ALIT variant is supported")
        vqgan = _alit_vqgan_config(ch=p["ddconfig"]["ch"], ch_mult=p["ddconfig"]["ch_mult"],
                                   num_res_blocks=p["ddconfig"]["num_res_blocks"],
                                   z_channels=p["ddconfig"]["z_channels"], n_embed=p["n_embed"])
        return cls(width=kw["encoder_width"], num_layers=kw["encoder_num_layers"],
                   num_heads=kw["encoder_num_heads"], image_size=kw["img_size"], patch_size=kw["patch_size"],
                   num_init_latent_tokens=kw["num_init_latent_tokens"],
                   max_rollout_iters=kw["max_rollout_iters"], vq_codebook_size=kw["vq_codebook_size"],
                   vq_token_dim=kw["vq_token_dim"], vq_commitment_cost=kw["vq_commitment_cost"],
                   dynamic_halting=kw["dynamic_halting"],
                   dynamic_halting_threshold=kw["dynamic_halting_threshold"], vqgan=vqgan)


def _alit_vqgan_config(ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                       n_embed: int) -> VQGANConfig:
    """The MAGE VQGAN that ALIT builds on: no attention, no quant_conv, codebook dim = z_channels."""
    return VQGANConfig(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                       codebook_size=n_embed, key_style="taming")


def _mage_vqgan() -> VQGANConfig:
    return _alit_vqgan_config(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, n_embed=1024)


class BaseTokenizer(nn.Module):
    """The frozen-in-stage-1 VQGAN under ALIT (official ``VQGANWrapper``: keys ``vqgan.*``)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.vqgan = MaskGITVQGAN(config)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous pre-quantisation features (B, z, g, g) and their nearest codes (B, g*g)."""
        features = self.vqgan.encoder(images)
        _, indices, _ = self.vqgan.quantize(features)
        return features, indices

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decoder(code)  # (B, 3, H, W), unclamped as in the official full_finetuning path


class LatentEncoder(nn.Module):
    """The shared encoder: a plain stack of pre-norm blocks (no final norm), batch-first."""

    def __init__(self, width: int, num_layers: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.transformer = Transformer(width, num_layers, num_heads, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(x)


class LatentDecoder(nn.Module):
    """[class ; mask tokens ; 1-D latents] -> logits over the VQGAN codes at every grid position."""

    def __init__(self, width: int, num_layers: int, num_heads: int, mlp_ratio: float, token_dim: int,
                 num_codes: int, max_latent_tokens: int) -> None:
        super().__init__()
        self.latent_token_positional_embedding = nn.Parameter(width**-0.5 * torch.randn(max_latent_tokens, width))
        self.decoder_embed = nn.Linear(token_dim, width)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, num_layers, num_heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, num_codes))

    def forward(self, latents: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        # latents (B, n, token_dim) quantised; queries (B, 1+N, W) = class + N mask tokens with positions
        n = latents.shape[1]
        z = self.decoder_embed(latents) + self.latent_token_positional_embedding[:n]  # (B, n, W)
        x = self.ln_pre(torch.cat([queries, z], dim=1))  # (B, 1+N+n, W)
        x = self.transformer(x)
        x = self.ln_post(x[:, 1:queries.shape[1]])  # (B, N, W): the grid positions only
        return self.ffn(x)  # (B, N, K)


@dataclass
class RolloutState:
    """What carries over between iterations: the encoder sequence and the per-image targets."""

    x: torch.Tensor  # (B, 1+N+n, W): class, N image tokens, n latents, after encoder_ln_recursive
    gt_indices: torch.Tensor  # (B, N) VQGAN codes: the decoder's targets and the halting criterion
    iteration: int = 0  # the next iteration to run

    def select(self, keep: torch.Tensor) -> RolloutState:
        """Keep the images indexed by ``keep`` (bool mask or indices); used to drop halted images."""
        return RolloutState(self.x[keep], self.gt_indices[keep], self.iteration)


class ALIT(nn.Module):
    """Adaptive-length image tokenizer; keys and numerics follow ``AdaptiveLengthImageTokenizer``."""

    def __init__(self, config: ALITConfig) -> None:
        super().__init__()
        self.config = c = config
        w, n_lat = c.width, c.num_init_latent_tokens
        scale = w**-0.5
        self.encoder_positional_embedding = nn.Parameter(scale * torch.randn(c.num_image_tokens + 1, w))
        self.encoder_class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.encoder_mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.decoder_positional_embedding = nn.Parameter(scale * torch.randn(c.num_image_tokens + 1, w))
        self.decoder_class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.decoder_mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_tokens = nn.Parameter(scale * torch.randn(n_lat, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(n_lat, w))
        # the only difference between the latent blocks of different iterations
        self.timestep_embedding = nn.Parameter(scale * torch.randn(c.max_rollout_iters, n_lat, w))

        self.encoder_ln_pre = nn.LayerNorm(w)
        self.encoder_ln_post = nn.LayerNorm(w)
        self.encoder_ln_recursive = nn.LayerNorm(w)
        self.pre_quantizer_mlp = nn.Linear(w, c.vq_token_dim)
        self.encoder = LatentEncoder(w, c.num_layers, c.num_heads, c.mlp_ratio)
        self.decoder = LatentDecoder(w, c.num_layers, c.num_heads, c.mlp_ratio, c.vq_token_dim,
                                     c.vqgan.codebook_size, c.max_latent_tokens)
        # the image tokens are [VQGAN features (z_channels) ; pixel patch embedding (the rest)]
        self.patch_embed = nn.Conv2d(3, w - c.vqgan.z_channels, kernel_size=c.patch_size, stride=c.patch_size)
        self.apply(weight_init(c.init))
        if c.init == "local" and not self.latent_tokens.is_meta:  # meta: weights come next (build_and_load)
            init_local_attention_alit(self)
        self.quantize = VectorQuantizer(c.vq_codebook_size, c.vq_token_dim, c.vq_commitment_cost,
                                        use_l2_norm=True, restart_dead_codes=c.restart_dead_codes)
        self.base_tokenizer = BaseTokenizer(c.vqgan)

    # ---- the recurrent rollout, one iteration at a time -------------------------------------------

    @property
    def vqgan_codebook(self) -> torch.Tensor:
        """(K, z_channels); detached, as the official code reads ``.weight.data`` for soft codes."""
        return self.base_tokenizer.vqgan.quantize.embedding.weight.detach()

    def latent_block(self, iteration: int) -> torch.Tensor:
        """The latents appended before ``iteration``: the same learned block + an iteration embedding."""
        return (self.latent_tokens + self.latent_token_positional_embedding) + self.timestep_embedding[iteration]

    def decoder_queries(self, batch_size: int) -> torch.Tensor:
        masks = self.decoder_mask_token[0].expand(self.config.num_image_tokens, -1)  # (N, W)
        q = torch.cat([self.decoder_class_embedding, masks])
        return (q + self.decoder_positional_embedding).expand(batch_size, -1, -1)  # (B, 1+N, W)

    def begin(self, images: torch.Tensor) -> RolloutState:
        """Encoder input for iteration 0 from images (B, 3, H, W) in [0, 1]."""
        features, gt_indices = self.base_tokenizer.encode(images)  # (B, z, g, g), (B, N)
        tokens = torch.cat([features, self.patch_embed(images)], dim=1)  # (B, W, g, g)
        tokens = F.normalize(tokens.flatten(2).transpose(1, 2), dim=-1)  # (B, N, W), unit-norm tokens
        b = tokens.shape[0]
        x = torch.cat([self.encoder_class_embedding.expand(b, 1, -1), tokens], dim=1)
        x = x + self.encoder_positional_embedding  # (B, 1+N, W)
        x = torch.cat([x, self.latent_block(0).expand(b, -1, -1)], dim=1)  # (B, 1+N+n0, W)
        return RolloutState(self.encoder_ln_pre(x), gt_indices)

    def step(self, state: RolloutState, *, decode: bool = True, decode_pixels: bool = False,
             drop_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
             ) -> tuple[dict[str, torch.Tensor] | None, RolloutState]:
        """Run one iteration. Returns its outputs (None when ``decode`` is False) and the next state.

        Without ``decode`` the latents are neither quantised nor decoded and no token halts (the
        official training loop does this at iterations that carry no loss). ``drop_mask`` (B, N) injects
        the halting mask instead of drawing it (for replaying recorded runs).
        """
        c, it = self.config, state.iteration
        if it >= c.max_rollout_iters:
            raise ValueError(f"ALIT runs at most {c.max_rollout_iters} iterations")
        n_img = c.num_image_tokens + 1
        x = self.encoder(state.x)
        latents = x[:, n_img:]  # (B, n_it, W), n_it = tokens_at(it)
        out = None
        if decode:
            factorized = self.pre_quantizer_mlp(self.encoder_ln_post(latents))  # (B, n_it, D)
            quantized, info = self.quantize(factorized.transpose(1, 2).unsqueeze(2))  # (B, D, 1, n_it)
            quantized = quantized.squeeze(2).transpose(1, 2)  # (B, n_it, D)
            logits = self.decoder(quantized, self.decoder_queries(x.shape[0]))  # (B, N, K)
            probs = logits.softmax(dim=-1)
            soft_code = torch.einsum("nlc,cd->nld", probs, self.vqgan_codebook)  # (B, N, z)
            halting_prob = probs.gather(2, state.gt_indices[..., None])[..., 0]  # (B, N)
            out = {
                "latent_tokens": latents, "image_tokens": x[:, 1:n_img],
                "factorized_latents": factorized, "quantized_latents": quantized,
                "code_indices": info["min_encoding_indices"].flatten(1), "vq_loss": info["quantizer_loss"],
                "logits": logits, "soft_code": soft_code, "halting_prob": halting_prob,
            }
            if c.dynamic_halting:
                x, out["halting_mask"] = self.halt(x, halting_prob, drop_mask, generator)
            if decode_pixels:
                out["reconstruction"] = self.decode_soft_code(soft_code)
        if it + 1 < c.max_rollout_iters:
            b = x.shape[0]
            x = self.encoder_ln_recursive(torch.cat([x, self.latent_block(it + 1).expand(b, -1, -1)], dim=1))
        return out, RolloutState(x, state.gt_indices, it + 1)

    def halt(self, x: torch.Tensor, halting_prob: torch.Tensor, drop_mask: torch.Tensor | None,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace well-predicted image tokens of x (B, 1+N+n, W) by the mask token; returns (x, mask)."""
        if drop_mask is None:
            drop_mask = torch.bernoulli(halting_prob, generator=generator)
            drop_mask = drop_mask.masked_fill(halting_prob < self.config.dynamic_halting_threshold, 0.0)
        n_img = self.config.num_image_tokens + 1
        masked = self.encoder_positional_embedding[1:] + self.encoder_mask_token[0]  # (N, W)
        image_tokens = torch.where(drop_mask[..., None].bool(), masked, x[:, 1:n_img])
        return torch.cat([x[:, :1], image_tokens, x[:, n_img:]], dim=1), drop_mask

    def decode_soft_code(self, soft_code: torch.Tensor) -> torch.Tensor:
        """(B, N, z) soft codes -> images (B, 3, H, W), not clamped."""
        g = self.config.grid_size
        code = soft_code.reshape(soft_code.shape[0], g, g, -1).permute(0, 3, 1, 2)  # (B, z, g, g)
        return self.base_tokenizer.decode(code)

    # ---- whole rollouts ----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, *, num_iters: int | None = None,
                decode_iters: Sequence[int] | None = None,
                pixel_iters: Sequence[int] | Literal["all"] = (),
                drop_masks: Sequence[torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        """Roll out ``num_iters`` iterations (default all) on images (B, 3, H, W) in [0, 1].

        ``decode_iters``: iterations whose latents are quantised, decoded and may halt tokens (default
        all; the official stage 2 decodes one sampled iteration per step). ``pixel_iters``: iterations
        also decoded to pixels (``"all"`` for every decoded one). ``drop_masks``: one (B, N) halting
        mask per decoded iteration, replacing the Bernoulli draws. ``generator``: for the Bernoulli
        draws (halting is random in eval mode too, wherever a probability passes the threshold).

        Returns a dict: ``code_targets`` (B, N) VQGAN codes, ``iterations`` (decoded iteration indices)
        and ``num_tokens`` (their 1-D token counts), and, one entry per decoded iteration:
        ``logits`` (B, N, K), ``soft_code`` (B, N, z), ``vq_loss`` (scalar), ``code_indices`` (B, n),
        ``latent_tokens`` (B, n, W) (encoder output before encoder_ln_post), ``image_tokens`` (B, N, W),
        ``factorized_latents`` / ``quantized_latents`` (B, n, D), ``halting_prob`` and ``halting_mask``
        (B, N; 1 = token replaced before the next iteration) and ``reconstruction`` (B, 3, H, W) for
        the ``pixel_iters`` (None elsewhere).
        """
        c = self.config
        num_iters = c.max_rollout_iters if num_iters is None else num_iters
        decode_iters = set(range(num_iters) if decode_iters is None else decode_iters)
        pixel_iters = decode_iters if pixel_iters == "all" else set(pixel_iters)
        state = self.begin(images)
        result: dict[str, Any] = {"code_targets": state.gt_indices, "iterations": [], "num_tokens": []}
        masks = iter(drop_masks) if drop_masks is not None else None
        for it in range(num_iters):
            decode = it in decode_iters
            mask = next(masks) if masks is not None and decode else None
            out, state = self.step(state, decode=decode, decode_pixels=it in pixel_iters, drop_mask=mask,
                                   generator=generator)
            if out is None:
                continue
            result["iterations"].append(it)
            result["num_tokens"].append(c.tokens_at(it))
            for k in _PER_ITER_KEYS:
                result.setdefault(k, []).append(out.get(k))
        return result

    @torch.no_grad()
    def reconstruct_all_iterations(self, images: torch.Tensor, generator: torch.Generator | None = None,
                                   ) -> list[torch.Tensor]:
        """Reconstructions (B, 3, H, W), unclamped, at every token count (32, 64, ..., 256)."""
        return self(images, pixel_iters="all", generator=generator)["reconstruction"]

    @torch.no_grad()
    def decode_tokens(self, code_indices: torch.Tensor) -> torch.Tensor:
        """Images from 1-D token indices (B, n) alone (n a multiple of num_init_latent_tokens)."""
        latents = self.quantize.get_codebook_entry(code_indices)  # (B, n, D), l2-normalised rows
        logits = self.decoder(latents, self.decoder_queries(latents.shape[0]))
        return self.decode_soft_code(torch.einsum("nlc,cd->nld", logits.softmax(-1), self.vqgan_codebook))

    # ---- weights -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> ALIT:
        """Build from ``folder/config.json`` and load ``model.safetensors`` or ``pytorch_model.bin`` strictly.

        config.json is our ``ALITConfig.to_dict()`` or the official constructor arguments (the
        fixtures' format). A ``pytorch_model.bin`` may be an official training checkpoint (a dict with
        ``ema``/``model``): the ``ema`` weights are used, as the official evaluation does. Keys under
        ``gan_losses.`` (stage-2 LPIPS + discriminators, unused at inference) are skipped. The weights are
        read onto ``map_location`` and the model takes them over there (it is never randomly initialised).
        """
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise MissingWeightsError("ALIT config", str(config_path),
                                      "save one with ALIT.save_pretrained or write ALITConfig.to_dict() as JSON")
        config = ALITConfig.from_dict(read_json(config_path))
        weights = weights_file(folder)
        if weights is None:
            raise MissingWeightsError(
                "ALIT", f"{folder / 'model.safetensors'} (or pytorch_model.bin)",
                "convert an official checkpoint (Dropbox links in the ALIT README) or train one; an official "
                ".pth can be used as pytorch_model.bin")
        state = read_state_dict(weights, map_location=map_location, unwrap=("ema", "model"))
        state = {k: v for k, v in state.items() if not k.startswith("gan_losses.")}
        model = build_and_load(lambda: cls(config), state, weights,
                               hint="check that config.json describes this checkpoint")
        return model.eval()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` (``ALITConfig.to_dict()``) and ``model.safetensors`` into ``folder``, atomically."""
        write_snapshot(folder, self.config.to_dict(), self.state_dict())


_PER_ITER_KEYS = ("logits", "soft_code", "vq_loss", "code_indices", "latent_tokens", "image_tokens",
                  "factorized_latents", "quantized_latents", "halting_prob", "halting_mask", "reconstruction")


def latent_distillation_loss(outputs: dict[str, Any], codebook: torch.Tensor,
                             weights: Sequence[float] = ITERATION_LOSS_WEIGHTS, code_weight: float = 1.0,
                             quantizer_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 loss of the official model: sum over decoded iterations i of
    ``weights[i] * CE(logits_i, code_targets) + MSE(codebook[targets], soft_code_i) + vq_loss_i``.

    ``code_weight`` and ``quantizer_weight`` scale the MSE and VQ terms (1 and 1 officially; the demo
    changes them, see ``TrainAlit``). The official criterion also computes a label-smoothed term but
    returns the plain cross-entropy, which is what is used here. ``codebook`` is the VQGAN codebook
    (K, z), detached.
    """
    targets = outputs["code_targets"]  # (B, N)
    target_code = codebook[targets]  # (B, N, z)
    total = torch.zeros((), device=targets.device)
    logs: dict[str, float] = {}
    for it, logits, soft_code, vq_loss in zip(outputs["iterations"], outputs["logits"], outputs["soft_code"],
                                               outputs["vq_loss"], strict=True):
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        code = (target_code - soft_code).pow(2).mean()
        total = total + weights[it] * nll + code_weight * code + quantizer_weight * vq_loss
        logs.update({f"nll_loss_{it}": nll.item(), f"code_loss_{it}": code.item(),
                     f"quantization_loss_{it}": vq_loss.item()})
    return total, logs


# ---- named configs (built by pipeline.models.registry) ------------------------------------------------
# alit_small, alit_base, alit_semilarge: the released checkpoints, on the MAGE VQGAN (256 px, f16).
# alit_demo: 64 px on vqgan_demo (f4), the same 16x16 grid and 32..256 tokens as the paper's.


def _alit_demo() -> ALITConfig:
    # The demo shares the pipeline's vqgan_demo (64 px, f=4: a 16x16 grid, MaskGIT key names), so one
    # trained demo VQGAN serves TiTok and ALIT, and the token counts are the paper's 32..256.
    # Xavier init and dead-code restarts: with the official init every image's 1-D tokens fall on the same
    # codes, and the decoder learns the same code map for all images. A position-local start, as
    # titok_demo's: without it, on the demo VQGAN, stage 1 ends with one output image for every input.
    return ALITConfig(width=64, num_layers=2, num_heads=4, image_size=64, patch_size=4, vq_codebook_size=256,
                      vq_token_dim=12, restart_dead_codes=True, init="local", vqgan=VQGAN_CONFIGS["vqgan_demo"]())


ALIT_CONFIGS: dict[str, Callable[[], ALITConfig]] = {
    # Released checkpoints (official adaptive_tokenizers/__init__.py); note that alit_small is 1024 wide.
    "alit_small": lambda: ALITConfig(width=1024, num_layers=8, num_heads=8, vqgan=_mage_vqgan()),
    "alit_base": lambda: ALITConfig(width=768, num_layers=12, num_heads=12, vqgan=_mage_vqgan()),
    "alit_semilarge": lambda: ALITConfig(width=1024, num_layers=16, num_heads=16, vqgan=_mage_vqgan()),
    "alit_demo": _alit_demo,
}
