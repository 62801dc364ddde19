"""Throughput of one full training step (forward, backward, AdamW) per named model and precision.

Run by hand::

    .venv/bin/python bench/train_step.py                       # CPU: the demo models, fp32 / bf16
    .venv/bin/python bench/train_step.py --models titok_l32 --batch-size 32     # one GPU

Every measurement runs the real loop (``pipeline.train.loop.train``) on random images for
``--steps`` warm-up steps (compilation included) and then ``--steps`` timed steps, in a fresh
subprocess so that peak memory is per configuration (GPU: ``max_memory_allocated``; CPU: the
process's peak RSS, torch itself included). The step is the recipe the model trains with:

- legacy TiTok (``titok_s128/b64/l32``, ``titok_demo``): stage 1, TiTok encoder + decoder logits
  against the proxy codes of a frozen MaskGIT-VQGAN (``maskgit_vqgan`` / ``vqgan_demo``);
- single-stage TiTok (``*_vq8k``, ``*_vae``): L2 + quantiser / KL on pixels (no GAN, no perceptual);
- VQGANs: L1 + L2 + quantiser loss.

Model FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward (the
frozen teacher's forward included); MFU = FLOPs x steps/s / the GPU's dense peak (bf16; TF32 for
fp32, which the loop enables). MFU is left blank on CPUs and unknown GPUs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.models import count_parameters  # noqa: E402
from pipeline.models.maskgit_vqgan import VQGAN_CONFIGS, MaskGITVQGAN  # noqa: E402
from pipeline.models.registry import build_model, model_config  # noqa: E402
from pipeline.models.titok import TITOK_CONFIGS  # noqa: E402
from pipeline.train.loop import TrainConfig, train  # noqa: E402
from pipeline.train.precision import autocast  # noqa: E402
from pipeline.train.recipes import TiTokProxyCodeRecipe, TiTokSingleStageRecipe, VQGANRecipe  # noqa: E402

CPU_MODELS = ("vqgan_demo", "titok_demo")
TRAINABLE = (*VQGAN_CONFIGS, *TITOK_CONFIGS)  # the registry names this bench has a recipe for (no ALIT)
# dense tensor-core peaks (FLOP/s) per precision; fp32 runs as TF32 in the loop
PEAKS = {"H100": {"bf16": 989e12, "fp32": 494e12}, "H200": {"bf16": 989e12, "fp32": 494e12},
         "A100": {"bf16": 312e12, "fp32": 156e12}}


def make_recipe(name: str):
    model = build_model(name, pixel_decoder=False) if name.startswith("titok") and \
        model_config(name).legacy else build_model(name)
    if isinstance(model, MaskGITVQGAN):
        return VQGANRecipe(model)
    if model.config.legacy:
        teacher = build_model("vqgan_demo" if name == "titok_demo" else "maskgit_vqgan")
        return TiTokProxyCodeRecipe(model, teacher)
    return TiTokSingleStageRecipe(model, gan=None)


def step_flops(recipe, images: torch.Tensor, precision: str) -> int:
    with FlopCounterMode(display=False) as counter:
        with autocast(images.device, precision):
            out = recipe.model(images)
            loss = recipe.losses(out, images, 0)[0]["loss"]
        loss.backward()
    recipe.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(name: str, precision: str, compile_: bool, batch: int, steps: int, threads: int | None) -> dict:
    """One configuration, in this process."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = make_recipe(name).to(device)
    size = model_config(name).image_size
    flops = step_flops(recipe, torch.rand(batch, 3, size, size, device=device), precision)
    data = TensorDataset(torch.rand(4 * batch, 3, size, size))
    cfg = TrainConfig(steps=2 * steps, batch_size=batch, precision=precision, compile=compile_,
                      log_every=steps, ckpt_every=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    logged = []
    with tempfile.TemporaryDirectory() as run_dir:
        train(recipe, data, cfg, run_dir, log_fn=lambda m, s: logged.append(m))
    timed = logged[-1]  # the second window: after warm-up / compilation
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        gpu = torch.cuda.get_device_name()
        peak = next((p[precision] for k, p in PEAKS.items() if k in gpu), None)
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        gpu, peak = "cpu", None
    steps_per_s = 1.0 / timed["step_s"]
    return {"model": name, "params_m": count_parameters(recipe.model) / 1e6, "precision": precision,
            "compile": compile_, "batch": batch, "images_per_s": timed["images_per_s"],
            "step_ms": 1e3 * timed["step_s"], "peak_mem_gib": peak_mem, "gflop_per_step": flops / 1e9,
            "mfu": flops * steps_per_s / peak if peak else None, "device": gpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help=f"registry names: {', '.join(TRAINABLE)}")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precisions", nargs="*")
    parser.add_argument("--compile", choices=("off", "on", "both"))
    parser.add_argument("--steps", type=int, default=3, help="warm-up steps, then as many timed steps")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single measurement, JSON in / JSON out
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(**json.loads(args.one))), flush=True)
        return

    gpu = torch.cuda.is_available()
    models = args.models or (list(TRAINABLE) if gpu else list(CPU_MODELS))
    batch = args.batch_size or (32 if gpu else 8)
    precisions = args.precisions or ["fp32", "bf16"]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile or ("both" if gpu else "off")]
    rows = []
    if args.threads:
        torch.set_num_threads(args.threads)  # (for the table header)
    for name in models:
        for compile_ in compiles:
            for precision in precisions:
                one = json.dumps({"name": name, "precision": precision, "compile_": compile_, "batch": batch,
                                  "steps": args.steps, "threads": args.threads})
                proc = subprocess.run([sys.executable, __file__, "--one", one], capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                    print(f"{name} {precision} compile={compile_}: failed: {tail[0]}", file=sys.stderr)
                    continue
                rows.append(json.loads(line.removeprefix("RESULT ")))
                print(_row(rows[-1], rows), file=sys.stderr, flush=True)
    print(_table(rows))


def _row(r: dict, rows: list[dict]) -> str:
    base = next((b for b in rows if b["model"] == r["model"] and b["precision"] == "fp32" and not b["compile"]),
                None)
    speedup = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    return (f"| {r['model']} | {r['params_m']:.2f} | {r['precision']} | {'on' if r['compile'] else 'off'} | "
            f"{r['batch']} | {r['images_per_s']:.1f} | {r['step_ms']:.0f} | {speedup} | "
            f"{r['peak_mem_gib']:.2f} | {r['gflop_per_step']:.1f} | {mfu} |")


def _table(rows: list[dict]) -> str:
    device = rows[0]["device"] if rows else "?"
    mem = "peak GPU mem (GiB)" if device != "cpu" else "peak RSS (GiB)"
    head = (f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n"
            f"| model | params (M) | precision | compile | batch | images/s | step (ms) | vs fp32 eager | "
            f"{mem} | GFLOP/step | MFU |\n|---|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_row(r, rows) for r in rows])


if __name__ == "__main__":
    main()
