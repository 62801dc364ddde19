"""Stage ``eval_tokenopt``: FID / IS / precision-recall, CLIP and judge scores of the token-optimisation results.

Reads the images of ``tokenopt_generate``, ``tokenopt_edit`` and ``tokenopt_inpaint``
(``<paths.data>/tokenopt/<stage>/``) and scores them:

- **generation**, for the optimised images (and ``optimized_random_init``, the same prompts optimised
  from N(0, I) tokens, when ``tokenopt_generate`` ran it) and, on the same prompts, the baselines: ``seeds`` (the
  seed image the association picks, not optimised), ``seed_reconstructions`` (its TiTok decode, the
  loop's start with ``init: seed``), ``random_tokens`` (decodes of N(0, I) tokens) and ``real_val``
  (as many real val images, scored against their own class): FID, IS and precision/recall
  (:func:`pipeline.metrics.fid.fidelity_metrics`, ADM protocol: ``fid_num_samples(params)`` samples,
  or all generated ones when fewer were generated, as ``num_samples`` says), the CLIP score of the
  objective CLIP and of the judge (SigLIP at paper scale) against the prompt, and the judge's zero-shot
  top-1 accuracy on the prompted class;
- **editing**: CLIP and judge scores against the prompt before (the source image) and after, the
  fraction of edits that raised the score, and PSNR of the edit to its source; per prompt and overall;
  for prompts that ask for brightness ("bright" / "dark",
  :func:`pipeline.metrics.tokenopt_scores.brightness_direction`), the measured mean brightness before and
  after and the fraction of images moved in the prompted direction;
- **inpainting**, per mask kind, for the result (known pixels pasted back) and the loop's start: FID,
  and L1 / PSNR on the filled region against the original; PSNR of the raw decode on the known region.

FID reference statistics: the ADM reference batch when ``fid.adm_npz`` is set, otherwise the
``fid.reference_split`` images, cached in ``<paths.data>/tokenopt/fid_reference.npz`` (an output of this
stage). In the demo the judge is the second CLIP that ``train_clip`` trains (another image tower and
seed; no optimisation sees it) and the feature space is the judge's, so demo FDs compare the rows
with each other only. ``judge_independent`` records that judge and objective are different models. The
``seeds`` baseline is drawn from ``tokenopt.generate.seed_split``; when that is also the reference split,
its FID is optimistic (the seeds are reference images).

The scoring engine is :mod:`pipeline.metrics.tokenopt_scores`; this stage reads params.yaml and the samples.
``protocol`` records the protocol each score followed (``generate``, ``clip_score``, ``judge_score``,
``inpaint.<mask kind>``) for the report to compare with the paper's.

Writes ``<paths.results>/eval_tokenopt/details.json`` (all of the above), ``metrics.json`` (its headline,
DVC metrics: ``HEADLINE`` and the hole PSNR per mask kind) and ``generation.csv`` (one row per generation
method, a DVC plot); logs them to MLflow. No timings in the outputs.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import InputError
from pipeline.io import write_metrics, write_text
from pipeline.layout import fid_reference_cache, results_dir
from pipeline.metrics.fid import fidelity_protocol
from pipeline.metrics.tokenopt_scores import Scorer, editing_scores, inpainting_scores
from pipeline.params import Params
from pipeline.stages import _tokenopt
from pipeline.stages._inputs import (
    class_names,
    data_protocol,
    feature_space,
    fid_num_samples,
    fid_reference,
    judge_clip,
    objective_clip,
    reference_label,
)
from pipeline.tracking import stage_run

STAGE = "eval_tokenopt"
REAL_SPLIT = "val"
GENERATION_COLUMNS = ("fid", "isc_mean", "precision", "recall", "clip_score", "judge_score", "judge_zero_shot_top1")


def _generation(params: Params, scorer: Scorer, names: list[str]) -> dict:
    arrays, records = _tokenopt.load_samples(params, "tokenopt_generate")
    protocol = fid_num_samples(params)
    n = min(len(records), protocol)
    keep = np.arange(len(records))
    if len(records) > protocol:  # more than the protocol asks for: a fixed random subset
        keep = np.sort(np.random.default_rng(params.seed).choice(len(records), protocol, replace=False))
    labels = arrays["labels"][keep]
    prompts = [records[i]["prompt"] for i in keep]
    out: dict = {"num_samples": n, "protocol_num_samples": protocol, "init": records[0]["init"],
                 "image_size": int(arrays["images"].shape[1]), "methods": {}}
    for method, key in (("optimized", "images"), ("optimized_random_init", "images_random_init"), ("seeds", "seeds"),
                        ("seed_reconstructions", "seed_reconstructions"), ("random_tokens", "random_tokens")):
        if key in arrays:
            out["methods"][method] = scorer.generation_row(arrays[key][keep], labels, prompts)
    try:
        real = _tokenopt.sample_split(params, REAL_SPLIT, n, params.seed, "the real_val baseline")
    except InputError as err:  # no val split, or a smaller one: the real row is left out, and why is recorded
        out["methods"]["real_val"] = {"skipped": str(err)}
    else:
        prompts_real = [params.tokenopt.generate.template.format(names[int(c)]) for c in real.labels]
        out["methods"]["real_val"] = scorer.generation_row(real.images, real.labels, prompts_real)
    return out


def _editing(params: Params, scorer: Scorer) -> dict:
    return editing_scores(scorer, *_tokenopt.load_samples(params, "tokenopt_edit"))


def _inpainting(params: Params, scorer: Scorer) -> dict:
    return inpainting_scores(scorer, *_tokenopt.load_samples(params, "tokenopt_inpaint"))


def _protocols(params: Params, scorer: Scorer, generate: dict, inpaint: dict) -> dict[str, dict]:
    """The protocol each score followed, for the report to compare with the paper's.

    ``generate``: FID / IS / precision-recall of the generated images (``num_samples`` of them, against
    :func:`fid_reference`); ``clip_score`` / ``judge_score``: the same images scored by the objective
    CLIP and by the judge; ``inpaint.<mask kind>``: the FID of the composites, on the inpainted split.
    """
    reference = reference_label(params, scorer.reference)
    classes = {"dataset": data_protocol(params, None)["dataset"], "image_size": generate["image_size"]}
    n = generate["num_samples"]
    inpainted = data_protocol(params, params.tokenopt.inpaint.split)
    return {"generate": fidelity_protocol(scorer.space, n, reference) | classes,
            "clip_score": {"samples": n, **classes, "features": f"clip:{scorer.objective.name}"},
            "judge_score": {"samples": n, **classes, "features": f"clip:{scorer.judge.name}"},
            "inpaint": {kind: fidelity_protocol(scorer.space, row["num_images"], reference) | inpainted
                        | {"image_size": row["image_size"]} for kind, row in inpaint.items()}}


def _finite(obj):
    """JSON-safe: non-finite floats (a PSNR of identical images, say) become None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# metrics.json (what `dvc metrics show` prints): flat name -> dotted key of details.json; the judge's accuracy
# on the prompted class for the optimised images and the baselines they must beat (chance, the seed images,
# real images: the ceiling), their FD, and how often edits went the prompted way.
HEADLINE = {"fid": "generate.methods.optimized.fid",
            "judge_top1": "generate.methods.optimized.judge_zero_shot_top1",
            "judge_top1_random_init": "generate.methods.optimized_random_init.judge_zero_shot_top1",
            "judge_top1_seeds": "generate.methods.seeds.judge_zero_shot_top1",
            "judge_top1_real": "generate.methods.real_val.judge_zero_shot_top1",
            "chance": "chance",
            "edit_judge_improved": "edit.overall.judge_improved_fraction",
            "edit_brightness_as_prompted": "edit.overall.brightness_as_prompted_fraction"}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def run(params: Params) -> int:
    """Score the token-optimisation outputs (FID, IS, precision/recall, CLIP, judge) against baselines."""
    for stage in ("tokenopt_generate", "tokenopt_edit", "tokenopt_inpaint"):
        _tokenopt.check_samples(params, stage)
    dev = str(_tokenopt.device())
    names = class_names(params)
    objective = objective_clip(params, dev)
    judge = judge_clip(params, dev)
    space = feature_space(params, judge)
    reference = fid_reference(params, space, fid_reference_cache(params))
    scorer = Scorer(objective, judge, space, reference, names, params.train_clip.templates,
                    isc_splits=params.fid.isc_splits, batch_size=params.fid.batch_size)

    with stage_run(STAGE, params) as mlrun:
        generate, inpaint = _generation(params, scorer, names), _inpainting(params, scorer)
        metrics = _finite({
            "feature_space": space.label or space.name,
            "judge": judge.name, "judge_independent": judge.name != objective.name,
            "reference": {"source": reference.source, "num_images": reference.num_images}, "chance": 1 / len(names),
            "generate": generate, "edit": _editing(params, scorer), "inpaint": inpaint,
            "protocol": _protocols(params, scorer, generate, inpaint)})
        out = results_dir(params, STAGE)
        write_metrics(out, metrics, HEADLINE | {f"inpaint_{kind}_psnr_hole": f"inpaint.{kind}.result.psnr_hole"
                                                for kind in metrics["inpaint"]})
        methods = metrics["generate"]["methods"]
        table = "method," + ",".join(GENERATION_COLUMNS) + "\n" + "".join(
            f"{m}," + ",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in GENERATION_COLUMNS) + "\n"
            for m, row in methods.items() if "skipped" not in row)
        write_text(out / "generation.csv", table)
        edit = metrics["edit"]  # prompts are no MLflow metric names: numbered in prompt order there
        mlrun.log_metrics({"generate": metrics["generate"], "inpaint": metrics["inpaint"],
                           "edit": {"overall": edit["overall"]} | {f"prompt_{i}": v for i, v in
                                                                   enumerate(edit["per_prompt"].values())}})
        mlrun.log_artifact(out / "details.json", STAGE)
        mlrun.log_artifact(out / "generation.csv", STAGE)

    g = metrics["generate"]
    print(f"{STAGE}: generation on {g['num_samples']} samples (protocol {g['protocol_num_samples']}), "
          f"chance {metrics['chance']:.3f}")
    for m, row in g["methods"].items():
        if "skipped" not in row:
            print(f"  {m:22s} " + "  ".join(f"{c} {_fmt(row.get(c))}" for c in GENERATION_COLUMNS))
    e = metrics["edit"]["overall"]
    print(f"  edit: CLIP {_fmt(e['clip_before'])} -> {_fmt(e['clip_after'])} (improved in "
          f"{_fmt(e['clip_improved_fraction'])}), judge {_fmt(e['judge_before'])} -> {_fmt(e['judge_after'])}, "
          f"PSNR to source {_fmt(e['psnr_to_source'])} dB, brightness as prompted in "
          f"{_fmt(e['brightness_as_prompted_fraction'])}")
    for kind, row in metrics["inpaint"].items():
        start, result = row["start"], row["result"]
        print(f"  inpaint {kind}: hole PSNR {_fmt(start['psnr_hole'])} -> {_fmt(result['psnr_hole'])} dB, "
              f"hole L1 {_fmt(start['l1_hole'])} -> {_fmt(result['l1_hole'])}, "
              f"FID {_fmt(start['fid'])} -> {_fmt(result['fid'])}")
    return 0
