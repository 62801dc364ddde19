"""Mixed precision: one autocast context for the training and token-optimisation loops.

Under bf16/fp16 autocast the matmuls of the ViT and the conv nets run in half precision; the vector
quantiser's nearest-code search switches autocast off itself (a half-precision distance can flip the
argmin and so change which token an image gets).
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.train.config import Precision

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The forward-pass context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
