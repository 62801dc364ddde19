"""Token manipulation (token-opt, Sec. 3): which token positions carry which global attributes.

A 1D tokenizer with few tokens has no spatial layout to fall back on, so a single token *position* can
come to carry a global attribute of the image (brightness, blur, lighting). This module measures that
in three steps, on any TiTok (ours or an official checkpoint):

1. **Attributes.** One scalar per image and attribute (:func:`attribute_table`). A name is looked up
   first in the data's recorded factors (the demo generator's ground truth: ``brightness``, ``blur``,
   ``color_index``, ``object_count``, ...), then among the image statistics computed from the pixels
   (``IMAGE_MEASURES``: ``brightness``, ``sharpness``, ``saturation``, ``colour_temperature``), then
   among the class-derived attributes: ``class`` (the label) and ``animal`` (the class's WordNet id
   sorts before ``FIRST_NON_ANIMAL_WNID``: ImageNet-1k labels 0-397).

2. **Position analysis** (:func:`position_scores`). Images are split into groups by the attribute
   (quantile bins of a continuous attribute, one group per value of a categorical one or of one with
   at most ``bins`` distinct values). For every token position:

   * ``f_ratio``: the between-group / within-group variance ratio of the pre-quantisation token (as
     the quantiser sees it: l2-normalised for l2-normalised codebooks; the posterior mean for VAE
     models), the sums of squares summed over the token's channels before the ratio is taken (a
     one-way ANOVA F statistic on the token vector);
   * ``mutual_information``: the mutual information (nats) between the position's code index and the
     group, plug-in estimate minus the Miller-Madow bias ``(cells_xy - cells_x - cells_y + 1) / 2M``,
     which otherwise favours positions whose codes are spread over more entries (VQ tokenizers only).

   Positions are ranked per attribute by one of the two (``rank_by``).

3. **Editing.** :func:`copy_positions` pastes the tokens of a reference image at chosen positions into
   a target's sequence, :func:`substitute` puts one code at one position; :func:`decode` renders the
   result. :func:`edit_effects` measures, over target/reference pairs drawn from opposite ends of the
   attribute's range (lowest vs highest group, each direction equally often), the change of the
   attribute measured on the edited image relative to the target's reconstruction, signed toward the
   reference and in units of the measure's standard deviation over the reconstructed image set:

       effect = (m(edit) - m(recon target)) * sign(m(recon reference) - m(recon target)) / sd(m)

   once copying the top-ranked position(s) and once copying as many random positions drawn from the
   remaining ones, with percentile-bootstrap 95 % intervals (:func:`bootstrap_ci`) and the paired
   difference. An attribute is measured on an edited image through ``MEASURED_BY`` (demo ``blur`` is
   measured as sharpness, which the signed effect makes direction-free; the demo's ``color_index`` as
   colour temperature); attributes without an image measure (object count, class) get a position
   ranking but no edit effect.

Tokens use TiTok's layout: pre-quantisation latents (B, C, 1, N); codes (B, N) int64 for VQ models;
for VAE models the "codes" are the continuous tokens (B, C, 1, N), so every edit acts on the last dim.

Public API: ``IMAGE_MEASURES``, ``MEASURED_BY``, ``FIRST_NON_ANIMAL_WNID``, ``Attribute``,
``attribute_table``, ``available_attributes``, ``measure``, ``Encoded``, ``to_model_input``,
``encode``, ``decode``, ``group_labels``, ``f_ratio``, ``code_mutual_information``,
``position_scores``, ``rank_positions``, ``check_positions``, ``copy_positions``, ``substitute``,
``contrast_pairs``, ``bootstrap_ci``, ``Interval``, ``edit_effects``, ``plot_heatmap``,
``edit_grid`` (the edit figure of one attribute), ``plot_edit_grid``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from pipeline.data import transforms
from pipeline.metrics import image_stats


def _log_sharpness(images: torch.Tensor) -> torch.Tensor:
    # the Laplacian variance spans orders of magnitude between blurred and sharp images; its log is
    # what differences and standard deviations are taken of
    return torch.log(image_stats.sharpness(images) + 1e-8)


IMAGE_MEASURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "brightness": image_stats.mean_brightness,
    "sharpness": _log_sharpness,
    "saturation": image_stats.saturation,
    "colour_temperature": image_stats.colour_temperature,
}
# Which image measure reads an attribute off a decoded image (None: not measurable on pixels).
MEASURED_BY: dict[str, str | None] = {
    **{name: name for name in IMAGE_MEASURES},
    "blur": "sharpness",
    # the demo's object colour, read as warm vs cool (R - B): its lowest and highest groups, red and
    # white, differ there; the colour index has no order of its own to measure
    "color_index": "colour_temperature",
    "animal": None,
    "class": None,
}
# WordNet: in the standard ImageNet-1k order (sorted synset ids) labels 0-397 are the descendants of
# animal.n.01 (n00015388), from tench (0) on; 398 (abacus, n02666196) on are not. The test is on the
# synset id, not the label: with a class subset (prepare.imagenet.class_subset, a partial folder) the
# labels index the prepared classes, not the 1000, and label 5 may well be a car.
FIRST_NON_ANIMAL_WNID = "n02666196"
CATEGORICAL = {"class", "label", "animal", "color_index", "shape", "color", "texture", "palette", "style", "size_name"}


# ----------------------------------------------------------------------------- attributes
@dataclass(frozen=True)
class Attribute:
    """One scalar per image; ``categorical`` values are group ids, others are binned by quantile."""

    name: str
    values: np.ndarray  # (M,) float64
    categorical: bool
    source: str  # "recorded", "image" or "class"

    @property
    def measure(self) -> str | None:
        return MEASURED_BY.get(self.name)


def measure(name: str, images: torch.Tensor) -> np.ndarray:
    """Image measure ``name`` of images (any layout ``pipeline.metrics.images`` accepts) -> (M,)."""
    return IMAGE_MEASURES[name](images).double().numpy()


def _recorded(name: str, meta: Sequence[dict]) -> np.ndarray | None:
    if not meta or any(name not in m for m in meta):
        return None
    raw = [m[name] for m in meta]
    if all(isinstance(v, int | float | bool | np.number) for v in raw):
        return np.asarray(raw, dtype=np.float64)
    # strings (e.g. the demo's ``texture``): one id per distinct value, in sorted order
    ids = {v: i for i, v in enumerate(sorted({str(v) for v in raw}))}
    return np.asarray([ids[str(v)] for v in raw], dtype=np.float64)


def available_attributes(meta: Sequence[dict], wnids: Sequence[str] | None) -> list[str]:
    """Every attribute name :func:`attribute_table` can resolve for this data."""
    recorded = sorted(set.intersection(*(set(m) for m in meta))) if meta else []
    return [*recorded, *IMAGE_MEASURES, "class", *(["animal"] if wnids is not None else [])]


def attribute_table(names: Sequence[str], images: torch.Tensor, labels: np.ndarray, meta: Sequence[dict],
                    wnids: Sequence[str] | None) -> list[Attribute]:
    """Resolve attribute ``names`` for a set of images: recorded factor, image measure, then class.

    ``images`` uint8 (M, H, W, 3) or any layout the image metrics take; ``labels`` (M,) index
    ``wnids``, the ImageNet synset id of each class (needed by ``animal``; None for other data).
    Raises ``ValueError`` naming the unknown attribute and the available ones.
    """
    out = []
    for name in names:
        recorded = _recorded(name, meta)
        if recorded is not None:
            out.append(Attribute(name, recorded, name in CATEGORICAL, "recorded"))
        elif name in IMAGE_MEASURES:
            out.append(Attribute(name, measure(name, images), False, "image"))
        elif name == "class":
            out.append(Attribute(name, np.asarray(labels, dtype=np.float64), True, "class"))
        elif name == "animal" and wnids is not None:
            animal = np.asarray([w < FIRST_NON_ANIMAL_WNID for w in wnids])[np.asarray(labels, dtype=np.int64)]
            out.append(Attribute(name, animal.astype(np.float64), True, "class"))
        else:
            known = ", ".join(available_attributes(meta, wnids))
            raise ValueError(f"unknown attribute {name!r} for this data; available: {known}")
    return out


# ----------------------------------------------------------------------------- tokenizer access
@dataclass
class Encoded:
    """A tokenised image set: what the position analysis reads and what the edits act on."""

    latents: np.ndarray  # (M, C, N) float64: pre-quantisation tokens (l2-normalised if the codebook is)
    codes: torch.Tensor  # (M, N) int64 (VQ) or (M, C, 1, N) float (VAE): what edits act on
    is_vq: bool

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[-1]


def to_model_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (M, H, W, 3) or float (M, 3, H, W) images -> float (M, 3, size, size) in [0, 1], resized bicubic
    (:func:`pipeline.data.transforms.to_model_input`; token optimisation resizes bilinear)."""
    return transforms.to_model_input(images, size, mode="bicubic")


@torch.no_grad()
def encode(model: Any, images: torch.Tensor, batch_size: int = 64) -> Encoded:
    """Tokenise uint8 (M, H, W, 3) or float [0, 1] (M, 3, H, W) images with a TiTok, resized to its size."""
    device = next(model.parameters()).device
    size = model.config.image_size
    is_vq = model.config.quantize_mode == "vq"
    latents, codes = [], []
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i:i + batch_size], size).to(device)
        z = model.encode_continuous(x)  # (B, C', 1, N)
        tokens, info = model.quantize(z) if is_vq else model.quantize(z, sample=False)  # VAE: posterior mean
        if is_vq:
            # the token as the quantiser compares it to the codebook: its norm is discarded there
            seen = F.normalize(z, dim=1) if getattr(model.config, "use_l2_norm", False) else z
            latents.append(seen[:, :, 0].double().cpu())
            codes.append(info["min_encoding_indices"].reshape(len(x), -1).cpu())  # (B, N)
        else:
            latents.append(info["mean"][:, :, 0].double().cpu())
            codes.append(tokens.float().cpu())  # (B, C, 1, N)
    return Encoded(torch.cat(latents).numpy(), torch.cat(codes), is_vq)


@torch.no_grad()
def decode(model: Any, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Codes (M, N) (VQ) or tokens (M, C, 1, N) (VAE) -> images float (M, 3, H, W) in [0, 1] on the CPU."""
    device = next(model.parameters()).device
    out = [model.decode_tokens(codes[i:i + batch_size].to(device)).clamp(0, 1).float().cpu()
           for i in range(0, len(codes), batch_size)]
    return torch.cat(out)


# ----------------------------------------------------------------------------- position analysis
def group_labels(attribute: Attribute, bins: int) -> np.ndarray:
    """Group id per image (M,) int64: quantile bins 0..bins-1 (ordered), or one group per value."""
    v = attribute.values
    values = np.unique(v)
    if attribute.categorical or len(values) <= bins:
        return np.searchsorted(values, v).astype(np.int64)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, v, side="right").astype(np.int64)


def f_ratio(latents: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Between/within-group variance ratio per position, sums of squares summed over channels.

    ``latents`` (M, C, N), ``groups`` (M,) -> (N,). With G groups,
    ``F = (SSB / (G - 1)) / (SSW / (M - G))``; 0 where there is a single group.
    """
    ids, g = np.unique(groups, return_inverse=True)
    m, k = len(groups), len(ids)
    if k < 2 or m <= k:
        return np.zeros(latents.shape[-1])
    counts = np.bincount(g, minlength=k).astype(np.float64)  # (G,)
    onehot = np.eye(k)[g]  # (M, G)
    means = np.einsum("mg,mcn->gcn", onehot, latents) / counts[:, None, None]  # (G, C, N)
    grand = latents.mean(axis=0)  # (C, N)
    ssb = np.einsum("g,gcn->n", counts, (means - grand) ** 2)  # (N,)
    ssw = ((latents - means[g]) ** 2).sum(axis=(0, 1))  # (N,)
    return (ssb / (k - 1)) / np.maximum(ssw / (m - k), 1e-300)


def code_mutual_information(codes: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Miller-Madow corrected mutual information (nats) between each position's code and the group.

    ``codes`` (M, N) int, ``groups`` (M,) -> (N,).
    """
    m = len(groups)
    _, g = np.unique(groups, return_inverse=True)
    out = np.zeros(codes.shape[1])
    for n in range(codes.shape[1]):
        _, c = np.unique(codes[:, n], return_inverse=True)
        joint = np.zeros((c.max() + 1, g.max() + 1))
        np.add.at(joint, (c, g), 1.0)
        p = joint / m
        pc, pg = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
        nz = p > 0
        mi = float((p[nz] * np.log(p[nz] / (pc @ pg)[nz])).sum())
        bias = (nz.sum() - (pc > 0).sum() - (pg > 0).sum() + 1) / (2 * m)
        out[n] = mi - bias
    return out


def position_scores(encoded: Encoded, attributes: Sequence[Attribute], bins: int) -> dict[str, dict]:
    """``{attribute: {"f_ratio": (N,), "mutual_information": (N,) or None}}`` for every attribute."""
    codes = encoded.codes.numpy() if encoded.is_vq else None
    scores = {}
    for attr in attributes:
        groups = group_labels(attr, bins)
        scores[attr.name] = {
            "f_ratio": f_ratio(encoded.latents, groups),
            "mutual_information": code_mutual_information(codes, groups) if codes is not None else None,
        }
    return scores


def rank_positions(score: np.ndarray) -> list[int]:
    """Positions from the highest score down (ties by lower position)."""
    return [int(i) for i in np.argsort(-np.asarray(score), kind="stable")]


# ----------------------------------------------------------------------------- editing
def check_positions(positions: Sequence[int], num_tokens: int, what: str = "positions") -> list[int]:
    """Validate token positions: integers in [0, num_tokens), no repeats, at least one."""
    positions = list(positions)
    if not positions:
        raise ValueError(f"{what}: no token position given (valid: 0..{num_tokens - 1})")
    bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, int | np.integer)
           or not 0 <= p < num_tokens]
    if bad:
        raise ValueError(f"{what}: {bad} out of range: this tokenizer has {num_tokens} token positions "
                         f"(valid: 0..{num_tokens - 1})")
    if len(set(positions)) != len(positions):
        raise ValueError(f"{what}: repeated position in {positions}")
    return [int(p) for p in positions]


def copy_positions(target: torch.Tensor, reference: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """The target's codes with the reference's at ``positions`` (last dim); shapes must match."""
    if target.shape != reference.shape:
        raise ValueError(f"target {tuple(target.shape)} and reference {tuple(reference.shape)} differ in shape")
    idx = check_positions(positions, target.shape[-1])
    out = target.clone()
    out[..., idx] = reference[..., idx]
    return out


def substitute(codes: torch.Tensor, position: int, code: int | torch.Tensor) -> torch.Tensor:
    """Codes (B, N) with ``code`` (an index, or per-image indices (B,)) at ``position``."""
    (position,) = check_positions([position], codes.shape[-1], "position")
    out = codes.clone()
    out[..., position] = torch.as_tensor(code, dtype=codes.dtype)
    return out


def contrast_pairs(groups: np.ndarray, num_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(P, 2) (target, reference) indices from the lowest and highest group, each way round half the time."""
    low, high = np.flatnonzero(groups == groups.min()), np.flatnonzero(groups == groups.max())
    if groups.min() == groups.max():
        raise ValueError("the attribute takes a single value on these images: no contrasting pairs")
    a, b = rng.choice(low, num_pairs), rng.choice(high, num_pairs)
    flip = rng.random(num_pairs) < 0.5
    return np.stack([np.where(flip, b, a), np.where(flip, a, b)], axis=1)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}


def bootstrap_ci(values: np.ndarray, num_samples: int, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap interval at ``level`` (``scipy.stats.bootstrap``)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap_ci: no values")
    if len(values) == 1:  # scipy refuses one sample; its bootstrap distribution is the value itself
        return Interval(float(values[0]), float(values[0]), float(values[0]))
    res = stats.bootstrap((values,), np.mean, n_resamples=num_samples, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))
    return Interval(float(values.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high))


def edit_effects(model: Any, encoded: Encoded, attribute: Attribute, ranking: Sequence[int], *, top_k: int,
                 groups: np.ndarray, recon_measure: np.ndarray, num_pairs: int, bootstrap_samples: int,
                 seed: int, batch_size: int = 64) -> dict[str, Any]:
    """Top-ranked vs random position copy-paste effect on ``attribute`` over contrasting pairs.

    ``recon_measure`` (M,): the attribute's image measure on every image's reconstruction.
    Returns the per-pair effects, their bootstrap intervals and the verdict (top interval entirely
    above the random one).
    """
    n = encoded.num_tokens
    top = check_positions(list(ranking[:top_k]), n, "top positions")
    rest = np.setdiff1d(np.arange(n), top)
    if len(rest) < top_k:
        raise ValueError(f"top_k={top_k} leaves fewer than {top_k} other positions to draw random ones from")
    rng = np.random.default_rng(seed)
    pairs = contrast_pairs(groups, num_pairs, rng)  # (P, 2)
    random_positions = np.stack([rng.choice(rest, top_k, replace=False) for _ in range(num_pairs)])  # (P, k)
    target, reference = encoded.codes[pairs[:, 0]], encoded.codes[pairs[:, 1]]
    edited_top = copy_positions(target, reference, top)
    edited_random = target.clone()
    for i, pos in enumerate(random_positions):
        edited_random[i] = copy_positions(target[i:i + 1], reference[i:i + 1], pos.tolist())[0]
    m_top = measure(attribute.measure, decode(model, edited_top, batch_size))
    m_random = measure(attribute.measure, decode(model, edited_random, batch_size))
    m_target, m_reference = recon_measure[pairs[:, 0]], recon_measure[pairs[:, 1]]
    scale = float(np.std(recon_measure)) or 1.0
    direction = np.sign(m_reference - m_target)
    effect_top = (m_top - m_target) * direction / scale
    effect_random = (m_random - m_target) * direction / scale
    top_ci = bootstrap_ci(effect_top, bootstrap_samples, seed)
    random_ci = bootstrap_ci(effect_random, bootstrap_samples, seed + 1)
    return {
        "measure": attribute.measure,
        "positions": top,
        "num_pairs": int(num_pairs),
        "scale": scale,
        "mean_gap": float(np.mean(np.abs(m_reference - m_target)) / scale),
        "top": top_ci.as_dict(),
        "random": random_ci.as_dict(),
        "difference": bootstrap_ci(effect_top - effect_random, bootstrap_samples, seed + 2).as_dict(),
        "top_beats_random": bool(top_ci.low > random_ci.high),
        "pairs": pairs,
        "random_positions": random_positions,
    }


# ----------------------------------------------------------------------------- figures
def plot_heatmap(scores: dict[str, dict], path: Any, rank_by: str = "f_ratio") -> None:
    """Positions x attributes: each attribute's score scaled to its maximum; top position marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("f_ratio", "mutual_information") if all(s[k] is not None for s in scores.values())]
    names = list(scores)
    n = len(next(iter(scores.values()))["f_ratio"])
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.3 * n + 2), 0.45 * len(names) * len(panels) + 1.6),
                             squeeze=False)
    for ax, key in zip(axes[:, 0], panels, strict=True):
        mat = np.stack([np.asarray(scores[a][key], dtype=np.float64) for a in names])  # (A, N)
        mat = np.clip(mat, 0, None) / np.maximum(np.clip(mat, 0, None).max(axis=1, keepdims=True), 1e-12)
        im = ax.imshow(mat, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for row, a in enumerate(names):
            ax.plot(int(np.argmax(scores[a][key])), row, marker="o", ms=4, mfc="none", mec="cyan")
        ax.set_yticks(range(len(names)), names)
        ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=6)
        ax.set_xlabel("token position")
        title = "between/within-group variance ratio" if key == "f_ratio" else "mutual information (code; group)"
        ax.set_title(f"{title}{' (ranking)' if key == rank_by else ''}, scaled per attribute", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


GRID_SINGLE_POSITIONS = 3  # top-ranked positions shown one by one in an edit grid


def edit_grid(model: Any, images: np.ndarray, encoded: Encoded, recon: torch.Tensor, attr: Attribute,
              groups: np.ndarray, ranking: list[int], path: Any, *, top_k: int, pairs: int,
              positions: Sequence[int] = (), batch_size: int = 128, seed: int = 0) -> None:
    """The edit figure of one attribute: rows are ``pairs`` contrasting (target, reference) pairs; columns the
    target, both reconstructions, the copy of the ``top_k`` ranked positions, copies of single positions (the
    top-ranked ones, ``positions``, one random) and, for VQ tokens, the top position set to a random code."""
    n = encoded.num_tokens
    rng = np.random.default_rng(seed)
    chosen = contrast_pairs(groups, pairs, rng)
    top = ranking[:top_k]
    singles = list(dict.fromkeys([*ranking[:GRID_SINGLE_POSITIONS], *positions]))
    random_position = int(rng.choice(np.setdiff1d(np.arange(n), singles)))
    target, reference = encoded.codes[chosen[:, 0]], encoded.codes[chosen[:, 1]]
    edits = [copy_positions(target, reference, top)]
    titles = ["target", "target recon", "reference recon", f"copy top-{len(top)} {top}"]
    for p in [*singles, random_position]:
        edits.append(copy_positions(target, reference, [p]))
        titles.append(f"copy {p}" + (" (random)" if p == random_position else f" (rank {ranking.index(p)})"))
    if encoded.is_vq:
        random_codes = torch.as_tensor(rng.integers(0, model.config.codebook_size, len(target)))
        edits.append(substitute(target, top[0], random_codes))
        titles.append(f"substitute {top[0]}: random code")
    decoded = decode(model, torch.cat(edits), batch_size).split(len(chosen))  # each (P, 3, H, W)
    originals = to_model_input(images[chosen[:, 0]], recon.shape[-1])
    rows = [[originals[i], recon[chosen[i, 0]], recon[chosen[i, 1]], *(d[i] for d in decoded)]
            for i in range(len(chosen))]
    labels = [f"{attr.values[t]:.3g} -> {attr.values[r]:.3g}" for t, r in chosen]
    plot_edit_grid(rows, titles, labels, path, f"{attr.name}: edits of the target toward the reference "
                                               f"(row label: {attr.name} of target -> reference)")


def plot_edit_grid(rows: list[list[torch.Tensor]], titles: list[str], row_labels: list[str], path: Any,
                   suptitle: str) -> None:
    """A grid of images (each float (3, H, W) in [0, 1]): one row per pair, one column per edit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nr, nc = len(rows), len(titles)
    h, w = rows[0][0].shape[-2:]
    pad = max(1, h // 16)
    canvas = torch.ones(3, nr * (h + pad) + pad, nc * (w + pad) + pad)  # white gutters between the images
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[:, y:y + h, x:x + w] = img.clamp(0, 1)
    # one image in one axes: far faster than a subplot per cell
    fig, ax = plt.subplots(figsize=(1.25 * nc + 1.2, 1.25 * nr + 0.9))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([pad + c * (w + pad) + w / 2 for c in range(nc)], titles, fontsize=7, rotation=30, ha="left")
    ax.xaxis.tick_top()
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(nr)], row_labels, fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(suptitle, fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
