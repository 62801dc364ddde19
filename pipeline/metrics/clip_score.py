"""CLIP score, SigLIP score and zero-shot classification with any :class:`~pipeline.models.clip.ClipModel`.

Convention: the CLIP score of an image and a text is ``100 * cos(f_image, f_text)`` on the model's
embeddings, in [-100, 100], not clamped at 0 (torchmetrics' ``CLIPScore`` clamps at 0; Hessel et al.'s
CLIPScore is ``2.5 * max(cos, 0)``). The SigLIP score is the same formula with the SigLIP model, as the
token-optimisation paper uses SigLIP as an independent judge of CLIP-optimised images. Images are in
[0, 1] or uint8, any layout :mod:`pipeline.metrics.images` accepts; they go through the model's own
preprocessing (resize + its mean/std).

Prompt templates (``"a photo of a {}."``) come from the caller (``train_clip.templates`` in params.yaml);
this module keeps no default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.metrics.images import to_float
from pipeline.models.clip import ClipModel


def cosine_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``100 * cos`` between matching rows of two embedding batches (N, D) -> (N,); symmetric in a, b."""
    return 100 * torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


@torch.no_grad()
def image_embeddings(clip: ClipModel, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Unit image embeddings (N, D) of a batch of images."""
    x = to_float(images)
    return torch.cat([clip.encode_images(b.to(clip.device)).float().cpu() for b in x.split(batch_size)])


@torch.no_grad()
def text_embeddings(clip: ClipModel, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """Unit text embeddings (T, D)."""
    texts = list(texts)
    return torch.cat([clip.encode_texts(texts[i:i + batch_size]).float().cpu()
                      for i in range(0, len(texts), batch_size)])


def clip_score(clip: ClipModel, images: torch.Tensor, texts: str | Sequence[str], *,
               batch_size: int = 256) -> torch.Tensor:
    """Per-image score ``100 * cos(image, text)`` (N,); ``texts`` is one string or one per image.

    With a SigLIP model this is the SigLIP score.
    """
    img = image_embeddings(clip, images, batch_size=batch_size)
    if isinstance(texts, str):
        txt = text_embeddings(clip, [texts]).expand_as(img)
    else:
        if len(texts) != len(img):
            raise ValueError(f"{len(img)} images but {len(texts)} texts")
        index = {t: i for i, t in enumerate(dict.fromkeys(texts))}  # class prompts repeat: embed each once
        emb = text_embeddings(clip, list(index), batch_size=batch_size)
        txt = emb[torch.tensor([index[t] for t in texts])]
    return cosine_score(img, txt)


def class_prompts(class_names: Sequence[str], template: str) -> list[str]:
    """``template.format(name)`` for each class."""
    return [template.format(name) for name in class_names]


@torch.no_grad()
def zero_shot_classifier(clip: ClipModel, class_names: Sequence[str],
                         templates: Sequence[str]) -> torch.Tensor:
    """Class weights (C, D): the renormalised mean of the unit text embeddings over the templates."""
    per_template = torch.stack([text_embeddings(clip, class_prompts(class_names, t)) for t in templates])
    return torch.nn.functional.normalize(per_template.mean(0), dim=-1)


@torch.no_grad()
def zero_shot_logits(clip: ClipModel, images: torch.Tensor, classifier: torch.Tensor, *,
                     batch_size: int = 256) -> torch.Tensor:
    """The model's logits (N, C) of images against a :func:`zero_shot_classifier` (scale and bias included)."""
    img = image_embeddings(clip, images, batch_size=batch_size)
    return clip.logits(img.to(clip.device), classifier.to(clip.device)).float().cpu()


def zero_shot_accuracy(clip: ClipModel, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                       templates: Sequence[str], *, top_k: int = 1,
                       batch_size: int = 256) -> float:
    """Top-``top_k`` zero-shot accuracy in [0, 1] of images with integer ``labels`` (N,)."""
    logits = zero_shot_logits(clip, images, zero_shot_classifier(clip, class_names, templates),
                              batch_size=batch_size)
    top = logits.topk(min(top_k, logits.shape[1]), dim=1).indices
    return (top == torch.as_tensor(labels).view(-1, 1)).any(dim=1).float().mean().item()
