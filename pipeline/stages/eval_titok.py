"""Stage ``eval_titok``: reconstruction quality of the TiTok in ``<paths.models>/titok``.

On ``eval_titok.split`` (val by default): rFID and IS of the reconstructions against the originals of
the same images (the tokenizer rFID convention: reconstructed 50k ImageNet val vs the val images,
unlike gFID which uses ADM's training-set statistics), precision / recall, PSNR, SSIM, L1, and the
codebook usage of the 1D tokens (fraction of codes used, perplexity), and the judge's zero-shot
top-1 on the originals and on the reconstructions (does a reconstruction keep what makes its class?).
The feature space is ``fid.feature_space``: ADM's Inception at paper scale, the demo judge's image
encoder in the demo (the demo has no Inception weights; its numbers are therefore not comparable to
the paper's). Writes ``<paths.results>/eval_titok/details.json`` (all of it), ``metrics.json`` (its
headline, DVC metrics) and ``reconstructions.png``. ``protocol.rfid`` records the protocol the rFID and IS
followed (samples, reference, dataset, image size, crop, uint8 rounding, features) for the report to
compare with the paper's.
"""

from __future__ import annotations

import torch

from pipeline.io import write_metrics
from pipeline.layout import prepared_root, results_dir, titok_dir
from pipeline.metrics.images import to_float, to_uint8
from pipeline.models.batched import reconstruct
from pipeline.models.titok import TiTok
from pipeline.params import Params
from pipeline.stages._common import save_image_grid
from pipeline.tracking import stage_run

STAGE = "eval_titok"
# metrics.json (what `dvc metrics show` prints): flat name -> key of details.json
HEADLINE = {k: k for k in ("num_images", "rfid", "is", "psnr", "ssim", "codebook_usage", "judge_accuracy_ratio")}


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Fraction of the codebook used by ``codes`` (any shape) and the perplexity of their distribution."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"codebook_usage": (counts > 0).double().mean().item(),
            "codebook_perplexity": torch.exp(-(nz * nz.log()).sum()).item()}


def run(params: Params) -> int:
    """Reconstruct the evaluation split and write the metrics and a reconstruction grid."""
    from pipeline.data.shards import load_split
    from pipeline.metrics.clip_score import zero_shot_accuracy
    from pipeline.metrics.fid import fidelity_metrics, fidelity_protocol, reference_stats
    from pipeline.metrics.image_stats import l1, psnr, ssim
    from pipeline.stages._inputs import class_names, data_protocol, feature_space, judge_clip

    cfg = params.eval_titok
    results = results_dir(params, STAGE)
    with stage_run(STAGE, params) as run:
        titok = TiTok.from_pretrained(titok_dir(params))
        judge = judge_clip(params)  # every weights file (judge, Inception at paper scale) before the long pass
        space = feature_space(params, judge)
        data = load_split(prepared_root(params), cfg.split, limit=cfg.num_images)
        images = to_float(data.images)
        recon, codes = reconstruct(titok, images, batch_size=cfg.batch_size)
        quality = {"psnr": psnr(recon, images).mean().item(), "ssim": ssim(recon, images).mean().item(),
                   "l1": l1(recon, images).mean().item()}
        usage = codebook_usage(codes, titok.config.codebook_size)
        names, labels = class_names(params), torch.from_numpy(data.labels)
        judged = {"judge_top1_originals": zero_shot_accuracy(judge, images, labels, names, params.train_clip.templates),
                  "judge_top1_reconstructions": zero_shot_accuracy(judge, recon, labels, names,
                                                                   params.train_clip.templates)}
        judged["judge_accuracy_ratio"] = judged["judge_top1_reconstructions"] / max(judged["judge_top1_originals"],
                                                                                    1e-9)
        reference = reference_stats(space, images=data.images, batch_size=params.fid.batch_size,
                                    prc_images=params.fid.prc_images)
        fidelity = fidelity_metrics(to_uint8(recon), reference, space, isc_splits=params.fid.isc_splits,
                                    batch_size=params.fid.batch_size)
        # num_tokens, quantize_mode and legacy (two-stage proxy-code head) tell the released tokenizers apart:
        # the report's rows are about one of them each
        metrics = {"split": cfg.split, "num_images": len(images), "num_tokens": titok.config.num_latent_tokens,
                   "quantize_mode": titok.config.quantize_mode, "legacy": titok.config.legacy,
                   "feature_space": space.label or space.name,  # the network, e.g. clip:clip_judge_demo
                   "rfid": fidelity["fid"], "is": fidelity.get("isc_mean"), "is_std": fidelity.get("isc_std"),
                   "precision": fidelity.get("precision"), "recall": fidelity.get("recall"),
                   **quality, **judged, **usage,
                   # rFID's protocol as followed: real statistics from the very images reconstructed
                   "protocol": {"rfid": fidelity_protocol(space, len(images), "same images")
                                | data_protocol(params, cfg.split)}}
        n = min(cfg.grid_images, len(images))
        save_image_grid([images[:n], recon[:n]], results / "reconstructions.png", labels=["input", "TiTok"],
                        title=f"{STAGE}: {cfg.split} reconstructions from {titok.config.num_latent_tokens} tokens "
                              f"(PSNR {quality['psnr']:.2f} dB, rFID {fidelity['fid']:.2f})")
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        run.log_artifact(results / "reconstructions.png")
        write_metrics(results, metrics, HEADLINE)
    print(f"{STAGE}: PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.3f}, rFID {fidelity['fid']:.2f}, "
          f"codebook usage {usage['codebook_usage']:.2f}, judge top-1 {judged['judge_top1_originals']:.3f} "
          f"(originals) / {judged['judge_top1_reconstructions']:.3f} (reconstructions)")
    return 0
