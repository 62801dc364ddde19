"""Process-group set-up for DDP: ``torchrun`` (or one ``srun`` task per GPU), NCCL on GPU, gloo on CPU.

The same command runs on 1 to N GPUs: without the launcher's environment this is a single process.
Recognised environments:

- torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
- ``srun`` with one task per GPU: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` plus
  ``MASTER_ADDR``/``MASTER_PORT`` exported by the batch script (e.g. the first host of
  ``scontrol show hostnames $SLURM_JOB_NODELIST``). This form lets SLURM's signals reach every
  training process directly (torchrun forwards SIGTERM to its workers, but not SIGUSR1).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launcher_env() -> tuple[int, int, int] | None:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0")), int(env["SLURM_NTASKS"])
    return None


def setup(device: str = "auto") -> DistInfo:
    """Join the process group if launched for several processes (idempotent) and pick the device."""
    launched = _launcher_env()
    rank, local_rank, world_size = launched or (0, 0, 1)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                device_id=dev if use_cuda else None)
        atexit.register(teardown)
    return DistInfo(rank, local_rank, world_size, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process: every rank must take the same branch at a barrier."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_objects(obj):
    """List of ``obj`` from every rank (a one-element list in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
