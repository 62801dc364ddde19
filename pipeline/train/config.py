"""The hyper-parameters of the training loops, torch-free: the library's configs and params.yaml's sections.

``TrainConfig`` (one run of :func:`pipeline.train.loop.train`) and ``ClipTrainConfig``
(:func:`pipeline.train.clip.train_clip`) are the one definition of their fields: ``pipeline.params`` uses
them as section types (``train_titok.stage1``, ``train_clip.train``, ...), so a value is range-checked the
same way whether it comes from ``params.yaml`` (the error names its dotted key) or from a caller of the
library. They hold what a config file sets; what a run decides (the seed, the device) is an argument of
the loop. The defaults are neutral (the library's); the demo's values are in ``conf/demo.yaml``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

Precision = Literal["fp32", "bf16", "fp16"]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # in [0, 1)

# Frozen, unknown keys are errors: as every section of params.yaml (pipeline.params.Section)
CONFIG = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=CONFIG)
class TrainConfig:
    """One run of the shared training loop: AdamW, warm-up + cosine schedule, EMA, checkpoints."""

    steps: NonNegativeInt = 0  # optimiser steps; 0 skips this run
    batch_size: PositiveInt = 32  # global, per optimiser step
    grad_accum: PositiveInt = 1
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-4
    min_lr: NonNegative = 1e-5
    warmup_steps: NonNegativeInt = 0
    weight_decay: NonNegative = 1e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.99)
    grad_clip: NonNegative = 1.0  # max global grad norm; 0 = off
    precision: Precision = "fp32"
    ema_decay: Fraction = 0.0  # 0 = no EMA
    ckpt_every: NonNegativeInt = 1000  # also at the end; 0 = only when a signal asks (benchmarks, throw-away runs)
    log_every: PositiveInt = 50
    compile: bool = False
    num_workers: NonNegativeInt = 0

    @model_validator(mode="after")
    def _batch_divisible(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of grad_accum {self.grad_accum}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} must not exceed lr {self.lr}")
        return self


@dataclass(frozen=True, config=CONFIG)
class ClipTrainConfig:
    """Contrastive training of the demo CLIP (:func:`pipeline.train.clip.train_clip`)."""

    epochs: PositiveInt = 12
    batch_size: PositiveInt = 32
    lr: Annotated[float, Field(gt=0)] = 1e-3
    min_lr: NonNegative = 1e-4
    weight_decay: NonNegative = 0.1
    warmup_steps: NonNegativeInt = 40
    # exp(logit_scale) at the start (None: the model's, CLIP's 1/0.07)
    init_logit_scale: Annotated[float, Field(gt=0, le=100)] | None = None
    augment: bool = True  # random flips and 90-degree rotations (the demo's shapes are drawn at any angle)
    label_weight: NonNegative = 0.0  # weight of the UniCL class-prompt term (needs labels and label_texts); 0: off
