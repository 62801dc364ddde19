"""Independent jobs in worker processes give what the same calls give in this process, in order."""

import torch

from pipeline import side_by_side


def _draw(seed: int, n: int) -> tuple[int, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.get_num_threads(), torch.randn(n)


def test_jobs_run_side_by_side_return_the_results_of_plain_calls_in_order(monkeypatch):
    monkeypatch.setattr(side_by_side.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the parent as _pin_threads leaves it
    assert side_by_side.in_parallel(2) and not side_by_side.in_parallel(1)
    got = side_by_side.run_jobs([(_draw, (3, 5)), (_draw, (4, 2))])
    assert [threads for threads, _ in got] == [1, 1]  # each worker: the parent's threads split between them
    for (_, values), seed, n in zip(got, (3, 4), (5, 2), strict=True):
        torch.manual_seed(seed)
        assert torch.equal(values, torch.randn(n))


def test_one_core_runs_the_jobs_here(monkeypatch):
    monkeypatch.setattr(side_by_side.os, "cpu_count", lambda: 1)
    assert not side_by_side.in_parallel(2)
    assert [v.shape for _, v in side_by_side.run_jobs([(_draw, (0, 3)), (_draw, (1, 4))])] == [(3,), (4,)]
