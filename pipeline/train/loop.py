"""The one training loop: every model in the project trains through ``train(recipe, dataset, cfg, run_dir)``.

What the loop owns: AdamW (fused on CUDA) with warm-up + cosine schedule, gradient accumulation,
gradient clipping, bf16/fp16 autocast (GradScaler for fp16), EMA weights, DDP (torchrun or srun; gloo
on CPU), ``torch.compile``, checkpoints (every N steps, at the end, and on SIGTERM/SIGUSR1) with
automatic resume, deterministic per-rank seeding, a progress bar and metrics through ``log_fn`` (every
``log_every`` steps; the same rows come back in ``TrainResult.history``, the stage's training curve).
What a recipe owns (``pipeline/train/recipes.py``): the model(s) and the losses.

A stage calls it like this::

    recipe = TiTokProxyCodeRecipe(titok, vqgan)            # any Recipe
    cfg = TrainConfig(steps=..., batch_size=256, lr=1e-4, precision="bf16", ema_decay=0.999)  # or a params section
    with stage_run("train_titok", params) as run:
        result = train(recipe, dataset, cfg, run_dir, seed=params.seed, log_fn=run.log_metrics)
    if result.is_main:
        save_file(result.ema_state or recipe.model.state_dict(), out_path)

Signals (SLURM): SIGUSR1 (``#SBATCH --signal=USR1@120``: time is nearly up) and SIGTERM (preemption,
``scancel``, the time limit) both set a flag; at the next step boundary every rank agrees, a
checkpoint is written and ``train`` raises ``TrainingInterrupted``, a ``SystemExit`` whose code is
``EXIT_REQUEUE`` (75, after SIGUSR1: "checkpointed, requeue me") or ``EXIT_TERMINATED`` (143 = 128 +
SIGTERM). Rerunning the same command resumes from the newest checkpoint in ``run_dir``. A batch script
that requeues itself::

    #SBATCH --signal=USR1@120 --requeue
    srun --ntasks-per-node=$GPUS python -m pipeline train_titok   # one task per GPU, SLURM env vars
    rc=$?; [ $rc -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"; exit $rc

(Under Snakemake's SLURM executor, ``retries`` does the same: a rerun resumes.) torchrun forwards
SIGTERM to its workers but not SIGUSR1, and reports any worker failure as its own exit code 1; launch
with ``srun`` (one task per GPU) where the exit code matters.

Batch sizes: ``cfg.batch_size`` is the global batch of one optimiser step; each of the W processes
runs ``grad_accum`` micro-batches of ``batch_size / (W * grad_accum)`` images. A map-style dataset is
read in a seeded permutation per epoch, cut into whole global batches, so step s sees the same images
whatever W and grad_accum are. An ``IterableDataset`` (the sharded readers) splits itself by rank and
worker; the loop only calls its ``set_epoch(epoch)`` if it has one, and on resume skips the batches
already consumed in the epoch.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from pipeline.train import checkpoint, distributed
from pipeline.train.config import TrainConfig
from pipeline.train.ema import EMA
from pipeline.train.precision import autocast
from pipeline.train.schedule import cosine_with_warmup

EXIT_REQUEUE = 75  # SIGUSR1: checkpoint written, the job should be requeued (EX_TEMPFAIL)
EXIT_TERMINATED = 128 + signal.SIGTERM  # SIGTERM: checkpoint written, then stopped

LogFn = Callable[[dict[str, float], int], None]
ADAMW_EPS = 1e-8


class Recipe(nn.Module):
    """What a model contributes to training. Subclasses set ``model`` (and maybe ``discriminator``).

    - ``model``: the module the main optimiser trains. The loop calls ``model(batch)`` (through DDP /
      compile); its ``forward`` returns a dict of tensors, whatever ``losses`` needs. Frozen parts
      (``requires_grad=False``, e.g. a teacher VQGAN) may live inside it.
    - ``losses(out, batch, step)`` -> ``(losses, metrics)``: ``losses['loss']`` is what is
      back-propagated, the other entries are logged; ``metrics`` are extra scalars to log (codebook
      usage, ...). The discriminator, if any, is frozen during this call: use ``self.discriminator``.
    - ``discriminator`` and ``discriminator_losses(out, batch, step, discriminator)``: the optional
      second player, trained by its own AdamW right after the generator on the same batch, from
      ``out`` detached; return ``None`` while the discriminator is not yet active.
    - ``no_weight_decay(name, param)``: which parameters get no weight decay (default: ndim < 2).
    Everything else the recipe holds (perceptual networks) moves to the device with it.
    """

    model: nn.Module
    discriminator: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self.discriminator = None  # a subclass assigns a module to have a GAN

    def losses(self, out: dict[str, torch.Tensor], batch: Any, step: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def discriminator_losses(self, out: dict[str, torch.Tensor], batch: Any, step: int,
                             discriminator: Callable[[torch.Tensor], torch.Tensor]
                             ) -> dict[str, torch.Tensor] | None:
        return None

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return param.ndim < 2


class TrainingInterrupted(SystemExit):  # noqa: N818 - it is an exit, not an error
    """Raised after the checkpoint that a SIGTERM / SIGUSR1 asked for; ``code`` is the exit status."""

    def __init__(self, signum: int, checkpoint_path: Path, step: int) -> None:
        super().__init__(EXIT_REQUEUE if signum == signal.SIGUSR1 else EXIT_TERMINATED)
        self.signum, self.checkpoint, self.step = signum, checkpoint_path, step


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None  # None only with ckpt_every=0
    metrics: dict[str, float]  # the last logged values
    ema_state: dict[str, torch.Tensor] | None  # model.state_dict() with EMA weights, if EMA is on
    is_main: bool
    # every logged window, {"step": s, **metrics}, the same series log_fn received (MLflow): the training
    # curve. Kept in the checkpoints, so a resumed run returns the steps logged before the interruption too.
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """This rank's indices for one epoch: a seeded permutation cut to whole global batches.

    Position p of the permutation goes to rank ``(p // micro) % world``, so one optimiser step covers
    positions ``[s * batch, (s + 1) * batch)`` whatever the number of processes and accumulation steps.
    """

    def __init__(self, size: int, global_batch: int, micro_batch: int, rank: int, world: int, seed: int):
        if size < global_batch:
            raise ValueError(f"dataset of {size} samples is smaller than one global batch ({global_batch})")
        self.size, self.global_batch, self.micro, self.rank, self.world = size, global_batch, micro_batch, rank, world
        self.seed, self.epoch, self.skip = seed, 0, 0

    def set_epoch(self, epoch: int, skip_micro_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_micro_batches

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.size // self.global_batch * self.global_batch
        perm = torch.randperm(self.size, generator=g)[:n].view(-1, self.world, self.micro)  # (M, W, m)
        return iter(perm[self.skip:, self.rank].flatten().tolist())

    def __len__(self) -> int:
        micro_batches = self.size // self.global_batch * self.global_batch // (self.world * self.micro)
        return (micro_batches - self.skip) * self.micro


class _DataStream:
    """Endless micro-batches across epochs, with a resumable position (epoch, samples seen in it)."""

    def __init__(self, dataset: Dataset, micro: int, dist: distributed.DistInfo, cfg: TrainConfig, seed: int,
                 collate_fn: Callable | None) -> None:
        self.dataset, self.micro, self.dist, self.cfg, self.seed = dataset, micro, dist, cfg, seed
        self.iterable = isinstance(dataset, IterableDataset)
        self.sampler = None if self.iterable else EpochSampler(
            len(dataset), cfg.batch_size, micro, dist.rank, dist.world_size, seed)
        self.collate_fn = collate_fn
        self.epoch, self.batches, self._it = 0, 0, None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples": self.batches * self.micro * self.dist.world_size}

    def load_state(self, state: Mapping[str, int]) -> None:
        self.epoch, self.batches = state["epoch"], state["samples"] // (self.micro * self.dist.world_size)

    def _start_epoch(self, skip: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch, skip)
        # a private generator: creating the iterator must not draw from the global RNG (exact resume)
        g = torch.Generator().manual_seed(self.seed * 7919 + self.dist.rank * 104_729 + self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.micro, sampler=self.sampler, drop_last=True,
                            num_workers=self.cfg.num_workers, collate_fn=self.collate_fn, generator=g,
                            pin_memory=self.dist.device.type == "cuda")
        self._it = iter(loader)
        if self.iterable:  # no index to jump to: read past what the interrupted run consumed
            for _ in range(skip):
                next(self._it)

    def next(self) -> Any:
        if self._it is None:
            self._start_epoch(self.batches)
        while True:
            try:
                batch = next(self._it)
                self.batches += 1
                return batch
            except StopIteration:
                if self.batches == 0:
                    raise ValueError("the dataset yields no complete batch on this rank") from None
                self.epoch, self.batches = self.epoch + 1, 0
                self._start_epoch(0)


class _SignalFlag:
    """Records SIGTERM / SIGUSR1 instead of dying; the loop acts on it at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received != signal.SIGTERM:  # TERM wins over USR1
            self.received = signum

    def __enter__(self) -> _SignalFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _detach(out: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def _adamw(recipe: Recipe, module: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if recipe.no_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=ADAMW_EPS,
                             fused=device.type == "cuda")


def _set_requires_grad(module: nn.Module | None, flag: bool) -> None:
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(flag)


def _optimizer_step(opt: torch.optim.Optimizer, module: nn.Module, scaler: torch.amp.GradScaler,
                    clip: float) -> torch.Tensor | None:
    scaler.unscale_(opt)  # clip the true gradients under fp16 (a no-op otherwise)
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip) if clip > 0 else None
    scaler.step(opt)
    return norm


def train(recipe: Recipe, dataset: Dataset, cfg: TrainConfig, run_dir: str | Path, *, seed: int = 42,
          device: str = "auto", keep_checkpoints: int = 2, log_fn: LogFn | None = None,
          collate_fn: Callable | None = None) -> TrainResult:
    """Train ``recipe`` on ``dataset`` to ``cfg.steps`` optimiser steps, resuming from ``run_dir``.

    ``seed``: of the data order and of every rank's RNGs (rank r: ``seed + r``); ``device``: ``auto``,
    ``cpu`` or ``cuda``; ``keep_checkpoints``: how many of the newest checkpoints stay in ``run_dir``.
    """
    dist = distributed.setup(device)
    run_dir, device, world = Path(run_dir), dist.device, dist.world_size
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by processes ({world}) "
                         f"x grad_accum ({cfg.grad_accum})")
    micro = cfg.batch_size // (world * cfg.grad_accum)
    seed_everything(seed + dist.rank)  # per rank: dropout / noise differ across ranks, as they should
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    recipe.to(device)
    model, disc = recipe.model, recipe.discriminator
    opt = _adamw(recipe, model, cfg, device)
    disc_opt = _adamw(recipe, disc, cfg, device) if disc is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    data = _DataStream(dataset, micro, dist, cfg, seed, collate_fn)

    step, last_saved, ema_state, history = 0, None, None, []
    if (latest := checkpoint.latest_checkpoint(run_dir)) is not None:
        step, ema_state, history = _restore(latest, dist.rank, world, model, disc, opt, disc_opt, scaler, data)
        last_saved = latest
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None and ema_state is not None:  # (EMA switched on mid-run starts from the weights)
        ema.load_state_dict(ema_state)

    # DDP then compile (DDPOptimizer splits graphs at bucket boundaries). The raw modules stay the
    # ones checkpointed and returned; the wrappers only run forward/backward.
    fwd_model: Callable = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    fwd_disc: Callable | None = disc
    if disc is not None and world > 1:
        fwd_disc = DDP(disc, device_ids=[device.index] if device.type == "cuda" else None)
    ddp_model, ddp_disc = fwd_model, fwd_disc
    if cfg.compile:
        fwd_model = torch.compile(fwd_model)
        fwd_disc = torch.compile(fwd_disc) if fwd_disc is not None else None

    def save() -> Path:
        rngs = distributed.all_gather_objects(checkpoint.rng_state())  # every rank's RNG, for exact resume
        path = checkpoint.checkpoint_path(run_dir, step)
        if dist.is_main:
            path = checkpoint.save({
                "step": step, "data": data.state(), "world_size": world, "config": {**asdict(cfg), "seed": seed},
                "model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                "discriminator": disc.state_dict() if disc is not None else None,
                "optimizer": opt.state_dict(), "disc_optimizer": disc_opt.state_dict() if disc_opt else None,
                "scaler": scaler.state_dict(), "rng": rngs, "history": history,
            }, run_dir, step, keep_checkpoints)
        if world > 1:
            torch.distributed.barrier()  # nobody exits while rank 0 is still writing
        return path

    def sync(ddp: Any, last: bool) -> contextlib.AbstractContextManager:
        # accumulate locally; all-reduce gradients only on the last micro-batch of a step
        return ddp.no_sync() if isinstance(ddp, DDP) and not last else contextlib.nullcontext()

    window: dict[str, torch.Tensor] = {}
    window_steps, window_start, logged = 0, time.perf_counter(), {}
    bar = tqdm(total=cfg.steps, initial=step, disable=not dist.is_main, dynamic_ncols=True,
               mininterval=1.0, desc=run_dir.name)
    model.train()
    if disc is not None:
        disc.train()
    with _SignalFlag() as signals:
        while step < cfg.steps:
            lr = cosine_with_warmup(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                    total_steps=cfg.steps)
            for group in [*opt.param_groups, *(disc_opt.param_groups if disc_opt is not None else [])]:
                group["lr"] = lr  # the discriminator follows the same schedule

            disc_active = False
            terms: dict[str, torch.Tensor] = {}
            for micro_step in range(cfg.grad_accum):
                last = micro_step == cfg.grad_accum - 1
                batch = _to_device(data.next(), device)
                _set_requires_grad(disc, False)  # the generator's GAN term must not train D
                with sync(ddp_model, last), autocast(device, cfg.precision):
                    out = fwd_model(batch)
                    losses, metrics = recipe.losses(out, batch, step)
                scaler.scale(losses["loss"] / cfg.grad_accum).backward()
                _set_requires_grad(disc, True)
                if disc is not None:
                    with sync(ddp_disc, last), autocast(device, cfg.precision):
                        d_losses = recipe.discriminator_losses(_detach(out), batch, step, fwd_disc)
                    if d_losses is not None:
                        scaler.scale(d_losses["loss"] / cfg.grad_accum).backward()
                        disc_active = True
                        losses = {**losses, **{f"disc/{k}": v for k, v in d_losses.items()}}
                for k, v in {**losses, **metrics}.items():
                    v = torch.as_tensor(v, device=device).detach().float()
                    if v.numel() == 1:
                        terms[k] = terms.get(k, 0.0) + v.reshape(()) / cfg.grad_accum

            grad_norm = _optimizer_step(opt, model, scaler, cfg.grad_clip)
            if disc_active:
                _optimizer_step(disc_opt, disc, scaler, cfg.grad_clip)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if disc_opt is not None:
                disc_opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            bar.update(1)

            if grad_norm is not None:
                terms["grad_norm"] = grad_norm.detach().float()
            for k, v in terms.items():  # no .item() here: no host sync outside log steps
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                logged = _log_window(window, window_steps, window_start, lr, cfg, dist, bar, log_fn, step)
                history.append({"step": step, **logged})
                window, window_steps, window_start = {}, 0, time.perf_counter()

            stop = distributed.any_process(signals.received is not None, device)
            if stop or (cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == cfg.steps)):
                last_saved = save()
            if stop:
                bar.close()
                signum = signals.received if signals.received is not None else signal.SIGTERM  # another rank's
                raise TrainingInterrupted(signum, last_saved, step)
    bar.close()
    if cfg.ckpt_every and (last_saved is None or checkpoint.checkpoint_path(run_dir, step) != last_saved):
        last_saved = save()  # e.g. a fresh run with steps=0
    return TrainResult(step=step, checkpoint=last_saved, metrics=logged,
                       ema_state=ema.state_dict_for(model) if ema else None, is_main=dist.is_main, history=history)


def _log_window(window: dict[str, torch.Tensor], n: int, start: float, lr: float, cfg: TrainConfig,
                dist: distributed.DistInfo, bar: tqdm, log_fn: LogFn | None, step: int) -> dict[str, float]:
    keys = sorted(window)
    values = torch.stack([window[k] for k in keys]) / n if keys else torch.zeros(0, device=dist.device)
    values = distributed.all_reduce_mean(values).tolist()  # the same numbers on every rank
    elapsed = time.perf_counter() - start
    metrics = dict(zip(keys, values, strict=True))
    metrics |= {"lr": lr, "images_per_s": cfg.batch_size * n / max(elapsed, 1e-9), "step_s": elapsed / n}
    if dist.is_main:
        bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "lr") if k in metrics}, refresh=False)
        if log_fn is not None:
            log_fn(metrics, step)
    return metrics


def _restore(path: Path, rank: int, world: int, model: nn.Module, disc: nn.Module | None,
             opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler,
             data: _DataStream) -> tuple[int, dict | None, list[dict[str, float]]]:
    state = checkpoint.load(path)
    checkpoint.load_module(model, state["model"], path, "model")
    if disc is not None:
        if state["discriminator"] is None:
            raise checkpoint.CheckpointError(f"checkpoint {path} has no discriminator, but the recipe has one")
        checkpoint.load_module(disc, state["discriminator"], path, "discriminator")
    try:
        opt.load_state_dict(state["optimizer"])
        if disc_opt is not None:
            disc_opt.load_state_dict(state["disc_optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"checkpoint {path}: optimiser state does not fit ({e})") from e
    scaler.load_state_dict(state["scaler"])
    data.load_state(state["data"])
    if state["world_size"] == world:
        checkpoint.set_rng_state(state["rng"][rank])
    else:  # another process count: the data order is kept, per-rank random streams are reseeded
        seed_everything(int(state["step"]) * 1000 + rank)
    # (checkpoints written before the curve was kept have no history: the curve starts at the resume)
    return int(state["step"]), state["ema"], list(state.get("history") or [])
