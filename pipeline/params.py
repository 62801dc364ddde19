"""The typed schema of ``params.yaml``: types, ranges and cross-field rules.

Defaults are neutral: the paper's settings or the library's defaults. The demo's values, and why each
was chosen, are in ``conf/demo.yaml``; the paper's in ``conf/paper.yaml``.

``params.yaml`` holds the fully resolved parameters that ran, so DVC tracks every value. It is
written by ``python -m pipeline configure <profile>`` from ``conf/<profile>.yaml``
(:mod:`pipeline.profiles`). Every stage validates the file before doing any work: an unknown key, a
wrong type or an out-of-range value stops it with the key's dotted path, what was expected and what
was found.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.experiments.tokenopt_config import TokenOptConfig
from pipeline.train.config import ClipTrainConfig, TrainConfig

PARAMS_FILE = "params.yaml"

PositiveInt = Annotated[int, Field(ge=1)]


# The TiTok names of pipeline.models.registry (a test keeps the two lists equal; the schema does not import
# the models)
TitokName = Literal["titok_s128", "titok_b64", "titok_l32", "titok_bl64_vq8k", "titok_bl128_vq8k", "titok_sl256_vq8k",
                    "titok_ll32_vae", "titok_bl64_vae", "titok_bl128_vae", "titok_demo"]


# Sections that were renamed: old key -> new key. An old params file naming the old key gets one line
# saying so instead of "unknown key".
RENAMED_SECTIONS = {"clip": "train_clip"}  # named after its stage


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
    train_per_class: PositiveInt = 300
    val_per_class: PositiveInt = 30
    ood_per_class: PositiveInt = 10


class ImageNetSource(Section):
    """ImageNet-1k, from a local folder in the official layout or from the Hugging Face hub."""

    root: str | None = None
    hf_dataset: str = "ILSVRC/imagenet-1k"
    splits: list[Literal["train", "val"]] = Field(default_factory=lambda: ["train", "val"], min_length=1)
    class_subset: str | None = None  # text file, one wnid per line (e.g. ALIT's 100 classes)
    max_per_class: PositiveInt | None = None  # first N inputs per class and split, in file order
    synset_mapping: str | None = None  # LOC_synset_mapping.txt; default <root>/LOC_synset_mapping.txt


class Prepare(Section):
    """The ``prepare`` stage: where images come from and how they are stored."""

    source: Literal["demo", "imagenet_folder", "imagenet_hf"] = "demo"
    demo: DemoData = DemoData()
    imagenet: ImageNetSource = ImageNetSource()
    shard_size: PositiveInt = 1000
    workers: PositiveInt = 2
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: Annotated[int, Field(ge=50, le=100)] = 95
    jpeg_draft: bool = True  # reduced-size DCT decoding; false gives ADM's exact pixels (slower)

    @model_validator(mode="after")
    def _source_needs_root(self) -> Prepare:
        if self.source == "imagenet_folder" and not self.imagenet.root:
            raise ValueError("prepare.imagenet.root must name the ImageNet folder when source is imagenet_folder")
        return self


class TokenizerChoice(Section):
    """Which TiTok an experiment reads: ours (``<paths.models>/titok``) or an official snapshot folder."""

    source: Literal["trained", "official"] = "trained"
    folder: str | None = None

    @model_validator(mode="after")
    def _official_needs_folder(self) -> TokenizerChoice:
        if self.source == "official" and not self.folder:
            raise ValueError("folder must name the official checkpoint's snapshot folder (config.json + "
                             "model.safetensors) when source is official")
        return self


class TokenManipulation(Section):
    """The ``token_manipulation`` stage (token-opt E1): which token positions carry which attributes."""

    tokenizer: TokenizerChoice = TokenizerChoice()
    split: Literal["train", "val"] = "val"
    num_images: PositiveInt = 10_000
    attributes: list[str] = Field(default_factory=lambda: ["brightness", "blur", "color_index", "object_count"],
                                  min_length=1)
    bins: Annotated[int, Field(ge=2, le=64)] = 4
    rank_by: Literal["f_ratio", "mutual_information"] = "f_ratio"
    top_k: PositiveInt = 1
    num_pairs: Annotated[int, Field(ge=2)] = 1000
    bootstrap_samples: Annotated[int, Field(ge=100)] = 2000
    # shown in every edit grid beside the top ones; token_manipulation checks them against the loaded tokenizer
    positions_to_edit: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    grid_pairs: PositiveInt = 4
    batch_size: PositiveInt = 128

    @model_validator(mode="after")
    def _no_repeats(self) -> TokenManipulation:
        if len(set(self.positions_to_edit)) != len(self.positions_to_edit):
            raise ValueError(f"positions_to_edit: repeated position in {self.positions_to_edit}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes: repeated name in {self.attributes}")
        return self


class ClipWeights(Section):
    """A pretrained open_clip model from local files (never downloaded)."""

    model: str  # open_clip config name, e.g. ViT-B-32
    tag: str | None = None  # pretrained tag: selects the preprocessing and the download hint only
    weights: str  # checkpoint file, or a folder holding one (an HF snapshot: needed for SigLIP's tokenizer)


class TrainClip(Section):
    """The ``train_clip`` stage and the CLIP models the other stages use (formerly the section ``clip``).

    ``source: train`` (demo): two open_clip configs (names built into open_clip or files
    ``pipeline/models/configs/<name>.json``) trained from random init on the demo captions: ``config``
    is the objective that token optimisation maximises, ``judge_config`` (another image tower, another
    seed) the independent judge that scores the results and whose image space is the demo's FID
    space, the roles SigLIP and Inception play at paper scale. ``source: pretrained`` (paper):
    ``objective`` and ``judge`` are loaded from local weights, nothing is trained.
    """

    source: Literal["train", "pretrained"] = "train"
    config: str = "clip_demo"
    judge_config: str = "clip_judge_demo"
    train: ClipTrainConfig = ClipTrainConfig()
    objective: ClipWeights | None = None
    judge: ClipWeights | None = None
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."], min_length=1)
    eval_images: PositiveInt | None = None  # val images for the zero-shot accuracy (None: all)

    @model_validator(mode="after")
    def _pretrained_needs_weights(self) -> TrainClip:
        if self.source == "pretrained" and (self.objective is None or self.judge is None):
            raise ValueError("train_clip.objective and train_clip.judge must name local weights when "
                             "train_clip.source is pretrained")
        if any("{}" not in t for t in self.templates):
            raise ValueError(f"train_clip.templates: every template needs a {{}} for the class name, "
                             f"found {self.templates}")
        return self


class Fid(Section):
    """FID / IS / precision-recall conventions of the evaluation stages (``pipeline.metrics.fid``)."""

    feature_space: Literal["clip", "inception"] = "inception"  # ADM's Inception, or the judge CLIP's image encoder
    inception_weights: str | None = None  # local file; None: the torch hub cache
    adm_npz: str | None = None  # ADM reference batch (mu, sigma, arr_0); None: statistics of real images
    reference_split: str = "train"  # prepared split the statistics come from when there is no npz
    reference_images: PositiveInt | None = None  # first N images of that split (None: all)
    samples_per_class: PositiveInt = 50  # generated samples per class (ADM: 50 x 1000 classes)
    isc_splits: PositiveInt = 10
    prc_images: PositiveInt = 10_000  # reference images for precision/recall (ADM: the 10k of arr_0)
    batch_size: PositiveInt = 64


class TrainVqgan(Section):
    """The ``train_vqgan`` stage: the 2D VQGAN whose codes are TiTok's proxy codes and ALIT's input.

    ``source: train`` trains ``model`` (a registry name) from scratch; ``source: official`` imports the
    MaskGIT-VQGAN from ``folder`` (an HF snapshot: config.json + model.safetensors / pytorch_model.bin).
    """

    source: Literal["train", "official"] = "train"
    folder: str | None = None
    model: Literal["vqgan_demo", "maskgit_vqgan"] = "maskgit_vqgan"  # registry names (tests/test_params.py)
    optim: TrainConfig = TrainConfig()
    l1: Annotated[float, Field(ge=0)] = 1.0
    l2: Annotated[float, Field(ge=0)] = 1.0
    quantizer_weight: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _official_needs_folder(self) -> TrainVqgan:
        if self.source == "official" and not self.folder:
            raise ValueError("train_vqgan.folder must name the MaskGIT-VQGAN snapshot folder when source is official")
        return self


class TrainTitok(Section):
    """The ``train_titok`` stage: two-stage TiTok (proxy codes, then decoder fine-tuning) or an import.

    ``source: official`` imports a released checkpoint from ``folder`` instead of training one.
    Stage 2 (L2 + perceptual + GAN on pixels) runs when ``stage2.steps > 0``; its perceptual loss
    needs ``perceptual_vgg`` and ``perceptual_lin`` (local LPIPS files) and is off without them.
    A single-stage ``model`` (RGB head: ``*_vq8k``, ``*_vae``) trains those pixel losses in ``stage1``
    (+ ``quantizer_weight`` x VQ loss, or a VAE's KL) and must have ``stage2.steps: 0``; the official
    single-stage runs weight their perceptual term (LPIPS + 0.1 x ConvNeXt; here LPIPS only) by 1.1 and
    the GAN by 0.1 from step 200000.

    Stage 1's loss is ``CE(proxy codes) + quantizer_weight * VQ loss + pixel_weight * L2(pixels)``, the
    pixels being the soft code mix decoded by the frozen VQGAN (the defaults: the paper's 1 and 0; the
    demo's departures and their reasons are in conf/demo.yaml).
    """

    source: Literal["train", "official"] = "train"
    folder: str | None = None
    model: TitokName = "titok_l32"
    stage1: TrainConfig = TrainConfig()
    quantizer_weight: Annotated[float, Field(ge=0)] = 1.0
    pixel_weight: Annotated[float, Field(ge=0)] = 0.0
    stage2: TrainConfig = TrainConfig()
    perceptual_vgg: str | None = None  # torchvision vgg16-397923af.pth (local file)
    perceptual_lin: str | None = None  # LPIPS v0.1 vgg.pth linear layers (local file)
    perceptual_weight: Annotated[float, Field(ge=0)] = 0.1
    gan_weight: Annotated[float, Field(ge=0)] = 0.0
    gan_start: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _official_needs_folder(self) -> TrainTitok:
        if self.source == "official" and not self.folder:
            raise ValueError("train_titok.folder must name the TiTok snapshot folder when source is official")
        if (self.perceptual_vgg is None) != (self.perceptual_lin is None):
            raise ValueError("train_titok.perceptual_vgg and train_titok.perceptual_lin go together: "
                             "set both or neither")
        return self


class EvalTitok(Section):
    """The ``eval_titok`` stage: reconstruction quality on a held-out split."""

    split: Literal["val", "train", "ood"] = "val"
    num_images: PositiveInt | None = None  # first N images of the split (None: all)
    batch_size: PositiveInt = 64
    grid_images: Annotated[int, Field(ge=1, le=64)] = 16


class TrainAlit(Section):
    """The ``train_alit`` stage: ALIT on the base VQGAN in two stages, or an official checkpoint imported.

    ``source: train``: builds ``model`` (an ``ALITConfig`` name) at ``image_size`` on the VQGAN in
    ``vqgan`` (a ``MaskGITVQGAN.from_pretrained`` folder; None: ``<paths.models>/vqgan`` from
    ``train_vqgan``). Stage 1 (latent distillation, VQGAN frozen): per-iteration cross-entropy on the
    VQGAN codes weighted by ``iteration_weights`` + ``code_weight`` * code MSE + ``quantizer_weight`` *
    VQ loss (officially 1 and 1, the defaults; the demo's departures are in conf/demo.yaml).
    Stage 2 (``stage2.steps > 0``): ``l1_weight`` L1 + perceptual (when ``perceptual_vgg`` /
    ``perceptual_lin`` name local LPIPS files) + GAN (``gan_weight > 0``, from step ``gan_start``) on one
    iteration per step, cycling; the VQGAN fine-tunes too when ``train_vqgan``. ``source: official``:
    imports the ALIT checkpoint ``folder`` (config.json + model.safetensors, or an official ``.pth`` as
    pytorch_model.bin).
    Paper values (official run_scripts) are in conf/paper.yaml.
    """

    source: Literal["train", "official"] = "train"
    folder: str | None = None
    # registry names (tests/test_params.py keeps them equal to pipeline.models.alit.ALIT_CONFIGS)
    model: Literal["alit_demo", "alit_small", "alit_base", "alit_semilarge"] = "alit_small"
    vqgan: str | None = None
    stage1: TrainConfig = TrainConfig()
    stage2: TrainConfig = TrainConfig()
    iteration_weights: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [2.5, 2.0, 1.5, 1.25, 1.0, 1.0, 1.0, 1.0],  # official lambda_loss_weight
        min_length=1)  # one per iteration of the model: train_alit checks the count against it
    code_weight: Annotated[float, Field(ge=0)] = 1.0
    quantizer_weight: Annotated[float, Field(ge=0)] = 1.0
    l1_weight: Annotated[float, Field(ge=0)] = 1.0
    perceptual_vgg: str | None = None  # torchvision vgg16-397923af.pth (local file)
    perceptual_lin: str | None = None  # LPIPS v0.1 vgg.pth linear layers (local file)
    perceptual_weight: Annotated[float, Field(ge=0)] = 1.0
    gan_weight: Annotated[float, Field(ge=0)] = 0.0
    gan_start: Annotated[int, Field(ge=0)] = 0
    train_vqgan: bool = True  # official: the VQGAN encoder and decoder fine-tune in stage 2
    hflip: bool = True  # random horizontal flips (the official recipe also crops, scale 0.8-1)

    @model_validator(mode="after")
    def _check(self) -> TrainAlit:
        if self.source == "official" and not self.folder:
            raise ValueError("train_alit.folder must name the official ALIT checkpoint folder when source is "
                             "official")
        if (self.perceptual_vgg is None) != (self.perceptual_lin is None):
            raise ValueError("train_alit.perceptual_vgg and train_alit.perceptual_lin go together: set both or "
                             "neither")
        return self


class AlitProbe(Section):
    """Linear probe of ``eval_alit``: multinomial logistic regression on the quantised 1-D tokens."""

    train_images: PositiveInt | None = None  # first N train images, class-balanced (None: all)
    max_iter: PositiveInt = 100  # L-BFGS iterations
    weight_decay: Annotated[float, Field(ge=0)] = 1e-3


class EvalAlit(Section):
    """The ``eval_alit`` stage: reconstruction vs token count, adaptive length and the analyses.

    ``threshold`` is the adaptive-length error bound in the unit of ``criterion`` on images in [0, 1]:
    mean absolute error per pixel and channel (``l1``; official default 0.07, the paper profile),
    mean squared error (``l2``) or 1 - SSIM (``ssim``, at most 2).
    """

    split: str = "val"
    ood_split: str | None = None  # familiarity (the demo's "ood"); None skips it (no OOD split prepared)
    num_images: PositiveInt | None = None  # first N images of each evaluated split (None: all)
    token_counts: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 96, 128, 160, 192, 224, 256],
                                            min_length=1)
    criterion: Literal["l1", "l2", "ssim"] = "l1"
    threshold: Annotated[float, Field(gt=0)] = 0.07
    probe: AlitProbe = AlitProbe()
    attention_images: PositiveInt = 4
    attention_layer: int = -1  # decoder block whose attention is drawn (official figures: 5 of 0..7)
    batch_size: PositiveInt = 32

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, v: float, info: ValidationInfo) -> float:
        criterion = info.data.get("criterion", "l1")
        limit = 2.0 if criterion == "ssim" else 1.0
        if v > limit:
            raise ValueError(f"expected 0 < threshold <= {limit} for criterion {criterion} (errors of images in "
                             f"[0, 1]), found {v}")
        return v

    @field_validator("token_counts")
    @classmethod
    def _counts_distinct(cls, v: list[int]) -> list[int]:
        # which counts the model reaches is the model's fact: eval_alit checks them against the loaded ALIT
        if len(set(v)) != len(v):
            raise ValueError(f"expected distinct token counts, found {v}")
        return v


class TokenoptEdit(Section):
    """``tokenopt_edit``: every prompt applied to ``num_images`` random images of ``split``."""

    split: str = "val"
    num_images: PositiveInt = 16
    prompts: list[str] = Field(default_factory=lambda: [
        "a photo of a {} in the snow", "a watercolor painting of a {}", "a photo of a {} at night",
        "a pencil sketch of a {}"], min_length=1)  # "{}" becomes the image's class name
    # One negative per prompt ("{}" = class name), pushed away with ``guidance_scale`` (the official loss
    # -cos(x, p) - (1 - scale) cos(x, p_neg); the official code takes one negative for all prompts).
    # None: no negatives (the official default).
    negative_prompts: list[str] | None = None
    guidance_scale: float = 1.0  # only acts with negative prompts

    @model_validator(mode="after")
    def _one_negative_per_prompt(self) -> TokenoptEdit:
        if self.negative_prompts is not None and len(self.negative_prompts) != len(self.prompts):
            raise ValueError(f"tokenopt.edit.negative_prompts: expected one per prompt ({len(self.prompts)}), "
                             f"found {len(self.negative_prompts)}; set it to null for no negatives")
        return self


class TokenoptGenerate(Section):
    """``tokenopt_generate``: ``num_per_class`` images per class from the prompt ``template``.

    ``init: seed`` starts each sample from a seed image: ``seed_set_size`` random images of
    ``seed_split``, matched to the prompt by ``association``; ``init: random`` from N(0, I) tokens.
    ``random_init_too``: with ``init: seed``, also optimise the same prompts from N(0, I) tokens (the
    paper reports both starts), scored as ``optimized_random_init``.
    """

    num_per_class: PositiveInt | None = None  # None: fid.samples_per_class (the ADM protocol's count)
    init: Literal["seed", "random"] = "seed"
    random_init_too: bool = True
    seed_split: str = "train"
    seed_set_size: PositiveInt = 2000
    association: Literal["random", "clip_top1", "clip_top1pct"] = "clip_top1pct"
    template: str = "a photo of a {}"

    @field_validator("template")
    @classmethod
    def _template_has_slot(cls, v: str) -> str:
        if "{}" not in v:
            raise ValueError(f"expected a template with a {{}} for the class name, found {v!r}")
        return v


class TokenoptInpaint(Section):
    """``tokenopt_inpaint``: masked-L1 inpainting of ``num_images`` random images of ``split``, per mask kind.

    ``prompt`` (``{}`` = class name) adds ``clip_weight`` x CLIP to the reconstruction loss. Its loop has
    its own settings: no crops or seed anchor are needed to fill a hole.
    """

    split: str = "val"
    num_images: PositiveInt = 1000
    mask_kinds: list[Literal["center", "boxes", "half"]] = Field(default_factory=lambda: ["center", "boxes", "half"],
                                                                 min_length=1)
    reset_period: Annotated[int, Field(ge=0)] = 5  # re-encode the known region every this many steps
    prompt: str | None = None
    clip_weight: Annotated[float, Field(ge=0)] = 1.0
    optim: TokenOptConfig = TokenOptConfig(reg_type="zero", reg_weight=0.01)  # no seed image to stay near

    @field_validator("mask_kinds")
    @classmethod
    def _distinct_kinds(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"expected distinct mask kinds, found {v}")
        return v


class Tokenopt(Section):
    """The token-optimisation experiments (stages ``tokenopt_edit``, ``tokenopt_generate``, ``tokenopt_inpaint``).

    ``tokenizer``: our TiTok (``<paths.models>/titok``) or an official snapshot folder; ``optim``: the loop
    of editing and generation; ``batch_size``: images optimised together.
    """

    tokenizer: TokenizerChoice = TokenizerChoice()
    optim: TokenOptConfig = TokenOptConfig()
    batch_size: PositiveInt = 64
    edit: TokenoptEdit = TokenoptEdit()
    generate: TokenoptGenerate = TokenoptGenerate()
    inpaint: TokenoptInpaint = TokenoptInpaint()


class Resources(Section):
    """Cluster resources of one stage (SLURM through Snakemake's executor plugin; see the Snakefile).

    ``gpu`` is per node: a stage with ``nodes: 2, gpu: 8`` runs 16 processes, started by
    ``python -m pipeline.launch`` (one ``torchrun`` per node under ``srun``). ``runtime`` is in
    minutes. ``slurm_extra`` is passed to ``sbatch`` as it is, e.g. ``--signal=USR1@300`` so that
    training checkpoints and requeues itself five minutes before the time limit.
    """

    slurm_partition: str | None = None
    gpu: Annotated[int, Field(ge=0)] = 0
    gpu_model: str | None = None
    cpus_per_task: PositiveInt = 1
    mem_mb: PositiveInt = 4000
    runtime: PositiveInt = 30
    nodes: PositiveInt = 1
    slurm_account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    slurm_extra: str | None = None


class Params(Section):
    """Everything in ``params.yaml``."""

    profile: str = "demo"
    seed: Annotated[int, Field(ge=0)] = 0
    image_size: Annotated[int, Field(ge=16, le=1024, multiple_of=16)] = 256
    paths: Paths = Paths()
    prepare: Prepare = Prepare()
    tokenopt: Tokenopt = Tokenopt()
    train_alit: TrainAlit = TrainAlit()
    eval_alit: EvalAlit = EvalAlit()
    train_vqgan: TrainVqgan = TrainVqgan()
    train_titok: TrainTitok = TrainTitok()
    eval_titok: EvalTitok = EvalTitok()
    train_clip: TrainClip = TrainClip()
    fid: Fid = Fid()
    token_manipulation: TokenManipulation = TokenManipulation()
    resources: dict[str, Resources] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _resources_name_stages(cls, v: dict[str, Resources]) -> dict[str, Resources]:
        known = {"default", *stage_names()}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"not a stage: {', '.join(unknown)} (stages: {', '.join(sorted(known))})")
        return v


def stage_names() -> list[str]:
    """The DVC stages that are ``python -m pipeline <stage>`` commands: the modules of ``pipeline/stages``."""
    import pkgutil

    import pipeline.stages

    return sorted(m.name for m in pkgutil.iter_modules(pipeline.stages.__path__) if not m.name.startswith("_"))


def _unwrap(annotation: Any, part: Any) -> Any:
    """The annotation a key ``part`` leads into: ``X | None`` is ``X``, and an index of ``list[X]`` is ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if isinstance(part, int) and typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    return annotation


def section_fields(section: Any) -> dict[str, Any] | None:
    """The fields of a section type: a pydantic model, or a library config that is a pydantic dataclass
    (``TrainConfig``, ...); None for anything else."""
    if isinstance(section, type) and issubclass(section, BaseModel):
        return section.model_fields
    if isinstance(section, type) and dataclasses.is_dataclass(section):
        return getattr(section, "__pydantic_fields__", None)
    return None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The section type that owns the field at ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, part)
        if isinstance(part, int):
            continue
        fields = section_fields(current)
        field = None if fields is None else fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current, None)
    return current if section_fields(current) is not None else None


def _dotted(loc: tuple[Any, ...], raw: Any) -> str:
    """``loc`` as a dotted key; a list index shows the ``id`` of the item in ``raw`` when it has one, since a
    reader finds ``experiments.titok`` in the file and has to count to find ``experiments.0``."""
    parts = []
    for part in loc:
        item = raw[part] if isinstance(raw, list) and isinstance(part, int) and part < len(raw) else (
            raw.get(part) if isinstance(raw, dict) else None)
        shown = item.get("id") if isinstance(part, int) and isinstance(item, dict) else None
        parts.append(str(shown) if isinstance(shown, str) else str(part))
        raw = item
    return ".".join(parts)


def format_errors(err: ValidationError, source: str, model: type[BaseModel] | None = None, raw: Any = None) -> str:
    """Render pydantic errors as ``<file>: <dotted.key>: expected ..., found ...`` lines.

    ``model`` is the schema that was validated (default :class:`Params`), ``raw`` the input (optional: it
    names list items by their ``id``).
    """
    model = model or Params
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after",))
        dotted = _dotted(loc, raw) or "(top level)"
        if e["type"] == "extra_forbidden" and model is Params and len(loc) == 1 and loc[0] in RENAMED_SECTIONS:
            new = RENAMED_SECTIONS[loc[0]]
            lines.append(f"{source}: {loc[0]}: this section was renamed to {new}; rename the key {loc[0]}: to {new}: "
                         f"(and {loc[0]}.KEY to {new}.KEY in --set / dvc exp run -S overrides)")
            continue
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # (the latter: a dataclass section)
            owner = _model_at(model, loc[:-1])
            allowed = ", ".join(f.alias or name for name, f in section_fields(owner).items()) if owner else (
                f"see {model.__module__.replace('.', '/')}.py")
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


def missing_keys(model: Any, raw: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the validated ``model`` that ``raw`` does not spell out (nested sections included)."""
    missing = []
    for name in section_fields(type(model)):
        if name not in raw:
            missing.append(prefix + name)
            continue
        value = getattr(model, name)
        if section_fields(type(value)) is not None and isinstance(raw[name], dict):
            missing += missing_keys(value, raw[name], f"{prefix}{name}.")
    return missing


def load(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``, which must hold every key: it is the record of what ran.

    A key left out would silently take a schema default that may match no profile, and the record
    would no longer say what ran; ``configure`` writes them all.
    """
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found. Run `python -m pipeline configure demo` to write it.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    params = validate(raw, str(path))
    missing = missing_keys(params, raw)
    if missing:
        raise ParamsError("\n".join(
            f"{path}: {key}: missing (params.yaml must hold every parameter; write them all with "
            f"`python -m pipeline configure {params.profile}`, adding your changes as --set KEY=VALUE)"
            for key in missing))
    return params
