"""Stage ``eval_alit``: ALIT's reconstruction at every token count and at the adaptive length, and the
paper's analyses (complexity, familiarity, task, token specialisation).

Reads ``<paths.models>/alit`` (from ``train_alit``) and the prepared splits. On the first
``eval_alit.num_images`` images of ``eval_alit.split`` (val):

- L1, PSNR and rFID at each of ``token_counts`` (one rollout per batch gives all of them) and at the
  adaptive length (per image: the fewest tokens whose ``criterion`` error is under ``threshold``,
  :mod:`pipeline.models.alit_adaptive`). rFID is the FID between the reconstructions and the same real
  images in the ``fid.feature_space`` (the demo judge CLIP; ADM's Inception at paper scale); L1 and PSNR
  carry 95% intervals over images, and the judge (``train_clip``'s: the demo judge CLIP, SigLIP at
  paper scale) classifies every reconstruction (``judge_top1`` with its interval; ``originals``: the
  judge on the images themselves);
- complexity: Spearman correlation of the adaptive count with the PNG bits per pixel of the input and,
  on the demo, with the generator's ``complexity`` score (edge density);
- familiarity: the same adaptive count, L1 and rFID on ``ood_split`` (demo: unseen colours and
  textures) against the in-distribution split;
- task: linear-probe class accuracy from the quantised 1-D tokens at each count (train on the train
  split's tokens, test on the evaluated split's);
- token specialisation: the attention of one decoder block from the grid positions to each
  iteration's 32 tokens, at the last iteration;
- ``protocol``: the protocol each kind of score followed (``rfid``, ``errors``, ``probe``), for the
  report to compare with the papers'.

The halting draws are seeded with ``seed``. Writes ``<paths.results>/eval_alit/`` atomically:
``details.json`` (all of the above), ``metrics.json`` (its headline, DVC metrics: rFID at the fewest
and the most tokens, the adaptive count and its rFID, the complexity correlation, the adaptive count out
of distribution), ``rfid_vs_tokens.csv`` (DVC plot: tokens, l1, psnr, rfid, judge_top1,
probe_accuracy and the same on the OOD split), ``per_image.csv`` (adaptive count and complexity per
image), ``rfid_vs_tokens.png``, ``complexity.png``, ``attention.png``; logs everything to MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.shards import load_split, read_manifest
from pipeline.errors import InputError
from pipeline.experiments import alit_analysis
from pipeline.io import atomic_dir, write_csv, write_metrics
from pipeline.layout import alit_dir, prepared_root, results_dir
from pipeline.metrics.clip_score import zero_shot_classifier, zero_shot_logits
from pipeline.metrics.fid import FeatureSpace, fidelity_protocol
from pipeline.metrics.image_stats import png_bits_per_pixel
from pipeline.metrics.images import to_float
from pipeline.models.alit import ALIT
from pipeline.params import Params
from pipeline.stages._inputs import class_names, data_protocol, feature_space, judge_clip
from pipeline.tracking import stage_run

STAGE = "eval_alit"


def load_alit(params: Params) -> tuple[ALIT, Path]:
    folder = alit_dir(params)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}/config.json: no ALIT tokenizer there. Run `dvc repro train_alit` first (or "
                         "train_alit.source: official to import a released checkpoint)")
    return ALIT.from_pretrained(folder).eval(), folder


def _check_counts(model: ALIT, counts: list[int], folder: Path) -> None:
    per, iters = model.config.num_init_latent_tokens, model.config.max_rollout_iters
    bad = [n for n in counts if n % per or not 1 <= n // per <= iters]
    if bad:
        raise InputError(f"eval_alit.token_counts: {bad} not reachable by the ALIT at {folder}: expected multiples "
                         f"of {per} up to {per * iters}")


def _protocols(params: Params, space: FeatureSpace, num_val: int, num_probe_train: int) -> dict[str, dict]:
    """The protocols the scores of ``eval_alit.split`` followed, per kind of score (the report compares them).

    ``rfid``: reconstructions against the very images reconstructed; ``errors`` (L1, PSNR and the adaptive
    count, whose criterion is L1): on the float reconstructions, never rounded to 8 bits; ``probe``: tested
    on the evaluated split, trained on ``num_probe_train`` train images.
    """
    data = data_protocol(params, params.eval_alit.split)
    return {"rfid": fidelity_protocol(space, num_val, "same images") | data,
            "errors": {"samples": num_val, **data, "uint8": "none"},
            "probe": {"samples": num_val, "train_samples": num_probe_train, **data}}


def run(params: Params) -> int:
    """Evaluate ALIT at every token count and at the adaptive length, with the analyses and figures."""
    cfg = params.eval_alit
    start = time.perf_counter()
    model, folder = load_alit(params)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    _check_counts(model, cfg.token_counts, folder)
    if not -model.config.num_layers <= cfg.attention_layer < model.config.num_layers:
        raise InputError(f"eval_alit.attention_layer: {cfg.attention_layer} out of range for a decoder of "
                         f"{model.config.num_layers} blocks")
    counts = sorted(cfg.token_counts)
    root = prepared_root(params)
    manifest = read_manifest(root)
    if manifest.get("image_size") not in (None, model.config.image_size):
        raise InputError(f"{root}: images are {manifest['image_size']} px but the ALIT at {folder} works on "
                         f"{model.config.image_size} px")
    num_classes = len(manifest["classes"])
    val = load_split(root, cfg.split, limit=cfg.num_images)
    if len(val.labels) < 2:
        raise InputError(f"{root}: split {cfg.split!r} has {len(val.labels)} images; eval_alit needs at least 2")
    ood = load_split(root, cfg.ood_split, limit=cfg.num_images) if cfg.ood_split else None
    probe_train = load_split(root, "train", limit=cfg.probe.train_images)

    judge = judge_clip(params)  # grades the reconstructions; the demo's FID space too
    space = feature_space(params, judge)
    names = class_names(params)
    fid_batch = params.fid.batch_size
    out_dir = results_dir(params, STAGE)
    with stage_run(STAGE, params) as mlrun, atomic_dir(out_dir) as tmp:
        mlrun.set_tags({"alit": str(folder)})
        evaluate = dict(threshold=cfg.threshold, criterion=cfg.criterion, space=space, batch_size=cfg.batch_size,
                        fid_batch_size=fid_batch)

        classifier = zero_shot_classifier(judge, names, params.train_clip.templates)

        def classify(labels: np.ndarray):  # uint8 images -> (N,) bool: the judge's top-1 is the label
            return lambda x: zero_shot_logits(judge, x, classifier).argmax(dim=1) == torch.from_numpy(labels)

        ind = alit_analysis.evaluate_split(model, val.images, counts, seed=params.seed, classify=classify(val.labels),
                                           **evaluate)
        far = alit_analysis.evaluate_split(model, ood.images, counts, seed=params.seed + 1,
                                           classify=classify(ood.labels), **evaluate) if ood else None

        # task: a linear probe per token count
        train_latents = alit_analysis.rollout(model, probe_train.images, counts, batch_size=cfg.batch_size,
                                              pixels=False,
                                              generator=alit_analysis.halting_generator(model, params.seed + 2)).latents
        probe = {n: alit_analysis.linear_probe(train_latents[n], torch.from_numpy(probe_train.labels),
                                               ind["latents"][n], torch.from_numpy(val.labels), num_classes,
                                               max_iter=cfg.probe.max_iter, weight_decay=cfg.probe.weight_decay)
                 for n in counts}

        # complexity
        tokens = ind["tokens"].numpy()
        measures = {"PNG bits per pixel": png_bits_per_pixel(torch.from_numpy(val.images)).numpy()}
        if val.meta and "complexity" in val.meta[0]:
            measures["demo complexity (edge density)"] = np.array([m["complexity"] for m in val.meta])
        rho = {name: alit_analysis.spearman(tokens, values) for name, values in measures.items()}

        # token specialisation
        shown = to_float(torch.from_numpy(val.images[:cfg.attention_images]))
        attn = alit_analysis.decoder_attention(model, shown.to(next(model.parameters()).device), cfg.attention_layer,
                                               generator=alit_analysis.halting_generator(model, params.seed + 3)).cpu()
        per = model.config.num_init_latent_tokens
        groups = alit_analysis.attention_per_group(attn, per)  # (B, G, N)
        alit_analysis.plot_attention(shown, ind["recon_last"][:cfg.attention_images], groups, per,
                                     tmp / "attention.png", recon_title=f"{max(counts)} tokens")

        # outputs
        series = {cfg.split: {m: [ind["per_tokens"][n][m] for n in counts] for m in ("rfid", "l1", "psnr")}}
        points = {cfg.split: ind["adaptive"]}
        if far:
            series[cfg.ood_split] = {m: [far["per_tokens"][n][m] for n in counts] for m in ("rfid", "l1", "psnr")}
            points[cfg.ood_split] = far["adaptive"]
        alit_analysis.plot_tokens_curve(counts, series, points, tmp / "rfid_vs_tokens.png")
        alit_analysis.plot_complexity(tokens, measures, rho, tmp / "complexity.png")
        scores = ("l1", "psnr", "rfid", "judge_top1")
        write_csv(tmp / "rfid_vs_tokens.csv", [
            {"tokens": n, **ind["per_tokens"][n], "probe_accuracy": probe[n],
             **({f"ood_{m}": far["per_tokens"][n][m] for m in scores} if far else {})} for n in counts],
            ["tokens", *scores, "probe_accuracy", *([f"ood_{m}" for m in scores] if far else [])])
        names = list(measures)
        columns = {n: n.split(" (")[0].replace(" ", "_") for n in names}  # "PNG bits per pixel" -> PNG_bits_per_pixel
        write_csv(tmp / "per_image.csv", [
            {"index": i, "label": int(val.labels[i]), "adaptive_tokens": int(tokens[i]),
             **{columns[n]: float(measures[n][i]) for n in names}} for i in range(len(tokens))],
            ["index", "label", "adaptive_tokens", *columns.values()])

        def public(split: dict) -> dict:
            return {"originals": split["originals"], "per_tokens": {str(n): v for n, v in split["per_tokens"].items()},
                    "adaptive": {k: ({str(t): c for t, c in v.items()} if k == "histogram" else v)
                                 for k, v in split["adaptive"].items()}}

        mass = groups.sum(-1).mean(0)  # (G,): the grid positions' attention to each group, averaged over images
        mass = mass / mass.sum()
        metrics = {
            "alit": str(folder), "tokens_per_iteration": per, "threshold": cfg.threshold, "criterion": cfg.criterion,
            "num_images": {cfg.split: len(val.labels), "probe_train": len(probe_train.labels),
                           **({cfg.ood_split: len(ood.labels)} if ood else {})},
            cfg.split: public(ind),
            "complexity": {"spearman_png_bpp": rho[names[0]],
                           **({"spearman_demo_complexity": rho[names[1]]} if len(names) > 1 else {})},
            "familiarity": None if not far else {
                "split": cfg.ood_split, "mean_tokens_in_distribution": ind["adaptive"]["mean_tokens"],
                "mean_tokens_ood": far["adaptive"]["mean_tokens"], "rfid_adaptive_in_distribution":
                ind["adaptive"]["rfid"], "rfid_adaptive_ood": far["adaptive"]["rfid"],
                "l1_adaptive_in_distribution": ind["adaptive"]["l1"], "l1_adaptive_ood": far["adaptive"]["l1"],
                **public(far)},
            "probe": {"accuracy": {str(n): probe[n] for n in counts}, "chance": 1 / num_classes},
            "specialisation": {"attention_layer": cfg.attention_layer,
                               "attention_share_per_group": [round(float(m), 6) for m in mass]},
            "protocol": _protocols(params, space, len(val.labels), len(probe_train.labels)),
        }
        split = cfg.split
        write_metrics(tmp, metrics, {  # the headline: the curve's two ends, the adaptive length and its analyses
            **{f"rfid_{n}": f"{split}.per_tokens.{n}.rfid" for n in (counts[0], counts[-1])},
            "adaptive_mean_tokens": f"{split}.adaptive.mean_tokens", "adaptive_rfid": f"{split}.adaptive.rfid",
            "complexity_spearman": "complexity.spearman_png_bpp", "ood_mean_tokens": "familiarity.mean_tokens_ood"})
        seconds = time.perf_counter() - start  # printed only (stage_run logs the wall time)
        mlrun.log_metrics({k: v for k, v in metrics.items() if k not in ("alit", "criterion", "protocol")})
        for f in sorted(tmp.iterdir()):
            mlrun.log_artifact(f)

    print(f"eval_alit ({seconds:.1f} s): tokens / L1 (95% interval) / PSNR / rFID / judge top-1 / probe on "
          f"{cfg.split} (judge on the originals {ind['originals']['judge_top1']:.3f})")
    for n in counts:
        s = ind["per_tokens"][n]
        print(f"  {n:4d}  {s['l1']:.4f} +-{s['l1_ci95']:.4f}  {s['psnr']:.2f}  {s['rfid']:.3f}  "
              f"{s['judge_top1']:.3f}  {probe[n]:.3f}")
    a = ind["adaptive"]
    print(f"  adaptive (mean {a['mean_tokens']:.1f} tokens)  {a['l1']:.4f}  {a['psnr']:.2f}  {a['rfid']:.3f}")
    print(f"  Spearman: {metrics['complexity']}")
    print(f"wrote {out_dir}")
    return 0
