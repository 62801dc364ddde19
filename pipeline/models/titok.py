"""TiTok: a ViT that turns an image into N one-dimensional tokens and back (Yu et al., 2024).

The module reproduces the official ``bytedance/1d-tokenizer`` TiTok (keys, shapes and numerics),
including its quirks, so released checkpoints load with ``strict=True``.

Public API
----------
``TiTokConfig``: image size, encoder / decoder width-depth-heads-patch, ``num_latent_tokens`` (N),
    ``token_size`` (C), ``quantize_mode`` (``"vq"`` or ``"vae"``), codebook, ``legacy`` (proxy-code
    head), ``pixel_decoder`` (legacy only: attach the MaskGIT-VQGAN pixel decoder described by
    ``vqgan``) and ``freeze_encoder`` (the official ``finetune_decoder`` behaviour: encoder and
    quantiser run without gradients and the quantiser losses are zeroed).
    ``TiTokConfig.from_official(config_dict)`` reads an official / Hugging Face ``config.json``.
``TiTok(config)``; tokens use the official "fake 2-D" layout (B, C, 1, N):

* ``encode(images [0,1] (B,3,H,W)) -> (tokens (B, C, 1, N), info)``. VQ: straight-through quantised
  tokens; ``info`` has ``min_encoding_indices`` (B, 1, N), ``latents`` (pre-quantisation encoder
  output), ``quantizer_loss`` / ``commitment_loss`` / ``codebook_loss`` and the codebook usage
  ``perplexity`` / ``usage`` / ``code_counts``. VAE: a posterior sample (``sample=False``: the mean);
  ``info`` has ``latents`` (B, 2C, 1, N), ``mean``, ``logvar``, ``std`` and ``kl`` (B, N).
* ``encode_continuous(images) -> latents`` before quantisation (VQ (B, C, 1, N); VAE (B, 2C, 1, N)).
* ``quantize(latents) -> (tokens, info)`` (the ``quantize`` submodule: ``VectorQuantizer`` or, for VAE
  models, the parameter-free ``GaussianLatent``).
* ``decoder_logits(tokens) -> (B, K_proxy, g, g)``: legacy head, logits over the proxy VQGAN codebook
  (the target of the stage-1 cross-entropy).
* ``logits_to_pixels(logits)``: softmax over the proxy codes, weighted mix of the pixel codebook rows,
  MaskGIT pixel decoder.
* ``decode(tokens) -> images`` (B, 3, H, W), not clamped. Legacy: ``logits_to_pixels(decoder_logits)``.
* ``decode_tokens(codes (B, 1, N) or (B, N)) -> images``; for VAE models ``codes`` are the continuous
  tokens.
* ``forward(images) -> (decode(encode(images)[0]), info)``.
* ``load_pixel_decoder(vqgan)``: copy a ``MaskGITVQGAN``'s decoder and codebook into
  ``pixel_decoder`` / ``pixel_quantize`` (the official stage-2 initialisation).
* ``TiTok.from_pretrained(folder, **overrides)`` / ``save_pretrained(folder)``: a snapshot folder
  (``pipeline.models.checkpoints``) whose ``config.json`` is the official nested config or ours.
``TITOK_CONFIGS``: the named configs (at the bottom of this file), built through ``pipeline.models.registry``.

Official quirks reproduced:

* Legacy encoder: the (B, N, W) latent slice is reinterpreted as (B, W, N, 1) by a plain reshape,
  without a transpose, before the 1x1 ``conv_out`` (``legacy_reshape``, by default as ``legacy``; the
  demo turns it off to keep its proxy-code head with token ``j`` = latent ``j``).
* Decoder sequence order is [class, g*g mask tokens, N latent tokens]; the learnable latent queries
  ``latent_tokens`` are a top-level parameter, outside ``encoder``.
* Non-legacy pixel head: depth-to-space with the colour channel fastest, ``(p1*p + p2)*3 + c``
  (not ``PixelShuffle``'s order), then a 3x3 ``conv_out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models.checkpoints import (
    LAYOUT,
    build_and_load,
    read_json,
    read_state_dict,
    weights_file,
    write_snapshot,
)
from pipeline.models.local_init import init_local_attention
from pipeline.models.maskgit_vqgan import VQGAN_CONFIGS, MaskGITVQGAN, VQGANConfig, VQGANDecoder, VQGANQuantizer
from pipeline.models.quantizer import GaussianLatent, VectorQuantizer
from pipeline.models.vit import Transformer, weight_init

# (width, depth, heads) of the official size names
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
HOW_TITOK = ("hf download yucornetto/tokenizer_titok_l32_imagenet --local-dir {folder}  "
             "(other released tokenizers: yucornetto/tokenizer_titok_{{b64,s128,bl64_vq8k,bl128_vq8k,"
             "sl256_vq8k,ll32_vae_c16,bl64_vae_c16,bl128_vae_c16}}_imagenet)")


@dataclass
class TiTokConfig:
    image_size: int = 256
    enc_width: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    enc_patch_size: int = 16
    dec_width: int = 1024
    dec_depth: int = 24
    dec_heads: int = 16
    dec_patch_size: int = 16
    num_latent_tokens: int = 32
    token_size: int = 12
    quantize_mode: Literal["vq", "vae"] = "vq"
    codebook_size: int = 4096
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    restart_dead_codes: bool = False  # training-time codebook restarts (see VectorQuantizer); demo only
    # "vit": the official trunc-normal(0.02); "xavier"; "local": xavier plus position-local attention
    # (pipeline.models.local_init), how the demo leaves the mean-colour saddle
    init: Literal["vit", "xavier", "local"] = "vit"
    legacy: bool = True
    # the encoder's (N, W) -> (W, N) reshape quirk; None: as ``legacy`` (every official model)
    legacy_reshape: bool | None = None
    pixel_decoder: bool = True
    freeze_encoder: bool = False
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)

    def __post_init__(self) -> None:
        if isinstance(self.vqgan, dict):
            self.vqgan = VQGANConfig.from_dict(self.vqgan)
        if self.quantize_mode not in ("vq", "vae"):
            raise ValueError(f"quantize_mode must be 'vq' or 'vae', got {self.quantize_mode!r}")
        weight_init(self.init)  # a known initialiser name
        if self.init == "local" and self.scrambles_tokens:
            raise ValueError("init='local' needs legacy_reshape=False: the legacy reshape mixes every latent "
                             "token into every output token, which undoes the position-local start")
        if self.pixel_decoder and not self.legacy:
            raise ValueError("pixel_decoder needs the legacy proxy-code head (legacy=True)")
        if self.quantize_mode == "vae" and (self.legacy or self.freeze_encoder):
            raise ValueError("VAE TiTok models are non-legacy and train their encoder (official constraint)")
        for name, patch in (("enc_patch_size", self.enc_patch_size), ("dec_patch_size", self.dec_patch_size)):
            if self.image_size % patch:
                raise ValueError(f"{name}={patch} does not divide image_size={self.image_size}")

    @property
    def scrambles_tokens(self) -> bool:
        """Whether the encoder applies the official legacy (N, W) -> (W, N) reshape quirk."""
        return self.legacy if self.legacy_reshape is None else self.legacy_reshape

    @property
    def enc_grid(self) -> int:
        return self.image_size // self.enc_patch_size

    @property
    def dec_grid(self) -> int:
        return self.image_size // self.dec_patch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vqgan"] = self.vqgan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TiTokConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TiTokConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_official(cls, config: dict, extra_sizes: dict | None = None, **overrides) -> TiTokConfig:
        """Map an official (Hugging Face ``config.json``) nested config onto ``TiTokConfig``.

        ``extra_sizes`` adds entries to the size table ({name: (width, depth, heads)} or
        {name: {"width", "num_layers", "num_heads"}}); ``overrides`` replace fields afterwards.
        """
        vq = config["model"]["vq_model"]
        sizes = dict(VIT_SIZES)
        for name, s in (extra_sizes or {}).items():
            sizes[name] = (s["width"], s["num_layers"], s["num_heads"]) if isinstance(s, dict) else tuple(s)
        for key in ("vit_enc_model_size", "vit_dec_model_size"):
            if vq[key] not in sizes:
                raise ValueError(f"unknown {key} {vq[key]!r}; known sizes: {sorted(sizes)}")
        enc, dec = sizes[vq["vit_enc_model_size"]], sizes[vq["vit_dec_model_size"]]
        mode = vq.get("quantize_mode", "vq")
        legacy = bool(vq.get("is_legacy", True))
        finetune_decoder = bool(vq.get("finetune_decoder", True))
        kwargs = dict(
            image_size=config["dataset"]["preprocessing"]["crop_size"],
            enc_width=enc[0], enc_depth=enc[1], enc_heads=enc[2], enc_patch_size=vq["vit_enc_patch_size"],
            dec_width=dec[0], dec_depth=dec[1], dec_heads=dec[2], dec_patch_size=vq["vit_dec_patch_size"],
            num_latent_tokens=vq["num_latent_tokens"], token_size=vq["token_size"], quantize_mode=mode,
            legacy=legacy, pixel_decoder=finetune_decoder, freeze_encoder=finetune_decoder,
        )
        if mode == "vq":
            kwargs.update(codebook_size=vq["codebook_size"], use_l2_norm=bool(vq.get("use_l2_norm", False)),
                          commitment_cost=vq.get("commitment_cost", 0.25))
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str | Path = "config.json", **overrides: Any) -> TiTokConfig:
        """The config of a snapshot's ``config.json``: ours or the official one; ``overrides`` replace fields.

        Ours is ``{"model_type": "titok", "config": {...TiTokConfig fields...}}`` (``save_pretrained``).
        The official one is nested, ``{"model": {"vq_model": {...}}, "dataset": {"preprocessing":
        {"crop_size": ...}}}`` as in ``yucornetto/tokenizer_titok_*_imagenet``, mapped by
        :meth:`from_official`; extra ViT size names may sit in a top-level ``"vit_sizes"`` entry
        ({name: {"width", "num_layers", "num_heads"}}). ``source`` names the file in errors.
        """
        try:
            if raw.get("model_type") == "titok":
                return cls.from_dict({**raw["config"], **overrides})
            if "model" in raw and "vq_model" in raw["model"]:
                return cls.from_official(raw, extra_sizes=raw.get("vit_sizes"), **overrides)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{source}: not a usable TiTok config: {err}") from err
        raise InputError(f"{source}: not a TiTok config (expected the official {{'model': {{'vq_model': ...}}}} "
                         "layout or {'model_type': 'titok', 'config': ...})")


class DepthToSpace(nn.Module):
    """(B, p*p*3, h, w) -> (B, 3, h*p, w*p) with channel index (p1*p + p2)*3 + c (colour fastest)."""

    def __init__(self, patch: int, channels: int = 3) -> None:
        super().__init__()
        self.patch, self.channels = patch, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p, c = self.patch, self.channels
        x = x.view(b, p, p, c, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, c, h, p1, w, p2)
        return x.reshape(b, c, h * p, w * p)


class TiTokEncoder(nn.Module):
    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, g, n = cfg.enc_width, cfg.enc_grid, cfg.num_latent_tokens
        scale = w ** -0.5
        self.patch_embed = nn.Conv2d(3, w, kernel_size=cfg.enc_patch_size, stride=cfg.enc_patch_size)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + g * g, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(n, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.enc_depth, cfg.enc_heads)
        self.ln_post = nn.LayerNorm(w)
        out = cfg.token_size * (2 if cfg.quantize_mode == "vae" else 1)
        self.conv_out = nn.Conv2d(w, out, kernel_size=1)

    def forward(self, images: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        x = self.patch_embed(images)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W), row-major over the grid
        x = torch.cat([self.class_embedding.expand(b, 1, -1), x], dim=1) + self.positional_embedding
        latents = (latent_tokens + self.latent_token_positional_embedding).expand(b, -1, -1)  # (B, N, W)
        x = torch.cat([x, latents], dim=1)  # (B, 1 + g*g + N, W)
        x = self.transformer(self.ln_pre(x))
        n = latent_tokens.shape[0]
        x = self.ln_post(x[:, -n:])  # (B, N, W)
        if self.cfg.scrambles_tokens:
            x = x.reshape(b, -1, n, 1)  # official quirk: reinterpret (N, W) as (W, N), no transpose
        else:
            x = x.transpose(1, 2).unsqueeze(-1)  # (B, W, N, 1)
        x = self.conv_out(x)  # (B, C', N, 1)
        return x.reshape(b, -1, 1, n)  # (B, C', 1, N)


class TiTokDecoder(nn.Module):
    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, g, n, p = cfg.dec_width, cfg.dec_grid, cfg.num_latent_tokens, cfg.dec_patch_size
        scale = w ** -0.5
        self.decoder_embed = nn.Linear(cfg.token_size, w)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + g * g, w))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(n, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.dec_depth, cfg.dec_heads)
        self.ln_post = nn.LayerNorm(w)
        if cfg.legacy:  # logits over the proxy VQGAN codebook at every grid position
            self.ffn = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, cfg.vqgan.codebook_size, 1))
            self.conv_out = nn.Identity()
        else:  # RGB patches
            self.ffn = nn.Sequential(nn.Conv2d(w, p * p * 3, 1), DepthToSpace(p))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, c, _, n = tokens.shape
        g = self.cfg.dec_grid
        x = tokens.reshape(b, c, n).transpose(1, 2)  # (B, N, C)
        x = self.decoder_embed(x) + self.latent_token_positional_embedding[:n]  # (B, N, Wd)
        queries = torch.cat([self.class_embedding.expand(b, 1, -1), self.mask_token.expand(b, g * g, -1)], dim=1)
        queries = queries + self.positional_embedding  # (B, 1 + g*g, Wd)
        x = torch.cat([queries, x], dim=1)  # (B, 1 + g*g + N, Wd)
        x = self.transformer(self.ln_pre(x))
        x = self.ln_post(x[:, 1:1 + g * g])  # (B, g*g, Wd)
        x = x.transpose(1, 2).reshape(b, -1, g, g)  # (B, Wd, g, g)
        return self.conv_out(self.ffn(x))  # legacy (B, K_proxy, g, g); else (B, 3, H, W)


class TiTok(nn.Module):
    def __init__(self, config: TiTokConfig) -> None:
        super().__init__()
        self.config = cfg = config
        scale = cfg.enc_width ** -0.5
        self.latent_tokens = nn.Parameter(scale * torch.randn(cfg.num_latent_tokens, cfg.enc_width))
        self.encoder = TiTokEncoder(cfg)
        self.decoder = TiTokDecoder(cfg)
        self.encoder.apply(weight_init(cfg.init))
        self.decoder.apply(weight_init(cfg.init))
        if cfg.init == "local" and not self.latent_tokens.is_meta:  # meta: weights come next (build_and_load)
            init_local_attention(self)
        if cfg.quantize_mode == "vq":
            self.quantize = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.commitment_cost,
                                            cfg.use_l2_norm, cfg.restart_dead_codes)
        else:  # parameter-free: a VAE checkpoint has no quantize.* keys
            self.quantize = GaussianLatent()
        if cfg.pixel_decoder:
            v = cfg.vqgan
            self.pixel_quantize = VQGANQuantizer(v.codebook_size, v.z_channels, v.commitment_cost)
            self.pixel_decoder = VQGANDecoder(v)

    # -- encoder side -------------------------------------------------------------------------
    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images, self.latent_tokens)  # (B, C or 2C, 1, N)

    def encode(self, images: torch.Tensor, sample: bool = True,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        kwargs = {"sample": sample, "generator": generator} if self.config.quantize_mode == "vae" else {}
        if self.config.freeze_encoder:  # official finetune_decoder: encoder and codebook stay fixed
            with torch.no_grad():
                latents = self.encode_continuous(images)
                tokens, info = self.quantize(latents)
            for key in ("quantizer_loss", "commitment_loss", "codebook_loss"):
                info[key] = info[key] * 0.0
        else:
            latents = self.encode_continuous(images)
            tokens, info = self.quantize(latents, **kwargs)
        info["latents"] = latents
        return tokens, info

    # -- decoder side -------------------------------------------------------------------------
    def decoder_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.config.legacy:
            raise ValueError("decoder_logits needs the legacy proxy-code head (config.legacy=True)")
        return self.decoder(tokens)  # (B, K_proxy, g, g)

    def logits_to_pixels(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.config.pixel_decoder:
            raise ValueError("this TiTok has no pixel decoder (config.pixel_decoder=False): decode the "
                             "argmax proxy codes with the VQGAN, or attach one with load_pixel_decoder(vqgan)")
        probs = logits.softmax(dim=1)  # (B, K_proxy, g, g)
        soft = torch.einsum("nchw,cd->ndhw", probs, self.pixel_quantize.embedding.weight)  # (B, D, g, g)
        return self.pixel_decoder(soft)  # (B, 3, H, W)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.decoder(tokens)
        return self.logits_to_pixels(out) if self.config.legacy else out

    def decode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        if self.config.quantize_mode == "vae":
            return self.decode(codes)
        if codes.dim() == 3:
            codes = codes.squeeze(1)  # (B, N)
        b, n = codes.shape
        tokens = self.quantize.get_codebook_entry(codes)  # (B, N, C)
        return self.decode(tokens.transpose(1, 2).reshape(b, -1, 1, n))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        tokens, info = self.encode(images)
        return self.decode(tokens), info

    # -- weights ------------------------------------------------------------------------------
    @torch.no_grad()
    def load_pixel_decoder(self, vqgan: MaskGITVQGAN) -> None:
        self.pixel_decoder.load_state_dict(vqgan.decoder.state_dict())
        self.pixel_quantize.embedding.load_state_dict(vqgan.quantize.embedding.state_dict())  # no usage EMA

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides: Any) -> TiTok:
        """Build from ``folder/config.json`` (see :meth:`TiTokConfig.from_json`), load the weights strictly.

        State-dict keys are the official ones, so a released snapshot loads without any key mapping.
        """
        folder = Path(folder)
        how = HOW_TITOK.format(folder=folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise MissingWeightsError("TiTok tokenizer", f"{config_path} (snapshot layout: {LAYOUT})", how)
        weights = weights_file(folder)
        if weights is None:
            raise MissingWeightsError("TiTok tokenizer", f"{folder}/model.safetensors or pytorch_model.bin "
                                      f"(snapshot layout: {LAYOUT})", how)
        config = TiTokConfig.from_json(read_json(config_path), config_path, **overrides)
        model = build_and_load(lambda: cls(config), read_state_dict(weights), weights,
                               hint="check that config.json describes this checkpoint (sizes, token count, "
                                    "codebook, is_legacy / finetune_decoder / quantize_mode)")
        return model.eval()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` (ours) and ``model.safetensors`` into ``folder``, each atomically."""
        write_snapshot(folder, {"model_type": "titok", "config": self.config.to_dict()}, self.state_dict())


# ---- named configs (built by pipeline.models.registry) ------------------------------------------------
# titok_s128, titok_b64, titok_l32: the released two-stage tokenizers (legacy proxy-code head + MaskGIT-VQGAN
#     pixel decoder; 83.67M / 204.81M / 641.05M parameters with the pixel decoder).
# titok_bl64_vq8k, titok_bl128_vq8k, titok_sl256_vq8k: single-stage VQ, RGB head.
# titok_ll32_vae, titok_bl64_vae, titok_bl128_vae: single-stage VAE (16 channels), RGB head.
# titok_demo: a tiny 32-token TiTok for 64x64 images with the legacy proxy-code head, whose pixel decoder and
#     proxy codebook are vqgan_demo's (decoder grid 16x16 = the VQGAN grid); it starts position-local
#     (init="local") and keeps token j = latent j (legacy_reshape=False).


def _vit(prefix: str, size: str) -> dict[str, int]:
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


def _titok_demo() -> TiTokConfig:
    # Width 96 x 3 layers: a stage-1 step costs ~0.9 GFLOP per image, so the demo trains in minutes on CPU.
    # Dead-code restarts: with the official codebook, a few hundred steps leave every image with the same
    # 32 codes. init="local" (pipeline.models.local_init): from xavier or the official init the model
    # stays where every token carries the image's mean colour; the local start needs token j = latent j,
    # hence legacy_reshape=False (the proxy-code head and pixel decoder stay the legacy ones).
    return TiTokConfig(image_size=64, enc_width=96, enc_depth=3, enc_heads=4, enc_patch_size=8,
                       dec_width=96, dec_depth=3, dec_heads=4, dec_patch_size=4, num_latent_tokens=32,
                       token_size=12, codebook_size=256, use_l2_norm=True, restart_dead_codes=True,
                       init="local", legacy=True, legacy_reshape=False, pixel_decoder=True,
                       vqgan=VQGAN_CONFIGS["vqgan_demo"]())


TITOK_CONFIGS: dict[str, Callable[[], TiTokConfig]] = {
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
}
