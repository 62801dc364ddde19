"""The train_titok stage picks its recipe from the model's head: a single-stage TiTok (RGB head) trains on
pixels in one phase, without a VQGAN; asking it for a stage 2 stops before any work (tiny, on CPU)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import demo_params

from pipeline.errors import InputError
from pipeline.models import registry
from pipeline.models.titok import TiTok, TiTokConfig

# a tiny RGB-head TiTok under a paper config's name (the stage builds models by name)
TINY_SINGLE_STAGE = TiTokConfig(image_size=32, enc_width=16, enc_depth=1, enc_heads=2, enc_patch_size=8,
                                dec_width=16, dec_depth=1, dec_heads=2, dec_patch_size=8, num_latent_tokens=8,
                                token_size=4, codebook_size=32, use_l2_norm=False, legacy=False, pixel_decoder=False)


@pytest.fixture()
def tiny_single_stage(tmp_path, monkeypatch):
    from pipeline.stages.prepare import prepare

    monkeypatch.setitem(registry.CONFIGS, "titok_bl64_vq8k", lambda: TINY_SINGLE_STAGE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def params(**train_titok):
        p = demo_params({"image_size": 32, "prepare": {
            "workers": 1, "demo": {"train_per_class": 2, "val_per_class": 2, "ood_per_class": 1}},
            "train_titok": {"model": "titok_bl64_vq8k", "stage1": {"steps": 3, "batch_size": 4, "warmup_steps": 0,
                                                                   "lr": 3e-3}, **train_titok}})
        prepare(p, Path(p.paths.data) / "prepared", progress=False)
        return p
    return params


def test_single_stage_titok_trains_on_pixels_without_a_vqgan(tiny_single_stage, tmp_path):
    from pipeline.stages import train_titok as stage

    params = tiny_single_stage()
    assert not (tmp_path / "models" / "vqgan").exists()  # the proxy-code recipe would need it
    torch.manual_seed(0)
    assert stage.run(params) == 0

    titok = TiTok.from_pretrained(tmp_path / "models" / "titok")
    assert not titok.config.legacy and titok.config.num_latent_tokens == 8
    details = json.loads((tmp_path / "results" / "train_titok" / "details.json").read_text())
    assert details["stage1/steps"] == 3 and not any(k.startswith("stage2/") for k in details)
    assert {"stage1/l2", "stage1/quantizer"} <= set(details), details  # pixel losses, not proxy-code CE
    assert "stage1/proxy_ce" not in details
    assert not list((tmp_path / "models" / "checkpoints").glob("train_titok*"))


def test_single_stage_titok_with_a_stage_2_stops_before_any_work(tiny_single_stage, tmp_path):
    from pipeline.stages import train_titok as stage

    params = tiny_single_stage(stage2={"steps": 5})
    with pytest.raises(InputError, match=r"train_titok.model titok_bl64_vq8k is a single-stage TiTok.*"
                                         r"set train_titok.stage2.steps to 0"):
        stage.run(params)
    assert not (tmp_path / "results" / "train_titok").exists()
