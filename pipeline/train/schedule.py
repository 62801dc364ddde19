"""Learning-rate schedule: linear warm-up from 0, then cosine decay to ``min_lr``.

Counted in optimiser steps (not micro-batches, not processes): the official TiTok code multiplies
its step counts by the number of processes because an accelerate-prepared scheduler steps once per
process; a plain function of the global step needs no such correction.
"""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
