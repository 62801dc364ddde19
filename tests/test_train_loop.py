"""The shared training loop on a toy VQ autoencoder (CPU): accumulation, resume after a kill, DDP, errors.

This file is also the worker script that the subprocess tests run (``python tests/test_train_loop.py
'<json>'`` or under ``torchrun``): the toy model, recipe and data live here and nowhere else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from pipeline.train import checkpoint
from pipeline.train.loop import EXIT_REQUEUE, EXIT_TERMINATED, Recipe, TrainConfig, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parent.parent


class ToyVQ(nn.Module):
    """Linear encoder -> nearest-code VQ (fp32, straight-through) -> linear decoder, with noise and dropout
    so that exact resumption needs the RNG state restored."""

    def __init__(self, dim: int = 3 * 8 * 8, hidden: int = 16, codes: int = 8, noise: bool = True) -> None:
        super().__init__()
        self.enc = nn.Linear(dim, hidden)
        self.noise = noise
        self.drop = nn.Dropout(0.1 if noise else 0.0)
        self.codebook = nn.Embedding(codes, hidden)
        self.dec = nn.Linear(hidden, dim)

    def forward(self, batch):
        x = batch[0]  # (B, 3, 8, 8)
        z = self.drop(self.enc(x.flatten(1)))  # (B, hidden)
        if self.noise:
            z = z + 0.01 * torch.randn_like(z)
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            idx = torch.cdist(z, self.codebook.weight).argmin(dim=1)  # (B,)
            e = self.codebook(idx)
            qloss = 0.25 * F.mse_loss(z, e.detach()) + F.mse_loss(e, z.detach())
            z_q = z + (e - z).detach()
        return {"recon": self.dec(z_q).view_as(x), "quantizer_loss": qloss, "indices": idx, "z_q": z_q}


class ToyRecipe(Recipe):
    def __init__(self, gan: bool = False, disc_start: int = 2, noise: bool = True) -> None:
        super().__init__()
        self.model = ToyVQ(noise=noise)
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1)) if gan else None
        self.disc_start = disc_start

    def losses(self, out, batch, step):
        l2 = F.mse_loss(out["recon"].float(), batch[0])
        losses = {"l2": l2, "quantizer": out["quantizer_loss"]}
        if self.discriminator is not None and step >= self.disc_start:
            losses["gan"] = -self.discriminator(out["recon"]).mean()
        losses["loss"] = sum(losses.values())
        usage = torch.bincount(out["indices"], minlength=8).gt(0).float().mean()
        return losses, {"codebook_usage": usage}

    def discriminator_losses(self, out, batch, step, discriminator):
        if self.discriminator is None or step < self.disc_start:
            return None
        real, fake = discriminator(batch[0]), discriminator(out["recon"])
        return {"loss": 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())}


def toy_data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    return TensorDataset(torch.rand(n, 3, 8, 8, generator=g))


def toy_config(**kw) -> TrainConfig:
    base = dict(steps=20, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=3, ema_decay=0.9, ckpt_every=5,
                log_every=5, grad_clip=1.0)
    return TrainConfig(**{**base, **kw})


def run_toy(run_dir: Path, gan: bool = False, noise: bool = True, log_fn=None, **kw):
    torch.manual_seed(0)  # the same initial weights for every run (and every rank)
    recipe = ToyRecipe(gan=gan, noise=noise)
    result = train(recipe, toy_data(), toy_config(**kw), run_dir, seed=0, log_fn=log_fn)
    return recipe, result


def _worker(args: dict) -> None:
    """Subprocess entry: train the toy, optionally slowly, and save the final weights."""
    torch.set_num_threads(1)
    slow = args.pop("sleep", 0.0)
    out = Path(args.pop("out"))
    log_fn = (lambda metrics, step: time.sleep(slow)) if slow else None
    recipe, result = run_toy(Path(args.pop("run_dir")), log_fn=log_fn, **args)
    if result.is_main:
        torch.save({"model": recipe.model.state_dict(), "ema": result.ema_state,
                    "disc": recipe.discriminator.state_dict() if recipe.discriminator else None}, out)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _spawn(args: dict, torchrun: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, __file__, json.dumps(args)]
    if torchrun:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={torchrun}",
               __file__, json.dumps(args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(autouse=True)
def _one_thread():
    """Workers and in-process runs use the same (single-threaded) kernels, so results compare bitwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_grad_accumulation_equals_big_batch(tmp_path):
    big, _ = run_toy(tmp_path / "big", steps=6, noise=False, gan=True)
    acc, _ = run_toy(tmp_path / "acc", steps=6, noise=False, gan=True, grad_accum=4)
    # the same 8 images per step, split 4 x 2: equal up to float summation order
    for k, v in big.model.state_dict().items():
        torch.testing.assert_close(acc.model.state_dict()[k], v, atol=1e-6, rtol=1e-5)


def test_killed_run_resumes_bit_identical(tmp_path):
    steps, killed_dir = 40, tmp_path / "killed"
    victim = _spawn({"run_dir": str(killed_dir), "out": str(tmp_path / "x.pt"), "steps": steps, "gan": True,
                     "sleep": 0.3})
    reference, _ = run_toy(tmp_path / "ref", steps=steps, gan=True)  # meanwhile, uninterrupted
    deadline = time.time() + 120
    while not checkpoint.list_checkpoints(killed_dir):  # wait for the first checkpoint (step 5)
        assert victim.poll() is None and time.time() < deadline, victim.communicate()[0]
        time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)
    log = victim.communicate(timeout=120)[0]
    assert victim.returncode == EXIT_TERMINATED, log
    saved = checkpoint.load(checkpoint.latest_checkpoint(killed_dir))
    assert 5 <= saved["step"] < steps, saved["step"]
    assert not (tmp_path / "x.pt").exists()

    resumed, result = run_toy(killed_dir, steps=steps, gan=True)
    assert result.step == steps
    for a, b in [(reference.model, resumed.model), (reference.discriminator, resumed.discriminator)]:
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    a = checkpoint.load(checkpoint.latest_checkpoint(tmp_path / "ref"))
    b = checkpoint.load(checkpoint.latest_checkpoint(killed_dir))
    assert a["step"] == b["step"] == steps and a["data"] == b["data"]
    for k, v in a["ema"]["shadow"].items():
        assert torch.equal(v, b["ema"]["shadow"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])


def test_sigusr1_checkpoints_and_exits_for_requeue(tmp_path):
    before = []

    def send_usr1(metrics, step):
        before.append({"step": step, **metrics})
        if step == 5:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(TrainingInterrupted) as e:
        run_toy(tmp_path, steps=20, log_every=1, ckpt_every=100, log_fn=send_usr1)
    assert e.value.code == EXIT_REQUEUE and e.value.step == 5
    assert e.value.checkpoint == checkpoint.checkpoint_path(tmp_path, 5) and e.value.checkpoint.is_file()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers restored
    _, result = run_toy(tmp_path, steps=20, log_every=1, ckpt_every=100)
    assert result.step == 20
    # the training curve survives the requeue: the 5 steps logged before it, then the 15 after
    assert result.history[:5] == before and [r["step"] for r in result.history] == list(range(1, 21))


def test_ddp_two_processes_match_one(tmp_path):
    # no dropout / noise (those are per rank): the same global batch must then give the same steps
    common = {"steps": 6, "gan": True, "batch_size": 8, "noise": False}
    two = _spawn({"run_dir": str(tmp_path / "two"), "out": str(tmp_path / "two.pt"), **common}, torchrun=2)
    one, _ = run_toy(tmp_path / "one", **common)
    log = two.communicate(timeout=180)[0]
    assert two.returncode == 0, log
    b = torch.load(tmp_path / "two.pt")
    for part, module in (("model", one.model), ("disc", one.discriminator)):
        for k, v in module.state_dict().items():
            torch.testing.assert_close(b[part][k], v, atol=1e-6, rtol=1e-5, msg=f"{part}.{k}")
    assert checkpoint.list_checkpoints(tmp_path / "two")  # rank 0 saved


def test_log_fn_gets_loss_terms_lr_and_throughput(tmp_path):
    seen = []
    _, result = run_toy(tmp_path, steps=10, log_every=5, gan=True, log_fn=lambda m, s: seen.append((s, m)))
    assert [s for s, _ in seen] == [5, 10]
    keys = set(seen[-1][1])
    assert {"loss", "l2", "quantizer", "gan", "disc/loss", "codebook_usage", "lr", "images_per_s",
            "grad_norm"} <= keys
    assert result.metrics == seen[-1][1]
    assert result.history == [{"step": s, **m} for s, m in seen]  # the curve: what log_fn got, with its step
    # a finished run is not trained again
    _, again = run_toy(tmp_path, steps=10, log_fn=lambda m, s: seen.append((s, m)))
    assert again.step == 10 and len(seen) == 2


def test_corrupt_checkpoint_is_named(tmp_path):
    run_toy(tmp_path, steps=5)
    path = checkpoint.latest_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        run_toy(tmp_path, steps=10)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")


def test_shape_mismatch_is_named(tmp_path):
    run_toy(tmp_path, steps=5)
    recipe = ToyRecipe()
    recipe.model.codebook = nn.Embedding(16, 16)  # another configuration
    with pytest.raises(checkpoint.CheckpointError) as e:
        train(recipe, toy_data(), toy_config(steps=10), tmp_path, seed=0)
    msg = str(e.value)
    assert str(checkpoint.latest_checkpoint(tmp_path)) in msg
    assert "do not fit the model" in msg and "codebook.weight: expected (16, 16), found (8, 16)" in msg


class ToyStream(IterableDataset):
    """A sharded-reader stand-in: a per-epoch order from ``set_epoch``, no random access."""

    def __init__(self) -> None:
        self.images, self.epoch = toy_data(40).tensors[0], 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.epoch))
        return iter((self.images[i],) for i in order)


def test_iterable_dataset_resumes_exactly(tmp_path):
    def usr1_at_7(metrics, step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGUSR1)

    def run(run_dir, log_fn=None):
        torch.manual_seed(0)
        recipe = ToyRecipe()
        train(recipe, ToyStream(), toy_config(steps=12, log_every=1, ckpt_every=100), run_dir, seed=0,
              log_fn=log_fn)
        return recipe

    straight = run(tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "b", usr1_at_7)  # mid-epoch (5 steps of 8 per epoch)
    resumed = run(tmp_path / "b")
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_fp16_uses_a_grad_scaler_that_is_checkpointed(tmp_path):
    _, result = run_toy(tmp_path, steps=4, gan=True, precision="fp16")
    state = checkpoint.load(result.checkpoint)
    assert state["scaler"]["scale"] > 0 and state["discriminator"] is not None


def test_batch_size_must_split_over_accumulation(tmp_path):
    with pytest.raises(ValueError, match="must be a multiple of grad_accum"):
        run_toy(tmp_path, steps=1, batch_size=6, grad_accum=4)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
