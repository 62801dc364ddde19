"""Pure PyTorch models: no DVC, MLflow or Snakemake imports here.

``count_parameters(model)``: all parameters (trainable or not) = the numbers of the state dict; the one
parameter count every stage, script and test uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Every parameter of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())
