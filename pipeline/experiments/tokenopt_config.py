"""The hyper-parameters of test-time token optimisation, torch-free: the library's config and params.yaml's.

``TokenOptConfig`` (:func:`pipeline.experiments.tokenopt.optimize_tokens`) is the one definition of its
fields: ``pipeline.params`` uses it as the type of ``tokenopt.optim`` and ``tokenopt.inpaint.optim``, so
a value is range-checked the same way from ``params.yaml`` (the error names its dotted key) and from a
caller of the library. What a run decides (the seed, the inpainting reset) is an argument of the loop.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from pipeline.train.config import CONFIG, Fraction, NonNegative, NonNegativeInt, PositiveInt, Precision


@dataclass(frozen=True, config=CONFIG)
class TokenOptConfig:
    """Hyper-parameters of the loop. The defaults are the paper's text-guided settings: 300 steps, lr 0.1,
    EMA 0.98, noise 0.3, seed regulariser 0.025, 8 crops."""

    num_iter: PositiveInt = 300
    lr: Annotated[float, Field(gt=0)] = 0.1
    ema_decay: Fraction = 0.98  # 0 = no averaging
    token_noise: NonNegative = 0.3  # initial std of the token noise, decayed to 0 at 2/3 of the run
    reg_type: Literal["seed", "zero", "none"] = "seed"
    reg_weight: NonNegative = 0.025
    num_augmentations: NonNegativeInt = 8  # K random crops + flips per step; 0 = resize the whole image once
    per_sample_crops: bool = False  # official: one crop per augmentation shared by the whole batch
    optimize_post_quantization: bool = False  # optimise the decoder's input instead of the encoder's output
    precision: Precision = "fp32"  # autocast of decoder + objective; the quantiser always runs in fp32

    @classmethod
    def deterministic(cls, **overrides) -> TokenOptConfig:
        """The official library's plain loop: no noise, EMA, regulariser or crops (the fixture's settings)."""
        return cls(**{"ema_decay": 0.0, "token_noise": 0.0, "reg_type": "none", "reg_weight": 0.0,
                      "num_augmentations": 0, **overrides})
