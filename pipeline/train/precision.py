"""Mixed precision: one autocast context for the loop, and fp32 islands for numerically fragile code.

Under bf16/fp16 autocast the matmuls of the ViT and the conv nets run in half precision, but the vector
quantiser's nearest-code search must not: a half-precision distance can flip the argmin and so change
which token an image gets. ``VectorQuantizer.forward`` already opens its own fp32 region (autocast
off, input cast to float32). Other code that needs the same (a loss on logits, a custom quantiser)
uses::

    from pipeline.train.precision import fp32_region

    with fp32_region():
        z_q, info = quantise(z.float())     # cast the inputs yourself: autocast is only switched off

or decorates the function with ``@fp32`` (switches autocast off and casts floating tensor arguments).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

F = TypeVar("F", bound=Callable)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The forward-pass context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


@contextlib.contextmanager
def fp32_region() -> Iterator[None]:
    """Switch autocast off (on every device type where it is on) for the enclosed block."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cuda", "cpu"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def fp32(fn: F) -> F:
    """Decorator: run ``fn`` in an fp32 region with its floating-point tensor arguments cast to float32."""

    def cast(x):
        return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with fp32_region():
            return fn(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
