"""Stage ``tokenopt_edit``: text-guided editing of real images by test-time token optimisation (token-opt E2).

Draws ``tokenopt.edit.num_images`` random images of the prepared ``split`` and optimises the tokens of
each of them towards every prompt of ``tokenopt.edit.prompts`` (``{}`` becomes the image's class name)
with the objective CLIP, each away from its negative prompt (``tokenopt.edit.negative_prompts``) when
there are some (:func:`pipeline.experiments.tokenopt_tasks.edit_images`, loop settings
``tokenopt.optim``). Writes, atomically:

- ``<paths.data>/tokenopt/tokenopt_edit/``: ``images.npz`` with ``source`` (N, H, W, 3), the images at
  the tokenizer's size, and ``edited`` (P x N, H, W, 3), prompt-major; ``records.json``, one record per
  edited image (prompt, its negative if any, source row in the split, class, final loss);
- ``<paths.results>/tokenopt_edit/grid.png``: the sources, then one row per prompt.

``eval_tokenopt`` scores them (CLIP score before / after).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from pipeline.data.transforms import to_model_input
from pipeline.experiments.tokenopt_tasks import edit_images
from pipeline.io import atomic_dir
from pipeline.layout import results_dir, samples_dir
from pipeline.metrics.images import to_uint8_hwc
from pipeline.params import Params
from pipeline.stages import _tokenopt
from pipeline.stages._common import save_image_grid
from pipeline.stages._inputs import class_names, objective_clip
from pipeline.tracking import stage_run

STAGE = "tokenopt_edit"
GRID_IMAGES = 8


def run(params: Params) -> int:
    """Edit real images towards text prompts by optimising their tokens; write images, records and a grid."""
    cfg = params.tokenopt
    e = cfg.edit
    torch.manual_seed(params.seed)
    titok, folder, dev = _tokenopt.load_tokenizer(params)
    clip = objective_clip(params, str(dev))
    names = class_names(params)
    sample = _tokenopt.sample_split(params, e.split, e.num_images, params.seed, "tokenopt.edit.num_images")
    source = to_model_input(sample.images, titok.config.image_size)  # (N, 3, S, S)
    n = len(source)
    prompts = [_tokenopt.fill_class(p, names[int(c)]) for p in e.prompts for c in sample.labels]  # prompt-major
    negatives = None if e.negative_prompts is None else [_tokenopt.fill_class(p, names[int(c)])
                                                         for p in e.negative_prompts for c in sample.labels]
    config = cfg.optim

    with stage_run(STAGE, params) as mlrun:
        mlrun.set_tags({"tokenizer": str(folder), "tokenizer.source": cfg.tokenizer.source})
        with tqdm(total=config.num_iter * -(-len(prompts) // cfg.batch_size), desc=STAGE, mininterval=5) as bar:
            out = edit_images(titok, clip, source.repeat(len(e.prompts), 1, 1, 1), prompts, config,
                              batch_size=cfg.batch_size, negative_prompts=negatives, guidance_scale=e.guidance_scale,
                              seed=params.seed, progress=bar)
        records = [r | {"prompt_index": r["index"] // n, "template": e.prompts[r["index"] // n],
                        "negative_prompt": None if negatives is None else negatives[r["index"]],
                        "split": e.split, "split_index": int(sample.indices[r["index"] % n]),
                        "class_index": int(sample.labels[r["index"] % n]),
                        "class_name": names[int(sample.labels[r["index"] % n])]} for r in out.records]
        with atomic_dir(samples_dir(params, STAGE)) as tmp:
            _tokenopt.save_samples(tmp, {"source": to_uint8_hwc(source), "edited": to_uint8_hwc(out.images)}, records)
        k = min(GRID_IMAGES, n)
        rows = [source[:k]] + [out.images[i * n:i * n + k] for i in range(len(e.prompts))]
        grid = results_dir(params, STAGE) / "grid.png"
        save_image_grid(rows, grid, ["source", *e.prompts], "text-guided editing: one row per prompt")
        mean_loss = sum(r["final_loss"] for r in records) / len(records)
        mlrun.log_metrics({"final_loss": mean_loss, "images": len(records)})
        mlrun.log_artifact(grid, STAGE)
    print(f"{STAGE}: {n} images x {len(e.prompts)} prompts, mean final loss {mean_loss:.4f}; "
          f"wrote {samples_dir(params, STAGE)} and {grid}")
    return 0
