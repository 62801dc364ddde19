"""Stage ``tokenopt_generate``: class-conditional generation by test-time token optimisation (token-opt E3/E4).

For every class, ``tokenopt.generate.num_per_class`` images (``None``: ``fid.samples_per_class``, the
ADM protocol's 50 at paper scale) are optimised towards the prompt ``template`` (``"a photo of a {}"``)
with the objective CLIP (:func:`pipeline.experiments.tokenopt_tasks.generate_class_images`, loop
settings ``tokenopt.optim``). ``init: seed`` starts each one from a seed image: the seed set is
``seed_set_size`` random images of ``seed_split``, matched to the prompt by ``association``;
``init: random`` starts from N(0, I) tokens.

So that the numbers of ``eval_tokenopt`` mean something, the same stage writes two baselines, one image
per generated image: ``seeds``, the seed image the association picks for its prompt (not optimised),
and ``random_tokens``, the decode of N(0, I) tokens (exactly the starting point when ``init: random``);
plus ``seed_reconstructions``, the decode of the seed's tokens (the starting point when ``init: seed``).
With ``init: seed`` and ``random_init_too``, the same prompts are optimised a second time from N(0, I)
tokens (``images_random_init``).

Writes, atomically, ``<paths.data>/tokenopt/tokenopt_generate/``: ``images.npz`` (``images``, ``seeds``,
``seed_reconstructions``, ``random_tokens`` and, when run, ``images_random_init``: uint8 (N, H, W, 3);
``labels``: (N,) class of the prompt)
and ``records.json`` (class, prompt, split row of the seed, final loss); and
``<paths.results>/tokenopt_generate/grid.png``: one column per class, one row per kind of image.
Classes are optimised in chunks of about ``CHUNK_IMAGES`` images, converted to uint8 as they finish,
so that 50,000 images at 256 px fit in memory.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.transforms import to_model_input
from pipeline.experiments.tokenopt_tasks import (
    TaskOutput,
    associate_seeds,
    generate_class_images,
    random_start_tokens,
)
from pipeline.io import atomic_dir
from pipeline.layout import results_dir, samples_dir
from pipeline.metrics.images import to_uint8_hwc
from pipeline.models.batched import decode_batched, roundtrip_batched
from pipeline.models.titok import TiTok
from pipeline.params import Params
from pipeline.side_by_side import in_parallel, run_jobs
from pipeline.stages import _tokenopt
from pipeline.stages._common import save_image_grid
from pipeline.stages._inputs import class_names, objective_clip
from pipeline.tracking import stage_run

STAGE = "tokenopt_generate"
CHUNK_IMAGES = 1024
GRID_CLASSES = 10


def _generate(titok: TiTok, clip, names: list[str], per_class: int, config, seed: int,
              seed_images: torch.Tensor | None, association: str, template: str, batch_size: int, bar) -> TaskOutput:
    """One generation run (a worker of :func:`pipeline.side_by_side.run_jobs`): from seeds, or from N(0, I)."""
    with tqdm(total=config.num_iter * -(-len(names) * per_class // batch_size), mininterval=5,
              desc=f"{STAGE} ({'seeds' if seed_images is not None else 'random init'})",
              disable=bar is not None) as own:
        return generate_class_images(titok, clip, names, per_class, config, seed_images=seed_images,
                                     association=association, template=template, batch_size=batch_size,
                                     seed=seed, progress=bar if bar is not None else own)


def run(params: Params) -> int:
    """Generate class-conditional images by CLIP-guided token optimisation, with the baselines beside them."""
    cfg = params.tokenopt
    g = cfg.generate
    torch.manual_seed(params.seed)
    titok, folder, dev = _tokenopt.load_tokenizer(params)
    clip = objective_clip(params, str(dev))
    names = class_names(params)
    per_class = g.num_per_class or params.fid.samples_per_class
    size = titok.config.image_size
    seed_set = _tokenopt.sample_split(params, g.seed_split, g.seed_set_size, params.seed,
                                   "tokenopt.generate.seed_set_size")
    seed_images = to_model_input(seed_set.images, size)  # (M, 3, S, S)
    config = cfg.optim
    post = config.optimize_post_quantization
    classes_per_chunk = max(1, CHUNK_IMAGES // per_class)
    chunks = [range(c, min(c + classes_per_chunk, len(names))) for c in range(0, len(names), classes_per_chunk)]
    batches = sum(-(-len(ch) * per_class // cfg.batch_size) for ch in chunks)
    random_too = g.init == "seed" and g.random_init_too
    batches *= 2 if random_too else 1

    arrays: dict[str, list[np.ndarray]] = {"images": [], "seeds": [], "seed_reconstructions": [], "random_tokens": []}
    if random_too:
        arrays["images_random_init"] = []
    records: list[dict] = []
    with stage_run(STAGE, params) as mlrun, \
            tqdm(total=config.num_iter * batches, desc=STAGE, mininterval=5) as bar:
        mlrun.set_tags({"tokenizer": str(folder), "tokenizer.source": cfg.tokenizer.source})
        for k, chunk in enumerate(chunks):
            chunk_seed = params.seed + CHUNK_IMAGES * k  # batch i of chunk k: + i
            job = (titok, clip, [names[c] for c in chunk], per_class, config, chunk_seed)
            starts = [seed_images if g.init == "seed" else None] + ([None] if random_too else [])
            # the seeded and the random-init runs are independent: side by side on a CPU (pipeline.side_by_side)
            parallel = in_parallel(len(starts))
            results = run_jobs([(_generate, (*job, start, g.association, g.template, cfg.batch_size,
                                             None if parallel else bar)) for start in starts])
            bar.update(sum(config.num_iter * -(-len(r.records) // cfg.batch_size) for r in results) if parallel else 0)
            out = results[0]
            prompts = [r["prompt"] for r in out.records]
            if random_too:
                arrays["images_random_init"].append(to_uint8_hwc(results[1].images))
            if g.init == "seed":
                chosen = torch.tensor([r["seed_index"] for r in out.records])
            else:  # the seed the association would have picked: the seeds baseline
                generator = torch.Generator().manual_seed(chunk_seed)
                chosen = associate_seeds(clip, seed_images, prompts, g.association, generator)
            seeds = seed_images[chosen]
            # the tokens generation from N(0, I) starts from with this chunk's seed (its first draw), decoded
            start = random_start_tokens(titok, len(prompts), torch.Generator().manual_seed(chunk_seed), post)
            random_images = decode_batched(titok, start, cfg.batch_size, post_quantization=post)
            arrays["images"].append(to_uint8_hwc(out.images))
            arrays["seeds"].append(to_uint8_hwc(seeds))
            arrays["seed_reconstructions"].append(to_uint8_hwc(roundtrip_batched(titok, seeds, cfg.batch_size,
                                                                                 post_quantization=post)))
            arrays["random_tokens"].append(to_uint8_hwc(random_images))
            for r, j in zip(out.records, chosen.tolist(), strict=True):
                records.append({"index": len(records), "class_index": chunk[r["class_index"]],
                                "class_name": r["class_name"], "prompt": r["prompt"], "init": g.init,
                                "seed_split": g.seed_split, "seed_split_index": int(seed_set.indices[j]),
                                "final_loss": r["final_loss"]})
        stacked = {k: np.concatenate(v) for k, v in arrays.items()}
        stacked["labels"] = np.array([r["class_index"] for r in records], dtype=np.int64)
        with atomic_dir(samples_dir(params, STAGE)) as tmp:
            _tokenopt.save_samples(tmp, stacked, records)

        first = [c * per_class for c in range(min(GRID_CLASSES, len(names)))]  # records are class-major
        shown = {"seeds": "seed", "seed_reconstructions": "seed recon", "images": f"optimised ({g.init})",
                 "random_tokens": "random tokens", "images_random_init": "optimised (random)"}
        shown = {k: v for k, v in shown.items() if k in stacked}
        rows = [torch.from_numpy(stacked[key][first]).permute(0, 3, 1, 2).float() / 255 for key in shown]
        grid = results_dir(params, STAGE) / "grid.png"
        save_image_grid(rows, grid, list(shown.values()),
                        "generation, prompt: " + ", ".join(names[c] for c in range(len(first))))
        mean_loss = sum(r["final_loss"] for r in records) / len(records)
        mlrun.log_metrics({"final_loss": mean_loss, "images": len(records)})
        mlrun.log_artifact(grid, STAGE)
    print(f"{STAGE}: {len(records)} images ({per_class} per class, init {g.init}), mean final loss {mean_loss:.4f}; "
          f"wrote {samples_dir(params, STAGE)} and {grid}")
    return 0
