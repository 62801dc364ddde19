"""Transformer blocks shared by TiTok and ALIT (pre-norm, open_clip-style keys).

Public API
----------
``Attention(width, heads)``: multi-head self-attention computed with
    ``F.scaled_dot_product_attention``; its parameters carry the names of ``nn.MultiheadAttention``
    (``in_proj_weight`` (3W, W) packed q, k, v; ``in_proj_bias``; ``out_proj``) so official
    checkpoints load unchanged. Input and output (B, L, W), batch first, no mask.
``MLP(width, hidden)``: ``c_fc`` -> exact (erf) GELU -> ``c_proj``.
``ResidualAttentionBlock(width, heads, mlp_ratio=4.0)``: ``x + attn(ln_1(x))`` then
    ``x + mlp(ln_2(x))`` (LayerNorm eps 1e-5), as the official ``ResidualAttentionBlock``.
``Transformer(width, depth, heads)``: an ``nn.ModuleList`` of blocks (keys ``{i}.ln_1...``) whose
    ``forward`` applies them in order.
``init_vit_weights`` (official: trunc-normal 0.02), ``init_xavier_weights`` (the demo's) and
    ``weight_init(name)``, the one a config's ``init`` field names (``"vit"`` / ``"xavier"`` /
    ``"local"``: xavier weights, which the model then rearranges into a position-local start with
    ``pipeline.models.local_init``).
``centre_patch_embedding_(conv, pixel_mean=0.5)``: a demo initialisation of a patch embedding's bias.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's initialisation
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3W)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        x = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, w))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.ModuleList):
    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__([ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x)
        return x


def init_xavier_weights(module: nn.Module) -> None:
    """Xavier-uniform weights (fan-in and fan-out over the flattened kernel), zero biases, unit LayerNorms.

    A demo choice (``init="xavier"`` in ``TiTokConfig`` / ``ALITConfig``): about 5x the official 0.02
    std at width 96, so image content reaches the 1-D tokens and the tokens reach the decoder outputs
    from the first steps.
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    else:
        init_vit_weights(module)  # LayerNorms as the official initialisation


@torch.no_grad()
def centre_patch_embedding_(conv: nn.Conv2d, pixel_mean: float = 0.5) -> None:
    """Set ``conv``'s bias so that it embeds ``x - pixel_mean`` instead of ``x``: ``b = -pixel_mean * sum(W)``.

    Images in [0, 1] share a large constant part; embedded as they are, that part dominates every patch
    token and, after the LayerNorms, little of the token stream depends on the image at all (demo TiTok at
    init: 0.5% of the 1-D tokens' energy varies across images; centred: 28%). A small model trained from
    scratch then sits where every token carries only the image's mean colour. Initialisation only: the
    model's input stays [0, 1], as the official models expect.
    """
    conv.bias.copy_(-pixel_mean * conv.weight.sum(dim=(1, 2, 3)))


def init_vit_weights(module: nn.Module) -> None:
    """The official initialisation of ViT parts (TiTok, ALIT): truncated normal(0.02), unit LayerNorms.

    Use as ``model.apply(init_vit_weights)``.
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


WEIGHT_INITS: dict[str, Callable[[nn.Module], None]] = {
    "vit": init_vit_weights, "xavier": init_xavier_weights, "local": init_xavier_weights}


def weight_init(name: str) -> Callable[[nn.Module], None]:
    """The initialiser a model config names in its ``init`` field (for ``model.apply``)."""
    if name not in WEIGHT_INITS:
        raise ValueError(f"init must be one of {sorted(WEIGHT_INITS)}, got {name!r}")
    return WEIGHT_INITS[name]
