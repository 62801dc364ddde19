"""ALIT training recipes, parameters, analyses, and the train_alit / eval_alit stages end to end (tiny)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import demo_params

from pipeline import params as P
from pipeline import profiles
from pipeline.experiments import alit_analysis
from pipeline.models.alit import ALIT, ALITConfig
from pipeline.models.maskgit_vqgan import MaskGITVQGAN, VQGANConfig
from pipeline.train.alit_recipes import CyclingReconstructionRecipe, LatentDistillationRecipe

TINY_VQGAN = VQGANConfig(ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=8, codebook_size=32, norm_groups=4,
                         image_size=32)


def _tiny_alit(seed: int = 0) -> ALIT:
    """32 px images, a 8x8 VQGAN grid, 32 tokens per iteration up to 256 (the schema's counts)."""
    torch.manual_seed(seed)
    return ALIT(ALITConfig(width=32, num_layers=1, num_heads=2, image_size=32, patch_size=4, vq_codebook_size=64,
                           vq_token_dim=4, vqgan=TINY_VQGAN))


def _images(n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g)


def _steps(recipe, batch, steps: int, lr: float) -> list[float]:
    params = [p for p in recipe.model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    recipe.model.train()
    losses = []
    for step in range(steps):
        out = recipe.model(batch)
        loss = recipe.losses(out, batch, step)[0]["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_stage1_recipe_loss_decreases_and_keeps_the_vqgan_frozen():
    alit = _tiny_alit()
    vqgan_before = {k: v.clone() for k, v in alit.base_tokenizer.state_dict().items()}
    recipe = LatentDistillationRecipe(alit)
    losses = _steps(recipe, (_images(), torch.zeros(4)), steps=8, lr=3e-3)
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(torch.equal(v, alit.base_tokenizer.state_dict()[k]) for k, v in vqgan_before.items())
    _, metrics = recipe.losses(recipe.model(_images()), _images(), 0)
    assert {"nll_loss_0", "nll_loss_7", "code_accuracy_first", "code_accuracy_last"} <= set(metrics)


def test_stage2_recipe_cycles_over_iterations_and_its_loss_decreases():
    alit = _tiny_alit()
    recipe = CyclingReconstructionRecipe(alit, l1=1.0)
    batch = _images()
    seen = []
    for step in range(10):  # the iteration each step trains: 0, 1, ..., 7, 0, 1
        seen.append(recipe.model(batch)["iteration"])
        recipe.losses(recipe.model(batch), batch, step)
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    recipe.model.next_iteration.fill_(3)  # a fixed iteration, so that the loss values are comparable
    losses = []
    for _ in range(6):
        losses.append(_steps(recipe, batch, steps=1, lr=3e-3)[0])
        recipe.model.next_iteration.fill_(3)
    assert losses[-1] < losses[0], losses
    assert "next_iteration" in recipe.model.state_dict()  # checkpointed: a resumed run keeps its place


@pytest.mark.parametrize("section, match", [
    ({"eval_alit": {"threshold": -0.1}}, "eval_alit.threshold: expected greater than 0"),
    ({"eval_alit": {"threshold": 1.5}}, r"eval_alit.threshold: expected 0 < threshold <= 1.0 for criterion l1"),
    ({"eval_alit": {"criterion": "ssim", "threshold": 2.5}}, r"eval_alit.threshold: expected 0 < threshold <= 2.0"),
    ({"eval_alit": {"token_counts": [0, 64]}}, r"eval_alit.token_counts.0: expected greater than or equal to 1"),
    ({"eval_alit": {"token_counts": [64, 64]}}, "eval_alit.token_counts: expected distinct"),
    ({"train_alit": {"iteration_weights": []}}, "train_alit.iteration_weights: expected List should have at "
                                                 "least 1 item"),
    ({"train_alit": {"source": "official"}}, "train_alit.folder must name"),
    ({"train_alit": {"perceptual_vgg": "vgg.pth"}}, "train_alit.perceptual_vgg and train_alit.perceptual_lin go"),
])
def test_schema_rejects_bad_alit_parameters_with_the_dotted_key(section, match):
    with pytest.raises(P.ParamsError, match=match):
        demo_params(section)


def test_schema_accepts_the_profiles_alit_sections():
    for profile in ("demo", "micro", "paper"):
        params = P.validate(profiles.resolve_profile(profile))
        assert max(params.eval_alit.token_counts) <= 256


def test_spearman_of_a_monotone_relation_is_one_and_undefined_for_constants():
    x = np.linspace(0, 1, 50)
    assert alit_analysis.spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert alit_analysis.spearman(x, -x**3) == pytest.approx(-1.0)
    assert alit_analysis.spearman(x, np.full(50, 64)) is None


def test_mean_ci95_is_the_normal_interval_of_the_mean():
    mean, half = alit_analysis.mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert alit_analysis.mean_ci95(torch.tensor([0.3])) == (pytest.approx(0.3), 0.0)


def test_linear_probe_separates_separable_tokens():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(5, 24, generator=g)
    labels = torch.arange(200) % 5
    x = centres[labels] + 0.3 * torch.randn(200, 24, generator=g)
    acc = alit_analysis.linear_probe(x[:150], labels[:150], x[150:], labels[150:], 5, max_iter=50)
    assert acc == 1.0
    noise = torch.randn(200, 24, generator=g)  # no signal: near chance
    assert alit_analysis.linear_probe(noise[:150], labels[:150], noise[150:], labels[150:], 5, max_iter=50) < 0.6


def test_rollout_attention_and_groups_have_the_documented_shapes():
    alit = _tiny_alit().eval()
    images = (_images(3) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    r = alit_analysis.rollout(alit, images, [32, 256], batch_size=2)
    assert r.recon[32].shape == (3, 3, 32, 32) and r.recon[32].dtype == torch.uint8
    assert r.latents[256].shape == (3, 256 * 4)
    attn = alit_analysis.decoder_attention(alit, _images(2))
    assert attn.shape == (2, 64, 256)
    assert torch.all(attn.sum(-1) <= 1 + 1e-5)  # a part of each softmax row
    groups = alit_analysis.attention_per_group(attn, 32)
    assert groups.shape == (2, 8, 64)
    torch.testing.assert_close(groups.sum(1), attn.sum(-1))
    with pytest.raises(ValueError, match="multiple of 32"):
        alit_analysis.iteration_of(alit, 48)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One MLflow database for the stage tests of this module (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _prepare_tiny(tmp_path, monkeypatch, mlflow_uri, **stage_params):
    from pipeline.models.clip import create_clip, save_clip
    from pipeline.stages.prepare import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    params = demo_params({"image_size": 32, "prepare": {
        "workers": 1, "demo": {"train_per_class": 2, "val_per_class": 2, "ood_per_class": 1}}, **stage_params})
    prepare(params, Path(params.paths.data) / "prepared", progress=False)  # 20 train, 20 val, 10 ood
    torch.manual_seed(0)
    save_clip(create_clip(params.train_clip.config), tmp_path / "models" / "clip")
    save_clip(create_clip(params.train_clip.judge_config), tmp_path / "models" / "clip" / "judge")  # the rFID space
    return params


def test_eval_stage_runs_end_to_end_and_writes_every_output(tmp_path, monkeypatch, mlflow_uri):
    from pipeline.stages import eval_alit as stage

    params = _prepare_tiny(tmp_path, monkeypatch, mlflow_uri, eval_alit={
        "token_counts": [32, 64, 256], "threshold": 0.3, "batch_size": 8, "attention_images": 2,
        "probe": {"max_iter": 10}}, fid={"batch_size": 8})
    _tiny_alit().save_pretrained(tmp_path / "models" / "alit")
    assert stage.run(params) == 0

    out = tmp_path / "results" / "eval_alit"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "details.json", "rfid_vs_tokens.csv",
                                               "rfid_vs_tokens.png", "per_image.csv", "complexity.png",
                                               "attention.png"}
    m = json.loads((out / "details.json").read_text())
    assert set(m["val"]["per_tokens"]) == {"32", "64", "256"}
    for s in m["val"]["per_tokens"].values():
        assert 0 <= s["l1"] <= 1 and s["psnr"] > 0 and s["rfid"] >= 0
        assert s["l1_ci95"] > 0 and s["psnr_ci95"] > 0  # 95% intervals over the 20 images
        assert s["judge_top1"] * 20 == pytest.approx(round(s["judge_top1"] * 20)) and s["judge_top1_ci95"] >= 0
    assert 0 <= m["val"]["originals"]["judge_top1"] <= 1 and "judge_top1" in m["familiarity"]["per_tokens"]["32"]
    a = m["val"]["adaptive"]
    assert 32 <= a["mean_tokens"] <= 256 and sum(a["histogram"].values()) == 20
    assert set(m["complexity"]) == {"spearman_png_bpp", "spearman_demo_complexity"}
    assert m["familiarity"]["split"] == "ood" and 32 <= m["familiarity"]["mean_tokens_ood"] <= 256
    assert set(m["probe"]["accuracy"]) == {"32", "64", "256"} and m["probe"]["chance"] == 0.1
    assert sum(m["specialisation"]["attention_share_per_group"]) == pytest.approx(1.0, abs=1e-4)
    assert len(m["specialisation"]["attention_share_per_group"]) == 8
    # the protocol each kind of score followed, for the report: rFID rounds to 8 bits, L1 does not
    data = {"dataset": "demo val, 10 classes", "image_size": params.image_size, "crop": "none"}
    rfid = m["protocol"]["rfid"]
    assert rfid == {"samples": 20, "reference": "same images", "uint8": "round", "features": rfid["features"], **data,
                    "pixels": "rendered, stored as png"}
    assert rfid["features"].startswith("clip:")  # the judge's image encoder, named
    assert m["protocol"]["errors"]["uint8"] == "none" and m["protocol"]["errors"]["samples"] == 20
    assert m["protocol"]["probe"]["train_samples"] == m["num_images"]["probe_train"]
    rows = (out / "rfid_vs_tokens.csv").read_text().splitlines()
    assert rows[0] == "tokens,l1,psnr,rfid,judge_top1,probe_accuracy,ood_l1,ood_psnr,ood_rfid,ood_judge_top1"
    assert len(rows) == 4
    assert len((out / "per_image.csv").read_text().splitlines()) == 21
    headline = json.loads((out / "metrics.json").read_text())
    curve = m["val"]["per_tokens"]
    assert headline == {"rfid_32": curve["32"]["rfid"], "rfid_256": curve["256"]["rfid"],
                        "adaptive_mean_tokens": a["mean_tokens"], "adaptive_rfid": a["rfid"],
                        "complexity_spearman": m["complexity"]["spearman_png_bpp"],
                        "ood_mean_tokens": m["familiarity"]["mean_tokens_ood"]}


def test_eval_stage_rejects_counts_the_model_cannot_reach(tmp_path, monkeypatch):
    from pipeline.errors import InputError
    from pipeline.stages import eval_alit as stage

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ALIT(ALITConfig(width=32, num_layers=1, num_heads=2, image_size=32, patch_size=4, vq_codebook_size=16,
                    vq_token_dim=4, max_rollout_iters=4, vqgan=TINY_VQGAN)).save_pretrained(tmp_path / "models/alit")
    with pytest.raises(InputError, match=r"eval_alit.token_counts: \[160, 192, 224, 256\] not reachable .* up to 128"):
        stage.run(demo_params())
    with pytest.raises(InputError, match=r"eval_alit.token_counts: \[48\] not reachable .* multiples of 32"):
        stage.run(demo_params({"eval_alit": {"token_counts": [48, 64]}}))


def test_train_stage_wants_one_iteration_weight_per_iteration(tmp_path, monkeypatch, mlflow_uri):
    from pipeline.errors import InputError
    from pipeline.stages import train_alit as stage

    params = _prepare_tiny(tmp_path, monkeypatch, mlflow_uri, train_alit={"iteration_weights": [2.0, 1.0]})
    MaskGITVQGAN(VQGANConfig(**{**TINY_VQGAN.__dict__, "ch": 16, "z_channels": 32, "norm_groups": 16,
                                "ch_mult": (1, 2, 4)})).save_pretrained(tmp_path / "models" / "vqgan")
    with pytest.raises(InputError, match=r"train_alit.iteration_weights: 2 weights, but alit_demo runs 8 iterations"):
        stage.run(params)
    assert not (tmp_path / "models" / "alit").exists()


def test_train_stage_trains_both_stages_and_saves_a_loadable_model(tmp_path, monkeypatch, mlflow_uri):
    from pipeline.stages import train_alit as stage

    params = _prepare_tiny(tmp_path, monkeypatch, mlflow_uri, train_alit={
        "stage1": {"steps": 2, "batch_size": 4, "warmup_steps": 0}, "stage2": {"steps": 2, "batch_size": 4}})
    torch.manual_seed(0)
    vqgan = MaskGITVQGAN(VQGANConfig(**{**TINY_VQGAN.__dict__, "ch": 16, "z_channels": 32, "norm_groups": 16,
                                        "ch_mult": (1, 2, 4)}))
    vqgan.save_pretrained(tmp_path / "models" / "vqgan")
    assert stage.run(params) == 0

    alit = ALIT.from_pretrained(tmp_path / "models" / "alit")
    assert alit.config.image_size == 32 and alit.config.grid_size == 8 and alit.config.width == 64  # alit_demo
    results = tmp_path / "results" / "train_alit"
    m = json.loads((results / "details.json").read_text())
    assert m["stage1"]["steps"] == 2 and m["stage2"]["steps"] == 2
    headline = json.loads((results / "metrics.json").read_text())
    assert headline["stage1_steps"] == 2 and headline["stage2_loss"] == m["stage2"]["loss"]
    for phase in ("stage1", "stage2"):  # log_every defaults to 10: the last step is always logged
        rows = (results / f"curve_{phase}.csv").read_text().splitlines()
        assert rows[0].startswith("step,loss,") and "images_per_s" in rows[0] and rows[1].startswith("2,")
    assert not list((tmp_path / "models" / "checkpoints").glob("train_alit*"))
