"""A toy training run through the shared loop (``pipeline.train.loop``), for the SLURM requeue test.

    python -m pipeline.launch --module tests/slurm/toy_train.py <run_dir> <steps> [<seconds per step>]

A tiny autoencoder on fixed random data, with dropout (so an exact resume needs the RNG state). Every
start appends ``{"start_step", "restart_count", "job_id"}`` to ``<run_dir>/starts.jsonl``; a run that
reaches ``steps`` writes ``<run_dir>/final.pt`` (the model's state dict) atomically.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.io import atomic_file
from pipeline.train import checkpoint
from pipeline.train.loop import Recipe, TrainConfig, train


class ToyRecipe(Recipe):
    def __init__(self, step_seconds: float) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(32, 16), nn.Dropout(0.1), nn.GELU(), nn.Linear(16, 32))
        self.step_seconds = step_seconds

    def losses(self, out, batch, step):
        time.sleep(self.step_seconds)  # slow enough to be signalled mid-run
        return {"loss": F.mse_loss(out, batch[0])}, {}

    def forward(self, batch):  # pragma: no cover - the loop calls recipe.model, not the recipe
        return self.model(batch)


class _Model(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch):
        return self.inner(batch[0])


def toy_data() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(64, 32, generator=g))


def main(argv: list[str]) -> int:
    run_dir, steps = Path(argv[0]), int(argv[1])
    step_seconds = float(argv[2]) if len(argv) > 2 else 0.0
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = checkpoint.latest_checkpoint(run_dir)
    start = int(latest.name[5:13]) if latest else 0
    with open(run_dir / "starts.jsonl", "a") as f:
        f.write(json.dumps({"start_step": start, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
                            "job_id": os.environ.get("SLURM_JOB_ID")}) + "\n")
    torch.manual_seed(0)
    recipe = ToyRecipe(step_seconds)
    recipe.model = _Model(recipe.model)
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-2, min_lr=1e-3, ckpt_every=2, log_every=1000)
    result = train(recipe, toy_data(), cfg, run_dir, seed=3, device="cpu", keep_checkpoints=2)
    with atomic_file(run_dir / "final.pt") as tmp:
        torch.save(recipe.model.state_dict(), tmp)
    print(f"toy_train: finished at step {result.step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
