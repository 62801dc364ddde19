"""``python -m pipeline.preflight``: check every input the configured profile reads, before any work.

Run it after ``configure`` and before ``dvc repro`` or a SLURM submission. In seconds to a minute (it
loads each weights file once, as the stage will), it prints one table of every external input of
``params.yaml``: the ImageNet layout (train and val present, class folders that are WordNet ids, a
sample of files that decode, labels for a flat val), every weights file (present and loadable into the
configured model with the expected keys and shapes, through the stage's own loader, so the remedy is the
stage's own message with the exact command), the ADM reference batch, the free disk for the prepared
shards, and the GPUs this machine sees when the profile asks for them. It exits 1 when anything a stage
needs is missing or broken. The demo profile reads nothing external: every row is "not needed".

Each check calls the loader the stage calls (``TiTok.from_pretrained``, ``load_clip``, ``LPIPS``, ...),
so a file that passes here loads there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import params as params_mod
from pipeline.errors import InputError
from pipeline.layout import prepared_root
from pipeline.params import Params

SAMPLE_FILES = 2  # decoded per split
PNG_BYTES_PER_PIXEL = 1.9  # a 256 x 256 ImageNet crop as PNG: ~125 kB (prepare's image_format png)
JPEG_BYTES_PER_PIXEL = 0.45  # at jpeg_quality 95


@dataclass
class Check:
    """One row of the table: ``status`` is ``ok``, ``missing`` (stops a stage), ``warn`` or ``not needed``."""

    item: str
    status: str
    detail: str


def _attempt(item: str, load: Callable[[], Any], ok: str = "loads") -> Check:
    try:
        result = load()
    except InputError as err:
        return Check(item, "missing", str(err).strip())
    except Exception as err:  # noqa: BLE001 - any failure to load is this input's failure, reported in the table
        return Check(item, "missing", f"{type(err).__name__}: {str(err).strip()}")
    return Check(item, "ok", result if isinstance(result, str) else ok)


def _imagenet(params: Params) -> list[Check]:
    from PIL import Image

    from pipeline.data.imagenet import WNID, ImageNetFolder

    cfg = params.prepare.imagenet
    if params.prepare.source != "imagenet_folder":
        return [Check("ImageNet folder", "not needed", f"prepare.source: {params.prepare.source}")]
    try:
        folder = ImageNetFolder(cfg.root, cfg.splits, cfg.class_subset, cfg.max_per_class, cfg.synset_mapping)
    except InputError as err:
        return [Check("ImageNet folder", "missing", str(err))]
    out = []
    odd = [w for w in folder.all_wnids if not WNID.match(w)]
    ignored = [skip.file for skip in folder.early_skips.get("train", [])]
    classes = f"{len(folder.classes)} classes" + (f" (of {len(folder.all_wnids)})" if cfg.class_subset else "")
    out.append(Check("ImageNet train classes", "warn" if odd or ignored else "ok", "\n".join(
        [classes] + ([f"folders that are not WordNet ids become classes: {odd[:5]} (remove them from train/ "
                      "unless they are yours)"] if odd else [])
        + ([f"ignored (not classes, reported by prepare): {ignored[:5]}"] if ignored else []))))
    for split in cfg.splits:
        try:
            tasks = []
            for task in folder.tasks(split):
                if hasattr(task, "path"):
                    tasks.append(task)
                if len(tasks) >= SAMPLE_FILES:
                    break
            if not tasks:
                raise InputError(f"{Path(cfg.root) / split}: no images found")
            for task in tasks:
                with Image.open(task.path) as im:
                    im.convert("RGB").load()
        except (InputError, OSError) as err:
            out.append(Check(f"ImageNet {split}", "missing", str(err)))
        else:
            out.append(Check(f"ImageNet {split}", "ok", f"{len(tasks)} sample files decode"))
    return out


def _disk(params: Params) -> Check:
    if params.prepare.source != "imagenet_folder" or not Path(params.prepare.imagenet.root or "").is_dir():
        return Check("disk for prepared shards", "not needed", "no ImageNet folder to prepare")
    root = Path(params.prepare.imagenet.root) / "train"
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    per_class = sum(len(list(d.iterdir())) for d in folders[:3]) / max(1, min(3, len(folders)))
    images = per_class * len(folders) + 50_000 * ("val" in params.prepare.imagenet.splits)
    rate = PNG_BYTES_PER_PIXEL if params.prepare.image_format == "png" else JPEG_BYTES_PER_PIXEL
    need = images * params.image_size ** 2 * rate
    target = prepared_root(params)
    probe = next((p for p in (target, *target.resolve().parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    detail = f"need about {need / 1e9:.0f} GB for {images:,.0f} images, {free / 1e9:.0f} GB free at {probe}"
    return Check("disk for prepared shards", "ok" if free > 1.2 * need else "warn", detail)


def _weights(params: Params) -> list[Check]:
    out: list[Check] = []
    titoks = {}
    for key, choice in (("train_titok", params.train_titok), ("tokenopt.tokenizer", params.tokenopt.tokenizer),
                        ("token_manipulation.tokenizer", params.token_manipulation.tokenizer)):
        if choice.source == "official":
            titoks.setdefault(str(choice.folder), key)
    if params.train_vqgan.source == "official":
        from pipeline.models.maskgit_vqgan import MaskGITVQGAN

        out.append(_attempt(f"VQGAN (train_vqgan.folder: {params.train_vqgan.folder})",
                            lambda: MaskGITVQGAN.from_pretrained(params.train_vqgan.folder)))
    for folder, key in titoks.items():
        from pipeline.models.titok import TiTok

        out.append(_attempt(f"TiTok ({key}.folder: {folder})", lambda f=folder: TiTok.from_pretrained(f)))
    out += _alit(params)
    lpips = {(c.perceptual_vgg, c.perceptual_lin) for c, used in (
        (params.train_titok, params.train_titok.source == "train" and params.train_titok.stage2.steps > 0),
        (params.train_alit, params.train_alit.source == "train")) if used and c.perceptual_vgg}
    for vgg, lin in lpips:
        from pipeline.models.losses import LPIPS

        out.append(_attempt(f"LPIPS ({vgg}, {lin})", lambda v=vgg, x=lin: LPIPS(v, x)))
    if params.train_clip.source == "pretrained":
        from pipeline.models.clip import load_clip

        for role in ("objective", "judge"):
            w = getattr(params.train_clip, role)
            out.append(_attempt(f"CLIP {role} ({w.model}, {w.weights})",
                                lambda w=w: load_clip(w.model, w.weights, tag=w.tag)))
    if params.fid.feature_space == "inception":
        from pipeline.metrics.fid import inception_feature_space

        out.append(_attempt(f"Inception ({params.fid.inception_weights})",
                            lambda: inception_feature_space(params.fid.inception_weights)))
    if params.fid.adm_npz:
        out.append(_attempt(f"ADM reference batch ({params.fid.adm_npz})", lambda: _adm(params.fid.adm_npz)))
    return out or [Check("weights", "not needed", "the profile trains every model it uses")]


def _alit(params: Params) -> list[Check]:
    cfg = params.train_alit
    if cfg.source == "official":
        from pipeline.models.alit import ALIT

        return [_attempt(f"ALIT (train_alit.folder: {cfg.folder})",
                         lambda: ALIT.from_pretrained(cfg.folder))]
    if cfg.vqgan:
        from pipeline.stages.train_alit import load_base_vqgan

        return [_attempt(f"ALIT base VQGAN (train_alit.vqgan: {cfg.vqgan})",
                         lambda: load_base_vqgan(params))]
    return []


def _adm(path: str) -> str:
    import numpy as np

    if not Path(path).is_file():
        raise InputError(f"{path}: not found. Download the ADM reference batch: "
                         "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
                         f"VIRTUAL_imagenet256_labeled.npz to {path}")
    with np.load(path) as npz:
        keys = set(npz.files)
    if not {"mu", "sigma"} <= keys:
        raise InputError(f"{path}: no mu / sigma arrays (found {sorted(keys)}); expected ADM's "
                         "VIRTUAL_imagenet256_labeled.npz")
    return "mu, sigma present"


def _gpus(params: Params) -> Check:
    import torch

    wanted = sorted(s for s, r in params.resources.items() if r.gpu)
    if not wanted:
        return Check("GPUs", "not needed", "no stage's resources ask for one")
    seen = torch.cuda.device_count()
    where = "this machine" + (" (a login node? the SLURM jobs get theirs)" if not seen else "")
    return Check("GPUs", "ok" if seen else "warn", f"{seen} visible on {where}; asked by {', '.join(wanted)}")


def checks(params: Params) -> list[Check]:
    """Every row of the preflight table for ``params``."""
    return [*_imagenet(params), _disk(params), *_weights(params), _gpus(params)]


def render(rows: list[Check]) -> str:
    """The table as plain text: one line per input (status, item), its detail indented below it."""
    lines = []
    for r in rows:
        lines.append(f"{r.status.upper():<10}  {r.item}")
        lines += [f"{'':<12}{line.strip()}" for line in r.detail.splitlines()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.preflight``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=params_mod.PARAMS_FILE, type=Path)
    args = parser.parse_args(argv)
    try:
        params = params_mod.load(args.params)
    except params_mod.ParamsError as err:
        print(f"error: invalid parameters\n{err}", file=sys.stderr)
        return 2
    rows = checks(params)
    print(f"preflight of {args.params} (profile {params.profile})\n{render(rows)}")
    missing = [r.item for r in rows if r.status == "missing"]
    if missing:
        print(f"\n{len(missing)} input(s) missing or broken: a stage that reads them would stop. Fix them first.")
        return 1
    print("\nevery input the profile reads is in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
