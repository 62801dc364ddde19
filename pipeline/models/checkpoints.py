"""Loading and saving TiTok / MaskGIT-VQGAN weights from local Hugging Face snapshot folders.

Construction and weights are separate: ``build_model`` (registry) or ``TiTok(config)`` builds a
randomly initialised model; the functions here build it from a folder's ``config.json`` and fill it
strictly from its weights file. Nothing is downloaded.

Expected layout of a snapshot folder::

    <folder>/config.json
    <folder>/model.safetensors      (preferred)  or  <folder>/pytorch_model.bin

``pytorch_model.bin`` is read with ``torch.load(weights_only=True)``: no arbitrary unpickling.

``config.json`` may be

* the official TiTok config (``{"model": {"vq_model": {...}}, "dataset": {"preprocessing":
  {"crop_size": ...}}}``, as in ``yucornetto/tokenizer_titok_*_imagenet``), mapped by
  ``TiTokConfig.from_official``; extra ViT size names may be given in an optional top-level
  ``"vit_sizes"`` entry ({name: {"width", "num_layers", "num_heads"}});
* the official-style MaskGIT-VQGAN description ``{"decoder_encoder_config": {...}, "quantizer":
  {"num_embeddings", "embedding_dim", "commitment_cost"}}``;
* our own format written by ``save_pretrained``: ``{"model_type": "titok" | "maskgit_vqgan",
  "config": {...dataclass fields...}}``.

The released MaskGIT-VQGAN (``fun-research/TiTok``, file ``maskgit-vqgan-imagenet-f16-256.bin``)
comes without a config: ``load_vqgan`` accepts the path of that file (or a folder holding only a
weights file) and then uses the official architecture ``VQGANConfig()``.

Key mapping: none. Official state-dict keys are our keys (the modules are written to produce
them); a checkpoint must match the model exactly (``strict``), and the error lists missing and
unexpected keys and every shape mismatch as ``key: expected (...), found (...)``.

Public API: ``load_titok(folder, **overrides)``, ``load_vqgan(path, **overrides)``,
``save_pretrained(model, folder)``, ``read_state_dict(path)``,
``load_state_dict_strict(model, state_dict, source)``.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models.maskgit_vqgan import MaskGITVQGAN, VQGANConfig
from pipeline.models.titok import TiTok, TiTokConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LAYOUT = "config.json + model.safetensors (or pytorch_model.bin)"
HOW_TITOK = ("hf download yucornetto/tokenizer_titok_l32_imagenet --local-dir {folder}  "
             "(other released tokenizers: yucornetto/tokenizer_titok_{{b64,s128,bl64_vq8k,bl128_vq8k,"
             "sl256_vq8k,ll32_vae_c16,bl64_vae_c16,bl128_vae_c16}}_imagenet)")
HOW_VQGAN = "hf download fun-research/TiTok maskgit-vqgan-imagenet-f16-256.bin --local-dir {folder}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    from safetensors import SafetensorError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, SafetensorError) as err:
        raise InputError(f"cannot read weights file {path}: {err}\n  expected a safetensors file or a "
                         "torch state dict loadable with torch.load(weights_only=True)") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a flat state dict of tensors")
    return state


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(strict=True)`` with an error that lists every offending key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: expected {tuple(v.shape)}, found {tuple(state_dict[k].shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f"weights in {source} do not fit {type(model).__name__}"]
        for title, keys in (("shape mismatches", mismatched), ("missing keys", missing),
                            ("unexpected keys", unexpected)):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {title} ({len(keys)}):\n    " + "\n    ".join(shown))
        lines.append("  check that config.json describes this checkpoint (for TiTok: sizes, token count, "
                     "codebook, is_legacy / finetune_decoder / quantize_mode)")
        raise InputError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _weights_in(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from err


def _titok_config(raw: dict, path: Path, overrides: dict) -> TiTokConfig:
    try:
        if raw.get("model_type") == "titok":
            return TiTokConfig.from_dict({**raw["config"], **overrides})
        if "model" in raw and "vq_model" in raw["model"]:
            return TiTokConfig.from_official(raw, extra_sizes=raw.get("vit_sizes"), **overrides)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a usable TiTok config: {err}") from err
    raise InputError(f"{path}: not a TiTok config (expected the official {{'model': {{'vq_model': ...}}}} "
                     "layout or {'model_type': 'titok', 'config': ...})")


def load_titok(folder, **overrides) -> TiTok:
    """Build a ``TiTok`` from ``folder/config.json`` and load its weights strictly."""
    folder = Path(folder)
    how = HOW_TITOK.format(folder=folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingWeightsError("TiTok tokenizer", f"{config_path} (snapshot layout: {LAYOUT})", how)
    weights = _weights_in(folder)
    if weights is None:
        raise MissingWeightsError("TiTok tokenizer", f"{folder}/model.safetensors or pytorch_model.bin "
                                  f"(snapshot layout: {LAYOUT})", how)
    config = _titok_config(_read_json(config_path), config_path, overrides)
    model = TiTok(config)
    load_state_dict_strict(model, read_state_dict(weights), str(weights))
    return model.eval()


def _vqgan_config(raw: dict, path: Path) -> VQGANConfig:
    try:
        if raw.get("model_type") == "maskgit_vqgan":
            return VQGANConfig(**raw["config"])
        if "decoder_encoder_config" in raw:
            d, q = raw["decoder_encoder_config"], raw.get("quantizer", {})
            if d.get("num_resolutions", len(d["channel_mult"])) != len(d["channel_mult"]):
                raise ValueError("num_resolutions differs from len(channel_mult)")
            return VQGANConfig(in_channels=d.get("num_channels", 3), ch=d["hidden_channels"],
                               ch_mult=tuple(d["channel_mult"]), num_res_blocks=d["num_res_blocks"],
                               z_channels=d["z_channels"], codebook_size=q.get("num_embeddings", 1024),
                               commitment_cost=q.get("commitment_cost", 0.25),
                               image_size=d.get("resolution", 256))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a usable MaskGIT-VQGAN config: {err}") from err
    raise InputError(f"{path}: not a MaskGIT-VQGAN config")


def load_vqgan(path, **overrides) -> MaskGITVQGAN:
    """Build a ``MaskGITVQGAN`` from a snapshot folder or a bare weights file and load it strictly."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    how = HOW_VQGAN.format(folder=folder)
    if path.is_file():
        weights = path
    elif path.is_dir():
        weights = _weights_in(path)
        if weights is None:
            bins = sorted(path.glob("*.bin")) + sorted(path.glob("*.safetensors"))
            weights = bins[0] if len(bins) == 1 else None
    else:
        weights = None
    if weights is None:
        raise MissingWeightsError("MaskGIT-VQGAN", f"{path} ({LAYOUT}; or the released "
                                  "maskgit-vqgan-imagenet-f16-256.bin file)", how)
    config_path = folder / "config.json"
    config = _vqgan_config(_read_json(config_path), config_path) if config_path.is_file() else VQGANConfig()
    config = replace(config, **overrides)
    model = MaskGITVQGAN(config)
    load_state_dict_strict(model, read_state_dict(weights), str(weights))
    return model.eval()


def save_pretrained(model: TiTok | MaskGITVQGAN, folder) -> None:
    """Write ``config.json`` (our format) and ``model.safetensors`` atomically into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_type = "titok" if isinstance(model, TiTok) else "maskgit_vqgan"
    config = {"model_type": model_type, "config": model.config.to_dict()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, write in (("model.safetensors", lambda p: save_file(state, str(p))),
                        ("config.json", lambda p: p.write_text(json.dumps(config, indent=1) + "\n"))):
        tmp = folder / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, folder / name)
