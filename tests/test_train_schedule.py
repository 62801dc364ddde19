"""Learning-rate schedule, EMA and mixed-precision helpers of the training loop."""

import math

import pytest
import torch
from torch import nn

from pipeline.train.ema import EMA
from pipeline.train.precision import autocast
from pipeline.train.schedule import cosine_with_warmup


def test_cosine_with_warmup_values():
    lr = lambda s: cosine_with_warmup(s, lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)  # linear warm-up, never 0
    assert lr(4) == pytest.approx(5e-4)
    assert lr(9) == pytest.approx(1e-3)  # peak at the end of warm-up
    assert lr(10) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the cosine
    assert lr(35) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.25)))
    assert lr(110) == pytest.approx(1e-5) and lr(500) == pytest.approx(1e-5)
    values = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone decay


def test_no_warmup_starts_at_peak():
    assert cosine_with_warmup(0, lr=2.0, min_lr=0.0, warmup_steps=0, total_steps=4) == pytest.approx(2.0)


def test_ema_follows_the_warmed_up_decay():
    model = nn.Linear(2, 1)
    frozen = nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    ema = EMA(model, decay=0.999)
    start = model.weight.detach().clone()
    expected = start.clone()
    for t in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        d = min(0.999, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * model.weight.detach()
        ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], expected)
    assert "frozen" not in ema.shadow  # frozen weights are not averaged ...
    state = ema.state_dict_for(model)
    assert torch.equal(state["frozen"], frozen) and torch.equal(state["weight"], expected)  # ... but exported
    other = EMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3 and other.decay == 0.999
    ema.copy_to(model)
    torch.testing.assert_close(model.weight.detach(), expected)


def test_real_quantizer_stays_fp32_under_bf16():
    from pipeline.models.quantizer import VectorQuantizer

    torch.manual_seed(0)
    vq = VectorQuantizer(64, 12, use_l2_norm=True)
    z = torch.randn(3, 12, 1, 32)
    ref, ref_info = vq(z)
    with autocast(torch.device("cpu"), "bf16"):
        z_q, info = vq(z.bfloat16().float())  # what a bf16 encoder would hand over
        z_q_half, info_half = vq(z.bfloat16())
    assert z_q.dtype == torch.float32 and info["quantizer_loss"].dtype == torch.float32
    assert torch.equal(info["min_encoding_indices"], ref_info["min_encoding_indices"]) or \
        (z.bfloat16().float() != z).any()  # same input -> same codes; only the input rounding may differ
    assert z_q_half.dtype == torch.float32
    assert torch.equal(info_half["min_encoding_indices"], info["min_encoding_indices"])
