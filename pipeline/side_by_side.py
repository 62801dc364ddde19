"""Independent CPU jobs of one stage, side by side in worker processes.

Why: ``dvc repro`` runs stages one at a time, and the demo's models are too small for two threads to keep
two cores busy (batches of a few dozen 64 x 64 images: much of each step is per-op overhead). Two jobs
in two single-thread processes finish sooner than the same jobs one after another with two threads each:
the demo's two CLIP trainings 0.81x in two threads of one process (Python's lock serialises the
per-op overhead), and two TiTok trainings in two processes 196 s for both against 138 s for one.

When: on the CPU with at least two cores. On a GPU, or with one core, the jobs run in this process, one
after another, as plain calls. A job must be a module-level function whose arguments and result pickle
(workers are spawned: a fork after torch has started its thread pool can deadlock). Each worker gets
``torch.get_num_threads() // jobs`` threads, so on a given machine the outputs do not depend on who
launched the stage (see ``pipeline.__main__._pin_threads``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch


def in_parallel(jobs: int) -> bool:
    """Whether :func:`run_jobs` would give ``jobs`` jobs worker processes on this machine."""
    return jobs >= 2 and (os.cpu_count() or 1) >= 2 and torch.get_num_threads() >= 2 and not torch.cuda.is_available()


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_jobs(jobs: Sequence[tuple[Callable[..., Any], tuple]]) -> list[Any]:
    """``[fn(*args) for fn, args in jobs]``, in worker processes when :func:`in_parallel` says so."""
    if not in_parallel(len(jobs)):
        return [fn(*args) for fn, args in jobs]
    threads = max(1, torch.get_num_threads() // len(jobs))
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        return [f.result() for f in futures]
