"""CLIP and SigLIP image-text models through open_clip, built from a config name and loaded from local files.

Construction and weights are separate (as in timm): :func:`create_clip` builds a randomly initialised
model from an open_clip config name (a built-in one such as ``ViT-B-32`` or a JSON file registered with
:func:`register_config`, e.g. the demo's ``configs/clip_demo.json``); :func:`load_clip` builds one without
its random init and loads weights from a local file or folder. Nothing is ever downloaded: a pretrained
*tag* (for instance ``laion2b_s34b_b79k``) is only used to look up the preprocessing that goes with the
weights and to say where to get them, never passed to open_clip (which would download).

:class:`ClipModel` wraps the open_clip model with its tokenizer and its own preprocessing, so callers
hand it images in [0, 1] (e.g. generator outputs) and lists of strings. The preprocessing is made of
tensor operations, so gradients flow from the embeddings back to the pixels (CLIP guidance).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models import clip_towers  # noqa: F401  (registers the demo's image tower with timm)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_CONFIG = CONFIG_DIR / "clip_demo.json"

# Weight files inside a folder, in order of preference (open_clip's and the HF hub's names).
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                "pytorch_model.bin")
FOLDER_CONFIG = "open_clip_config.json"


def register_config(path: str | Path) -> str:
    """Register a JSON model config with open_clip; its registry name is the file stem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"open_clip model config {path} not found")
    cfg = json.loads(path.read_text())
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        # open_clip would skip such a file silently and fail later with "model not found".
        raise InputError(f"{path}: an open_clip config needs embed_dim, vision_cfg and text_cfg")
    if open_clip.get_model_config(path.stem) != cfg:
        open_clip.add_model_config(path)
    return path.stem


def _ensure_config(model: str, config: str | Path | None) -> None:
    if config is not None:
        if register_config(config) != model:
            raise InputError(f"config file {config} registers {Path(config).stem!r}, not {model!r}")
    elif open_clip.get_model_config(model) is None:
        if (CONFIG_DIR / f"{model}.json").is_file():
            register_config(CONFIG_DIR / f"{model}.json")
        else:
            raise InputError(f"unknown open_clip model config {model!r}: neither built into open_clip nor in "
                             f"{CONFIG_DIR}; pass its JSON file as config")


class ClipModel(nn.Module):
    """An open_clip model plus its tokenizer and differentiable preprocessing of [0, 1] images.

    ``model`` keeps open_clip's own parameter names, so ``clip.model.state_dict()`` is an open_clip
    checkpoint. SigLIP models are the same class; they differ by having a ``logit_bias``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.resize_mode: str = cfg.get("resize_mode", "shortest")
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        with torch.no_grad():
            return int(self.encode_texts([""]).shape[1])

    @property
    def is_siglip(self) -> bool:
        return getattr(self.model, "logit_bias", None) is not None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor, *, interpolation: str = "bicubic",
                   antialias: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> the model's normalised input (B, 3, h, w), differentiable.

        Resizes as the model's eval transform does (``shortest`` side then centre crop, or ``squash``)
        and normalises with the model's own mean/std. Bicubic with antialiasing is closest to open_clip's
        PIL transform; the official token-optimisation loop uses ``interpolation="bilinear",
        antialias=False`` instead. No resize happens when the size already matches.
        """
        h, w = images.shape[-2:]
        th, tw = self.image_size
        if (h, w) != (th, tw):
            if self.resize_mode == "shortest" and h != w:
                scale = max(th / h, tw / w)
                size = (max(th, round(h * scale)), max(tw, round(w * scale)))
            else:
                size = (th, tw)
            aa = antialias and interpolation in ("bilinear", "bicubic")
            images = F.interpolate(images, size=size, mode=interpolation, antialias=aa,
                                   **({} if interpolation == "nearest" else {"align_corners": False}))
            top, left = (images.shape[-2] - th) // 2, (images.shape[-1] - tw) // 2
            images = images[..., top:top + th, left:left + tw]
        return (images - self.mean) / self.std

    def encode_images(self, images: torch.Tensor, *, normalize: bool = True, **preprocess_kw: Any) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> embeddings (B, D); unit length when ``normalize``."""
        return self.model.encode_image(self.preprocess(images, **preprocess_kw), normalize=normalize)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> token ids (B, context_length) on the model's device."""
        return self.tokenizer(list(texts)).to(self.device)

    def encode_texts(self, texts: Sequence[str], *, normalize: bool = True) -> torch.Tensor:
        """Strings -> embeddings (B, D); unit length when ``normalize``."""
        return self.model.encode_text(self.tokenize(texts), normalize=normalize)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Unit image (B, D) and text (T, D) embeddings -> the model's logits (B, T).

        CLIP: ``exp(logit_scale) * cos``; SigLIP adds its ``logit_bias`` (sigmoid of it is a probability).
        """
        out = self.model.logit_scale.exp() * image_emb @ text_emb.T
        return out + self.model.logit_bias if self.is_siglip else out

    def forward(self, images: torch.Tensor, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and text embeddings of a batch of [0, 1] images and strings."""
        return self.encode_images(images), self.encode_texts(texts)


def _tokenizer_for(model: str, folder: Path | None) -> Any:
    text_cfg = (open_clip.get_model_config(model) or {}).get("text_cfg", {})
    if folder is not None and (folder / FOLDER_CONFIG).is_file():
        text_cfg = json.loads((folder / FOLDER_CONFIG).read_text())["model_cfg"].get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        # SigLIP-style tokenizers come from Hugging Face files; open_clip would download them.
        if folder is None or not (folder / "tokenizer.json").is_file() and not any(folder.glob("*.model")):
            raise MissingWeightsError(
                f"the {model} tokenizer", str(folder or "<an HF snapshot folder>"),
                f"pass the snapshot folder of {text_cfg['hf_tokenizer_name']} (it holds the tokenizer files) "
                f"as the weights path: `hf download {text_cfg['hf_tokenizer_name']} --local-dir <folder>`")
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise InputError(f"the {model} tokenizer needs the `transformers` package, which is not "
                             "installed in this environment") from None
        return open_clip.get_tokenizer(f"local-dir:{folder}")
    if folder is not None and (folder / FOLDER_CONFIG).is_file():
        return open_clip.get_tokenizer(f"local-dir:{folder}")
    return open_clip.get_tokenizer(model)


def create_clip(model: str, *, config: str | Path | None = None, tag: str | None = None) -> ClipModel:
    """A randomly initialised CLIP of open_clip config ``model`` (``config``: its JSON file, if not built in).

    ``tag`` (e.g. ``laion2b_s34b_b79k``) only selects the preprocessing of those pretrained weights.
    """
    return ClipModel(_create_net(model, config=config, tag=tag), _tokenizer_for(model, None), model)


def _create_net(model: str, *, config: str | Path | None, tag: str | None, device: str = "cpu") -> nn.Module:
    _ensure_config(model, config)
    preprocess = {k: v for k, v in open_clip.get_pretrained_cfg(model, tag).items()
                  if k in ("mean", "std", "interpolation", "resize_mode")} if tag else {}
    return open_clip.create_model(model, pretrained=None, force_preprocess_cfg=preprocess,
                                  pretrained_text=False, device=device)


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "Model initialized randomly" when it loads no weights itself; here the strict load
    that follows fills every weight, so the warning would tell the reader the opposite of what happens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip_init_warning() -> Iterator[None]:
    drop = _DropRandomInitWarning()
    logging.getLogger().addFilter(drop)  # open_clip logs through the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def _uninitialised(create: Callable[[str], nn.Module]) -> nn.Module:
    """``create(device)``'s open_clip model on the CPU without its random init: weights must be loaded next.

    Built on the meta device (no numbers drawn: 5 to 15 s for ViT-B-32 or SigLIP on a busy CPU), then
    given uninitialised CPU memory that the strict load fills. The one tensor a checkpoint does not
    hold, the text tower's causal mask (a non-persistent buffer), is rebuilt as open_clip builds it.
    """
    with torch.device("meta"), _quiet_open_clip_init_warning():
        net = create("meta")
    persistent = net.state_dict().keys()
    masks = [name for name, _ in net.named_buffers() if name not in persistent]
    if any(name.rsplit(".", 1)[-1] != "attn_mask" for name in masks):
        raise TypeError(f"{type(net).__name__} has non-persistent buffers ({', '.join(masks)}) that cannot be "
                        "rebuilt after a meta-device build")
    net = net.to_empty(device="cpu")
    for name in masks:
        owner = net.get_submodule(name.rpartition(".")[0])
        size = owner.attn_mask.shape[-1]
        owner.attn_mask = torch.full((size, size), float("-inf")).triu_(1)  # additive causal mask
    return net


def weights_hint(model: str, tag: str | None) -> str:
    """How to get the weights of ``model``/``tag`` (shown when they are missing)."""
    cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
    if cfg.get("hf_hub"):
        repo = cfg["hf_hub"].rstrip("/")
        if (open_clip.get_model_config(model) or {}).get("text_cfg", {}).get("hf_tokenizer_name"):
            return (f"download the Hugging Face repo {repo} (open_clip_pytorch_model.bin, {FOLDER_CONFIG} "
                    f"and the tokenizer files) and name the folder: `hf download {repo} --local-dir <folder>`")
        return (f"download open_clip_pytorch_model.bin from the Hugging Face repo {repo}: "
                f"`hf download {repo} open_clip_pytorch_model.bin --local-dir <folder>`")
    if cfg.get("url"):
        return f"download {cfg['url']}"
    return "train it (`python -m pipeline train_clip`) or copy an open_clip checkpoint of this config there"


def _weights_file(folder: Path) -> Path | None:
    return next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)


def load_clip(model: str, weights: str | Path, *, config: str | Path | None = None, tag: str | None = None,
              device: str | torch.device = "cpu") -> ClipModel:
    """A frozen CLIP (eval mode, no gradients on its weights) with weights from a local file or folder.

    ``weights``: a checkpoint file (``.safetensors``, or ``.bin``/``.pt`` read with ``weights_only``), or a
    folder holding one (e.g. a Hugging Face snapshot, or ``models/clip`` written by :func:`save_clip`).
    A folder's ``open_clip_config.json`` wins over ``model``'s registered config and ``tag``. A missing
    file raises :class:`MissingWeightsError` naming it and how to get it.
    """
    path = Path(weights)
    folder = path if path.is_dir() else None
    file = _weights_file(path) if folder else path
    if file is None or not file.is_file():
        expected = str(path / WEIGHT_FILES[1]) if folder else str(path)
        raise MissingWeightsError(f"CLIP model {model}" + (f" ({tag})" if tag else ""), expected,
                                  weights_hint(model, tag))
    if folder is not None and (folder / FOLDER_CONFIG).is_file():
        net = _uninitialised(lambda device: open_clip.create_model(
            f"local-dir:{folder}", pretrained_text=False, load_weights=False, device=device))
        fits = f"{folder / FOLDER_CONFIG}"
    else:
        net = _uninitialised(lambda device: _create_net(model, config=config, tag=tag, device=device))
        fits = f"open_clip config {model}"
    try:
        open_clip.load_checkpoint(net, str(file), strict=True, weights_only=True)
    except RuntimeError as err:
        raise InputError(f"{file} does not fit {fits}: {err}") from None
    clip = ClipModel(net, _tokenizer_for(model, folder), model)
    return clip.to(device).eval().requires_grad_(False)


def save_clip(clip: ClipModel, folder: str | Path) -> None:
    """Write ``open_clip_model.safetensors`` + ``open_clip_config.json`` (open_clip's ``local-dir:`` layout)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}
    save_file(state, str(folder / WEIGHT_FILES[0]))
    pp = open_clip.get_model_preprocess_cfg(clip.model)
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
    # a model built in another process (pipeline.side_by_side) arrives without its config registered here
    _ensure_config(clip.name, None)
    cfg = {"model_cfg": open_clip.get_model_config(clip.name), "preprocess_cfg": pp}
    (folder / FOLDER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
