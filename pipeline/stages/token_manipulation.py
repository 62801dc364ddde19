"""Stage ``token_manipulation``: which TiTok token positions carry which attributes; copy-paste edits.

Reads the tokenizer named by ``token_manipulation.tokenizer`` (ours at ``<paths.models>/titok`` or an
official snapshot folder) and the first ``num_images`` images of the prepared ``split``; ranks the
token positions per attribute and measures copy-paste edits (see
:mod:`pipeline.experiments.token_manipulation`). Writes ``<paths.results>/token_manipulation/``
atomically:

- ``details.json``: per attribute with an image measure, the effect of copying the top-ranked
  position(s) and random ones (mean and bootstrap 95 % interval, in standard deviations of the measure),
  their paired difference and ``top_beats_random`` (the intervals do not overlap);
- ``metrics.json`` (DVC metrics, the headline of details.json): the number of images and, per attribute,
  the mean paired difference ``<attribute>_top_minus_random``;
- ``positions.json``: per attribute, the ranking and both scores of every position;
- ``figures/heatmap.png``: positions x attributes; ``figures/edits_<attribute>.png``: target,
  reference and edits. (Figures sit in their own folder so that dvc.yaml can declare it as one output
  beside the two JSON files: DVC rejects a metrics file inside an output folder.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.shards import load_split, read_manifest
from pipeline.errors import InputError
from pipeline.experiments import token_manipulation
from pipeline.io import atomic_dir, write_json, write_metrics
from pipeline.layout import prepared_root, results_dir
from pipeline.models.titok import TiTok
from pipeline.params import Params
from pipeline.stages._common import load_chosen_titok
from pipeline.tracking import stage_run

STAGE = "token_manipulation"


def load_tokenizer(params: Params) -> tuple[TiTok, Path]:
    """The TiTok chosen in ``token_manipulation.tokenizer``, in eval mode."""
    return load_chosen_titok(params, params.token_manipulation.tokenizer, "token_manipulation.tokenizer")


def run(params: Params) -> int:
    """Rank token positions per attribute, measure copy-paste edits, and write metrics and figures."""
    cfg = params.token_manipulation
    torch.manual_seed(params.seed)
    model, folder = load_tokenizer(params)
    n = model.config.num_latent_tokens
    bad = [p for p in cfg.positions_to_edit if p >= n]
    if bad:
        raise InputError(f"token_manipulation.positions_to_edit: {bad} out of range: the tokenizer at {folder} has "
                         f"{n} token positions, 0..{n - 1}")
    if cfg.top_k * 2 > n:
        raise InputError(f"token_manipulation.top_k: {cfg.top_k} leaves too few of the {n} positions of the "
                         f"tokenizer at {folder} to draw {cfg.top_k} random ones from: expected at most {n // 2}")
    if cfg.rank_by == "mutual_information" and model.config.quantize_mode != "vq":
        raise InputError("token_manipulation.rank_by: mutual_information needs code indices, but the tokenizer at "
                         f"{folder} is a VAE (continuous tokens): use f_ratio")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)

    root = prepared_root(params)
    manifest = read_manifest(root)
    # the classes' WordNet ids (the animal attribute); the demo's classes carry made-up ones
    wnids = ([c["wnid"] for c in manifest["classes"]] if str(manifest.get("source", "")).startswith("imagenet")
             else None)
    data = load_split(root, cfg.split, limit=cfg.num_images)
    images = torch.from_numpy(data.images)  # (M, H, W, 3) uint8
    if len(images) < 2 * cfg.bins:
        raise InputError(f"{root}: {len(images)} images of split {cfg.split!r} (token_manipulation.num_images: "
                         f"{cfg.num_images}), too few for token_manipulation.bins={cfg.bins}: at least "
                         f"{2 * cfg.bins} are needed")
    try:
        attributes = token_manipulation.attribute_table(cfg.attributes, images, data.labels, data.meta, wnids)
    except ValueError as err:
        raise InputError(f"token_manipulation.attributes: {err}") from None
    # an attribute with one value here has no contrasting pairs: say so now, not after encoding every image
    flat = [a.name for a in attributes if len(np.unique(token_manipulation.group_labels(a, cfg.bins))) < 2]
    if flat:
        raise InputError(f"token_manipulation.attributes: {', '.join(flat)} take(s) a single value on the "
                         f"{len(images)} images of split {cfg.split!r} in {root}; remove it from the list or use "
                         "more (or other) images")

    out = results_dir(params, STAGE)
    with stage_run(STAGE, params) as mlrun, atomic_dir(out) as tmp:
        mlrun.set_tags({"tokenizer": str(folder), "tokenizer.source": cfg.tokenizer.source})
        encoded = token_manipulation.encode(model, images, cfg.batch_size)
        scores = token_manipulation.position_scores(encoded, attributes, cfg.bins)
        recon = token_manipulation.decode(model, encoded.codes, cfg.batch_size)  # (M, 3, H, W)
        recon_measures = {name: token_manipulation.measure(name, recon)
                          for name in {a.measure for a in attributes} if name}

        figures = tmp / "figures"
        figures.mkdir()
        positions, effects = {}, {}
        for i, attr in enumerate(attributes):
            groups = token_manipulation.group_labels(attr, cfg.bins)
            ranking = token_manipulation.rank_positions(scores[attr.name][cfg.rank_by])
            positions[attr.name] = {
                "ranking": ranking, "rank_by": cfg.rank_by, "source": attr.source, "categorical": attr.categorical,
                "groups": int(len(np.unique(groups))),
                **{k: (None if v is None else [float(x) for x in v]) for k, v in scores[attr.name].items()},
            }
            seed = params.seed + 1000 * i
            if attr.measure is not None:
                result = token_manipulation.edit_effects(
                    model, encoded, attr, ranking, top_k=cfg.top_k, groups=groups,
                    recon_measure=recon_measures[attr.measure], num_pairs=cfg.num_pairs,
                    bootstrap_samples=cfg.bootstrap_samples, seed=seed, batch_size=cfg.batch_size)
                effects[attr.name] = {k: v for k, v in result.items() if k not in ("pairs", "random_positions")}
            token_manipulation.edit_grid(model, images, encoded, recon, attr, groups, ranking,
                                         figures / f"edits_{attr.name}.png", top_k=cfg.top_k,
                                         pairs=cfg.grid_pairs, positions=cfg.positions_to_edit,
                                         batch_size=cfg.batch_size, seed=seed)

        token_manipulation.plot_heatmap(scores, figures / "heatmap.png", cfg.rank_by)
        metrics = {"tokenizer": {"source": cfg.tokenizer.source, "folder": str(folder)},
                   "num_images": len(images), "num_tokens": n, "effect_units": "sd of the measure over reconstructions",
                   "attributes": effects}
        headline = {"num_images": "num_images",
                    **{f"{a}_top_minus_random": f"attributes.{a}.difference.mean" for a in effects}}
        write_metrics(tmp, metrics, headline)
        write_json(tmp / "positions.json", positions)
        mlrun.log_metrics({a: {"top_effect": e["top"]["mean"], "top_ci_low": e["top"]["ci_low"],
                               "top_ci_high": e["top"]["ci_high"], "random_effect": e["random"]["mean"],
                               "random_ci_low": e["random"]["ci_low"], "random_ci_high": e["random"]["ci_high"],
                               "top_beats_random": float(e["top_beats_random"])} for a, e in effects.items()})
        for f in sorted(tmp.rglob("*.*")):
            mlrun.log_artifact(f, STAGE if f.parent == tmp else f"{STAGE}/figures")
    for name, e in effects.items():
        t, r = e["top"], e["random"]
        print(f"{name}: top {e['positions']} {t['mean']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]  random "
              f"{r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  top beats random: {e['top_beats_random']}")
    print(f"wrote {out}")
    return 0
