"""Exponential moving average of a model's trainable weights (kept in float32)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after every optimiser step.

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` (t = number of updates so far), as in the
    diffusers-style EMA the official TiTok uses, so early averages are not dominated by the random
    initialisation. Frozen parameters and buffers are not averaged: they are taken from the model
    when the averaged weights are read (``state_dict_for``).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    def state_dict_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with the averaged weights in place of the trained ones."""
        state = model.state_dict()
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype)
        return state

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable weights with the averages (e.g. before evaluation/export)."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
