"""Stage ``train_clip``: the CLIP models of the token-optimisation experiments and their evaluation.

Demo (``train_clip.source: train``): trains two open_clip models from random init, contrastively on the
captions of the prepared train split with the UniCL class-prompt term (:mod:`pipeline.train.clip`):
the objective ``train_clip.config`` (``pipeline/models/configs/clip_demo.json``, seed ``seed``) and the
independent judge ``train_clip.judge_config`` (``clip_judge_demo.json``: another image tower, seed
``seed + 1``), and measures each one's zero-shot accuracy on the val split with the prompts
``train_clip.templates`` over the class names. Writes ``<paths.models>/clip/`` (the objective) and
``<paths.models>/clip/judge/`` (the judge) atomically, each in open_clip's ``local-dir`` layout
(``open_clip_model.safetensors`` + ``open_clip_config.json``). Each image is trained with its caption
and shorter ones built from its recorded factors (:func:`pipeline.data.demo.caption_variants`).

Paper (``train_clip.source: pretrained``): trains nothing. It checks that the objective (ViT-B-32
``laion2b_s34b_b79k``) and the judge (SigLIP) weights exist and load into their configs, and measures
both models' zero-shot accuracy on the first ``train_clip.eval_images`` val images, so that a wrong or damaged
file shows up here as a low number rather than later as strange optimisation results.
``<paths.models>/clip/pretrained.json`` records which files were checked (the weights stay where
params.yaml says; they are not copied).

Both write, under ``<paths.results>/train_clip/``, ``details.json`` (everything: ``zero_shot_top1`` is the
objective's, ``judge.zero_shot_top1`` the judge's), ``metrics.json`` (its headline, DVC metrics) and the
training curves ``curve_objective.csv`` and ``curve_judge.csv`` (DVC plots: the loss every
``LOG_EVERY`` steps, as logged to MLflow, with images/s; header only when nothing was trained), and log to
MLflow.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from pipeline.data.demo import caption_variants
from pipeline.data.shards import load_split
from pipeline.io import atomic_dir, write_curve, write_metrics
from pipeline.layout import JUDGE_SUBDIR, prepared_root, results_dir, trained_clip_dir
from pipeline.metrics.clip_score import zero_shot_accuracy
from pipeline.models import count_parameters
from pipeline.models.clip import ClipModel, create_clip, load_clip, save_clip
from pipeline.params import Params
from pipeline.side_by_side import run_jobs
from pipeline.stages._inputs import class_names
from pipeline.tracking import stage_run
from pipeline.train.clip import ClipTrainResult, train_clip
from pipeline.train.config import ClipTrainConfig

STAGE = "train_clip"
LOG_EVERY = 10  # steps between two points of the training curves (MLflow and curve_<role>.csv)
ROLES = ("objective", "judge")
# metrics.json (what `dvc metrics show` prints): flat name -> dotted key of details.json, for either source
# (judge_top1: the judge's zero-shot top-1, as in eval_tokenopt's metrics.json, there on generated images)
HEADLINE = {"parameters": "parameters", "steps": "steps", "loss": "final_loss", "zero_shot_top1": "zero_shot_top1",
            "judge_top1": "judge.zero_shot_top1", "chance": "chance"}
HEADLINE_PRETRAINED = {"parameters": "objective.parameters", "zero_shot_top1": "objective.zero_shot_top1",
                       "judge_top1": "judge.zero_shot_top1", "chance": "chance"}


def _val(params: Params):
    return load_split(prepared_root(params), "val", limit=params.train_clip.eval_images)


def _train_one(images: torch.Tensor, labels: torch.Tensor, captions: list[list[str]], label_texts: list[str],
               config: str, seed: int, settings: ClipTrainConfig, role: str) -> tuple[ClipModel, ClipTrainResult]:
    """Train the open_clip config ``config`` from seed ``seed`` (``settings``: the ``train_clip.train`` section).

    A worker of :func:`pipeline.side_by_side.run_jobs`: plain arguments in, the model and its loss curve out.
    """
    torch.manual_seed(seed)
    clip = create_clip(config)
    cfg = replace(settings, batch_size=min(settings.batch_size, len(captions)))
    result = train_clip(clip, images, captions, cfg, seed=seed, labels=labels, label_texts=label_texts, progress=role)
    return clip, result


def _train(params: Params, run) -> tuple[dict, dict[str, list[dict]]]:
    c = params.train_clip
    train = load_split(prepared_root(params), "train")
    names = class_names(params)
    data = (torch.from_numpy(train.images), torch.from_numpy(train.labels), [caption_variants(m) for m in train.meta],
            [c.templates[0].format(n) for n in names])
    settings = c.train
    roles = {"objective": (c.config, params.seed), "judge": (c.judge_config, params.seed + 1)}
    trained = run_jobs([(_train_one, (*data, config, seed, settings, role)) for role, (config, seed) in roles.items()])
    val = _val(params)
    images, labels = torch.from_numpy(val.images), torch.from_numpy(val.labels)
    metrics, curves = {}, {}
    for (role, (config, seed)), (clip, result) in zip(roles.items(), trained, strict=True):
        curves[role] = result.curve(LOG_EVERY)
        run.log_curve(curves[role], prefix=f"{role}/")
        # Timings go to MLflow (and images/s to the curves, plots): metrics.json and details.json stay
        # byte-identical across runs with the same seed.
        run.log_metrics({f"{role}/train_seconds": result.seconds, f"{role}/train_cpu_seconds": result.cpu_seconds,
                         f"{role}/logit_scale": clip.model.logit_scale.exp().item()})
        tail = result.losses[-min(10, len(result.losses)):]
        metrics[role] = {"model": config, "seed": seed, "parameters": count_parameters(clip),
                         "train_images": len(data[2]), "steps": result.steps,
                         "initial_loss": result.losses[0], "final_loss": sum(tail) / len(tail),
                         "val_images": len(labels),
                         "zero_shot_top1": zero_shot_accuracy(clip, images, labels, names, c.templates)}
    (objective, _), (judge, _) = trained
    with atomic_dir(trained_clip_dir(params)) as tmp:
        save_clip(objective, tmp)
        save_clip(judge, tmp / JUDGE_SUBDIR)
    return {"source": "train", **metrics["objective"], "chance": 1 / len(names), "judge": metrics["judge"]}, curves


def _pretrained(params: Params) -> dict:
    c = params.train_clip
    val = _val(params)
    names = class_names(params)
    images, labels = torch.from_numpy(val.images), torch.from_numpy(val.labels)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict = {"source": "pretrained", "val_images": len(labels), "chance": 1 / len(names)}
    checked = {}
    for role, w in (("objective", c.objective), ("judge", c.judge)):
        clip = load_clip(w.model, w.weights, tag=w.tag, device=device)  # raises MissingWeightsError
        out[role] = {"model": w.model, "tag": w.tag, "parameters": count_parameters(clip),
                     "zero_shot_top1": zero_shot_accuracy(clip, images, labels, names, c.templates),
                     "zero_shot_top5": zero_shot_accuracy(clip, images, labels, names, c.templates, top_k=5)}
        checked[role] = {"model": w.model, "tag": w.tag, "weights": str(w.weights)}
        del clip
    with atomic_dir(trained_clip_dir(params)) as tmp:
        (tmp / "pretrained.json").write_text(json.dumps(checked, indent=2) + "\n")
    return out


def run(params: Params) -> int:
    """Train the demo CLIP (or check the pretrained ones) and write it with its zero-shot accuracy."""
    results = results_dir(params, STAGE)
    with stage_run(STAGE, params) as run:
        if params.train_clip.source == "train":
            metrics, curves = _train(params, run)
        else:
            metrics, curves = _pretrained(params), {}
        for role in ROLES:
            write_curve(results / f"curve_{role}.csv", curves.get(role, []))
        write_metrics(results, metrics, HEADLINE if params.train_clip.source == "train" else HEADLINE_PRETRAINED)
        run.log_metrics({k: v for k, v in metrics.items() if k not in ("source", "model")})
    top1 = metrics.get("zero_shot_top1", metrics.get("objective", {}).get("zero_shot_top1"))
    print(f"train_clip: zero-shot top-1 on val: objective {top1:.3f}, judge {metrics['judge']['zero_shot_top1']:.3f} "
          f"(chance {metrics['chance']:.3f})")
    return 0
