"""The typed schema of ``params.yaml`` and the profiles it is generated from.

``params.yaml`` holds the fully resolved parameters that ran, so DVC tracks every value. It is
written by ``python -m pipeline configure <profile>`` from ``conf/<profile>.yaml``: ``demo.yaml`` is the
complete base; other profiles name a base with ``extends:`` and override only what differs. Every stage
validates the file before doing any work: an unknown key, a wrong type or an out-of-range value stops
it with the key's dotted path, what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

PositiveInt = Annotated[int, Field(ge=1)]


class ParamsError(ValueError):
    """``params.yaml`` (or a profile) is invalid; the message lists every offending key."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Where stages read and write, relative to the repository root."""

    data: str = "data"
    models: str = "models"
    results: str = "results"
    weights: str = "weights"


class DemoData(Section):
    """The procedurally generated demo dataset (deterministic given ``seed``)."""

    num_classes: Annotated[int, Field(ge=10, le=20)] = 10
    train_per_class: PositiveInt = 120
    val_per_class: PositiveInt = 20
    ood_per_class: PositiveInt = 10


class ImageNetSource(Section):
    """ImageNet-1k, from a local folder in the official layout or from the Hugging Face hub."""

    root: str | None = None
    hf_dataset: str = "ILSVRC/imagenet-1k"
    splits: list[Literal["train", "val"]] = Field(default_factory=lambda: ["train", "val"], min_length=1)
    class_subset: str | None = None
    max_per_class: PositiveInt | None = None


class Prepare(Section):
    """The ``prepare`` stage: where images come from and how they are stored."""

    source: Literal["demo", "imagenet_folder", "imagenet_hf"] = "demo"
    demo: DemoData = DemoData()
    imagenet: ImageNetSource = ImageNetSource()
    shard_size: PositiveInt = 1000
    workers: PositiveInt = 2
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: Annotated[int, Field(ge=50, le=100)] = 95

    @model_validator(mode="after")
    def _source_needs_root(self) -> Prepare:
        if self.source == "imagenet_folder" and not self.imagenet.root:
            raise ValueError("prepare.imagenet.root must name the ImageNet folder when source is imagenet_folder")
        return self


class Resources(Section):
    """Cluster resources of one stage (SLURM through Snakemake's executor plugin)."""

    slurm_partition: str | None = None
    gpu: Annotated[int, Field(ge=0)] = 0
    gpu_model: str | None = None
    cpus_per_task: PositiveInt = 1
    mem_mb: PositiveInt = 4000
    runtime: PositiveInt = 30
    nodes: PositiveInt = 1
    slurm_account: str | None = None
    qos: str | None = None


class Params(Section):
    """Everything in ``params.yaml``."""

    profile: str = "demo"
    seed: Annotated[int, Field(ge=0)] = 0
    image_size: Annotated[int, Field(ge=16, le=1024, multiple_of=16)] = 64
    paths: Paths = Paths()
    prepare: Prepare = Prepare()
    resources: dict[str, Resources] = Field(default_factory=dict)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_errors(err: ValidationError, source: str) -> str:
    """Render pydantic errors as ``<file>: <dotted.key>: expected ..., found ...`` lines."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after",))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(Params, loc[:-1])
            allowed = ", ".join(owner.model_fields) if owner else "see pipeline/params.py"
            lines.append(f"{source}: {dotted}: unknown key (allowed here: {allowed})")
            continue
        expected = e["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        found = e.get("input")
        found_s = "nothing (key missing)" if e["type"] == "missing" else f"{found!r} ({type(found).__name__})"
        if e["type"] == "value_error":
            lines.append(f"{source}: {dotted or '(top level)'}: {expected}")
        else:
            lines.append(f"{source}: {dotted}: expected {expected}, found {found_s}")
    return "\n".join(lines)


def validate(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; raise :class:`ParamsError` naming every bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, found {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found. Run `python -m pipeline configure demo` to write it.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return validate(raw, str(path))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_profile(name: str, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The complete parameters of profile ``name``, following its ``extends:`` chain."""
    path = conf_dir / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in conf_dir.glob("*.yaml")))
        raise ParamsError(f"{path}: no such profile (known profiles: {known})")
    raw = yaml.safe_load(path.read_text()) or {}
    base_name = raw.pop("extends", None)
    resolved = _deep_merge(resolve_profile(base_name, conf_dir), raw) if base_name else raw
    resolved["profile"] = name
    return resolved


def set_dotted(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to ``raw`` in place."""
    key, sep, value = assignment.partition("=")
    if not sep:
        raise ParamsError(f"override {assignment!r}: expected key=value")
    node = raw
    *parents, leaf = key.strip().split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {assignment!r}: {p} is not a section")
    node[leaf] = yaml.safe_load(value)


def dump(params: Params) -> str:
    """Serialise validated params as the YAML written to ``params.yaml``."""
    header = (f"# Generated by `python -m pipeline configure {params.profile}` from conf/{params.profile}.yaml.\n"
              "# Holds the full resolved parameters that DVC tracks; edit conf/ and re-run configure,\n"
              "# or edit values here directly (every stage validates this file before it runs).\n")
    return header + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
