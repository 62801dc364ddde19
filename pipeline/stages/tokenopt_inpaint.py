"""Stage ``tokenopt_inpaint``: inpainting and outpainting by test-time token optimisation (token-opt E5).

Draws ``tokenopt.inpaint.num_images`` random images of the prepared ``split`` and, for every mask kind
of ``mask_kinds`` (``center``: a centred square hole, ``boxes``: 1-3 random boxes, ``half``: the right
half, i.e. outpainting), optimises the tokens so that the decoded image matches the known pixels
(masked L1, plus ``clip_weight`` x CLIP towards ``prompt`` when one is set), starting from the masked
image and re-encoding the known region every ``reset_period`` steps
(:func:`pipeline.experiments.tokenopt_tasks.inpaint_images`, loop settings ``tokenopt.inpaint.optim``).

Writes, atomically, ``<paths.data>/tokenopt/tokenopt_inpaint/``: ``images.npz`` with ``original``
(N, H, W, 3) at the tokenizer's size and, kind-major over ``mask_kinds``, ``inpainted`` (K x N, H, W, 3),
the decoded images as they are (not composited), ``start`` (K x N, H, W, 3), the decode of the masked
image's tokens where the loop starts (the no-optimisation baseline), and ``masks`` (K x N, H, W), 1 =
known pixel; ``records.json``. ``<paths.results>/tokenopt_inpaint/grid.png``: per kind, the original,
the masked input, the start and the composited result.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.transforms import to_model_input
from pipeline.experiments.tokenopt_tasks import inpaint_images
from pipeline.io import atomic_dir
from pipeline.layout import results_dir, samples_dir
from pipeline.metrics.images import to_uint8_hwc
from pipeline.models.batched import roundtrip_batched
from pipeline.params import Params
from pipeline.stages import _tokenopt
from pipeline.stages._common import save_image_grid
from pipeline.stages._inputs import class_names, objective_clip
from pipeline.tracking import stage_run

STAGE = "tokenopt_inpaint"
GRID_IMAGES = 6


def run(params: Params) -> int:
    """Fill masked regions by optimising tokens against the known pixels; write images, masks and a grid."""
    cfg = params.tokenopt
    p = cfg.inpaint
    torch.manual_seed(params.seed)
    titok, folder, dev = _tokenopt.load_tokenizer(params)
    names = class_names(params)
    sample = _tokenopt.sample_split(params, p.split, p.num_images, params.seed, "tokenopt.inpaint.num_images")
    original = to_model_input(sample.images, titok.config.image_size)  # (N, 3, S, S)
    n = len(original)
    clip = prompts = None
    if p.prompt is not None:
        clip = objective_clip(params, str(dev))
        prompts = [_tokenopt.fill_class(p.prompt, names[int(c)]) for c in sample.labels]
    config = p.optim

    inpainted, starts, masks, records = [], [], [], []
    with stage_run(STAGE, params) as mlrun, \
            tqdm(total=config.num_iter * len(p.mask_kinds) * -(-n // cfg.batch_size), desc=STAGE,
                 mininterval=5) as bar:
        mlrun.set_tags({"tokenizer": str(folder), "tokenizer.source": cfg.tokenizer.source})
        for kind in p.mask_kinds:
            out = inpaint_images(titok, original, kind, config, clip=clip, prompts=prompts,
                                 clip_weight=p.clip_weight, batch_size=cfg.batch_size,
                                 reset_period=p.reset_period, seed=params.seed, progress=bar)
            inpainted.append(out.images)
            masks.append(out.masks)
            starts.append(roundtrip_batched(titok, original * out.masks, cfg.batch_size,
                                            post_quantization=config.optimize_post_quantization))
            for r in out.records:
                i = r["index"]
                records.append(r | {"index": len(records), "image_index": i, "split": p.split,
                                    "split_index": int(sample.indices[i]), "class_index": int(sample.labels[i]),
                                    "class_name": names[int(sample.labels[i])]})
        arrays = {"original": to_uint8_hwc(original), "inpainted": to_uint8_hwc(torch.cat(inpainted)),
                  "start": to_uint8_hwc(torch.cat(starts)),
                  "masks": torch.cat(masks)[:, 0].round().to(torch.uint8).numpy()}
        with atomic_dir(samples_dir(params, STAGE)) as tmp:
            _tokenopt.save_samples(tmp, arrays, records)

        k = min(GRID_IMAGES, n)
        rows, labels = [original[:k]], ["original"]
        for kind, out_images, m, s in zip(p.mask_kinds, inpainted, masks, starts, strict=True):
            m = m[:k]
            rows += [original[:k] * m, s[:k], m * original[:k] + (1 - m) * out_images[:k]]
            labels += [f"{kind}: input", f"{kind}: start", f"{kind}: result"]
        grid = results_dir(params, STAGE) / "grid.png"
        save_image_grid(rows, grid, labels, "inpainting (result: known pixels pasted back)")
        mean_loss = float(np.mean([r["final_loss"] for r in records]))
        mlrun.log_metrics({"final_loss": mean_loss, "images": len(records)})
        mlrun.log_artifact(grid, STAGE)
    print(f"{STAGE}: {n} images x {len(p.mask_kinds)} mask kinds, mean final loss {mean_loss:.4f}; "
          f"wrote {samples_dir(params, STAGE)} and {grid}")
    return 0
