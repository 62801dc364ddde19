"""The schema of ``references/paper_numbers.yaml``: the papers' numbers and the demo's ground-truth checks.

Validated as ``params.yaml`` is (:mod:`pipeline.params`): pydantic models that forbid unknown keys, and
one error line per bad key with the file, the dotted key (list items named by their ``id``), what was
expected and what was found, for example::

    references/paper_numbers.yaml: experiments.titok.numbers.titok_l32_rfid.tolerence: unknown key (...)

What each field means is documented in the header of the YAML file itself.

Protocols: each number declares the paper's evaluation protocol (:class:`Protocol`) part by part
(:data:`PROTOCOL_PARTS`); the stage that measures it records the protocol it followed in its metrics
file, with the same parts and words, and the report compares the two (:mod:`pipeline.report.evaluate`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from pipeline.params import Section, format_errors

REFERENCES = "references/paper_numbers.yaml"

# The comparisons ``expect.op`` of a ground-truth check may name.
OPS: dict[str, Callable[[Any, Any], bool]] = {"==": operator.eq, ">": operator.gt, ">=": operator.ge,
                                              "<": operator.lt, "<=": operator.le}


UNKNOWN = "unknown"  # a value, or a part of a protocol, that nobody could confirm

# The parts of an evaluation protocol a paper's number and a run's record are compared on, in the order the
# report lists them. The words (one vocabulary for references/paper_numbers.yaml and the metrics files):
#   samples        images scored (generated or reconstructed): 50000 for ImageNet-1k val or ADM's 50k
#   train_samples  images a fitted head (a linear probe) was trained on
#   reference      what the real statistics come from: "same images" (the real images whose reconstructions
#                  are scored), "adm:<file name>" (an ADM reference batch), "<dataset> <split>, <n> images"
#   dataset        the scored images: "<dataset> <split>, <k> classes" (dataset imagenet or demo); for
#                  generation, the prompted classes: "<dataset>, <k> classes"
#   image_size     side of the scored images, pixels
#   crop           how they were cut from the source: "center" (short side resized to image_size, central
#                  square), "center-no-resize" (central square of the unresized image), "none" (rendered at size)
#   uint8          how scored images were brought to 8 bits: "round" (nearest level), "truncate" (floor),
#                  "none" (scored as floats)
#   features       the feature extractor: "inception" (pool_3 of the 2015-12-05 TF Inception, as ADM's
#                  evaluator, pytorch-fid and torch-fidelity's inception-v3-compat), "clip:<model name>"
PROTOCOL_PARTS = ("samples", "train_samples", "reference", "dataset", "image_size", "crop", "uint8", "features")
Crop = Literal["center", "center-no-resize", "none"]
Uint8 = Literal["round", "truncate", "none"]


class ReferencesError(ValueError):
    """The references file is invalid; the message lists every offending key."""


def _number(value: Any) -> Any:
    # YAML booleans are ints to Python: a `true` where a number belongs is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, found {value!r} ({type(value).__name__})")
    return value


def _number_or_unknown(value: Any) -> Any:
    if value == "unknown":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number or 'unknown', found {value!r} ({type(value).__name__})")
    return value


def _count_or_unknown(value: Any) -> Any:
    if value == UNKNOWN:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer or 'unknown', found {value!r} ({type(value).__name__})")
    return value


# int or float as written (report.json keeps 7 as 7, not 7.0), never a bool.
NonNegative = Annotated[int | float, BeforeValidator(_number), Field(ge=0)]
Positive = Annotated[int | float, BeforeValidator(_number), Field(gt=0)]
CountOrUnknown = Annotated[int | Literal["unknown"], BeforeValidator(_count_or_unknown)]


class Tolerance(Section):
    """``{abs: x}`` or ``{rel: x}``: ``|reproduced - paper| <= abs``, or ``<= rel * |paper|``."""

    abs: NonNegative | None = None
    rel: NonNegative | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Tolerance:
        if (self.abs is None) == (self.rel is None):
            raise ValueError("expected exactly one of {abs: x} or {rel: x}")
        return self


class Metric(Section):
    """Where this pipeline measures a number: a key of a stage's record, its ``details.json`` (relative to
    ``paths.results``; the stage's ``metrics.json`` holds only a headline under flat names)."""

    stage: str
    file: str
    key: str
    scale: Positive = 1
    space: str | None = None
    chance: str | None = None
    protocol: str | None = None  # dotted key of the run's protocol record in the same file


class Protocol(Section):
    """The paper's evaluation protocol for one number: prose, where the facts come from, and its parts.

    A part left out does not apply to the number (it is not compared); ``unknown`` applies but nobody
    could confirm it, so no run can be shown to match it.
    """

    text: str
    source: str
    samples: CountOrUnknown | None = None
    train_samples: CountOrUnknown | None = None
    reference: str | None = None
    dataset: str | None = None
    image_size: CountOrUnknown | None = None
    crop: Literal[Crop, "unknown"] | None = None  # one Literal: one error line that lists every word
    uint8: Literal[Uint8, "unknown"] | None = None
    features: str | None = None

    def parts(self) -> dict[str, Any]:
        """The declared parts, in :data:`PROTOCOL_PARTS` order."""
        return {k: getattr(self, k) for k in PROTOCOL_PARTS if getattr(self, k) is not None}


class Comparable(Section):
    """What the measured value must be about besides the protocol: keys of its metrics file and their values."""

    requires: dict[str, Any] = {}


class Number(Section):
    """One number of a paper, with its source, protocol and tolerance."""

    id: str
    what: str
    value: Annotated[int | float | Literal["unknown"], BeforeValidator(_number_or_unknown)]
    unit: str | None = None
    source: str
    protocol: Protocol
    tolerance: Tolerance | None = None
    better: Literal["lower", "higher"] | None = None
    metric: Metric | None = None
    measures: dict[str, Any] = {}
    comparable: Comparable = Comparable()

    @model_validator(mode="after")
    def _known_value_has_tolerance(self) -> Number:
        if self.value != UNKNOWN and self.tolerance is None:
            raise ValueError("tolerance: missing ({abs: x} or {rel: x} is needed to compare a known value)")
        return self

    @model_validator(mode="after")
    def _measured_value_has_a_protocol(self) -> Number:
        # Without declared parts and the run's record every run would "match": a measured known value needs both.
        if self.value != UNKNOWN and self.metric is not None:
            if not self.protocol.parts():
                raise ValueError(f"protocol: declares none of {', '.join(PROTOCOL_PARTS)} (a measured number is "
                                 "compared only on the parts its protocol declares)")
            if self.metric.protocol is None:
                raise ValueError("metric.protocol: missing (the key of the run's protocol record in the metrics file)")
        return self


class Experiment(Section):
    """One paper: its numbers and the stages whose figures the report shows beside them."""

    id: str
    title: str
    stages: list[str] = []
    numbers: list[Number] = Field(min_length=1)


class Expect(Section):
    """What a ground-truth check expects: ``op`` against a constant ``value`` or another ``key`` of the file."""

    op: str
    value: Any = None
    key: str | None = None

    @field_validator("op")
    @classmethod
    def _known_op(cls, op: str) -> str:
        if op not in OPS:
            raise ValueError(f"expected one of {', '.join(OPS)}, found {op!r}")
        return op

    @model_validator(mode="after")
    def _value_or_key(self) -> Expect:
        if len({"value", "key"} & self.model_fields_set) != 1:
            raise ValueError("expected exactly one of value (a constant) or key (another key of the file)")
        return self


class Check(Section):
    """A claim of a paper checked against the demo's ground truth; ``key`` may hold one ``*``."""

    id: str
    title: str
    claim: str = ""
    stage: str
    file: str
    key: str
    expect: Expect
    show: dict[str, str] = {}


class GroundTruth(Section):
    """The ground-truth checks and the profiles they apply at."""

    profiles: list[str] = Field(default_factory=lambda: ["demo"], min_length=1)
    checks: list[Check] = []


class References(Section):
    """The whole file."""

    version: Literal[1] = Field(1, alias="schema")
    experiments: list[Experiment] = []
    ground_truth_checks: GroundTruth = GroundTruth()

    @field_validator("experiments")
    @classmethod
    def _unique_ids(cls, experiments: list[Experiment]) -> list[Experiment]:
        # ids key summary.json and the rows of report.md: two alike would silently merge
        experiment_of: dict[str, str] = {}  # number id -> the experiment it was first seen in
        for i, exp in enumerate(experiments):
            if any(e.id == exp.id for e in experiments[:i]):
                raise ValueError(f"experiment id {exp.id!r} is used twice")
            for n in exp.numbers:
                if n.id in experiment_of:
                    raise ValueError(f"number id {n.id!r} is used twice (in {experiment_of[n.id]} and {exp.id})")
                experiment_of[n.id] = exp.id
        return experiments


def load_references(path: str | Path) -> References:
    """Read and validate a references file; :class:`ReferencesError` names the file and every bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReferencesError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ReferencesError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    try:
        return References.model_validate(raw)
    except ValidationError as err:
        raise ReferencesError(format_errors(err, str(path), References, raw)) from None
