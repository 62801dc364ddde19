"""MaskGIT-VQGAN against the official implementation: fixture numerics, key layout, loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models import count_parameters
from pipeline.models.maskgit_vqgan import MaskGITVQGAN, VQGANConfig
from pipeline.models.registry import build_model

FIXTURES = Path(__file__).parent / "fixtures"
LATENT_TOL = dict(atol=1e-5, rtol=1e-4)
IMAGE_TOL = dict(atol=2e-4, rtol=0.0)


@pytest.fixture
def official(tmp_path):
    folder = tmp_path / "maskgit_vqgan"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / "maskgit_vqgan" / name, folder / name)
    torch.set_num_threads(2)
    return MaskGITVQGAN.from_pretrained(folder), load_file(str(FIXTURES / "maskgit_vqgan" / "tensors.safetensors"))


@torch.no_grad()
def test_matches_official(official):
    model, t = official
    x = t["input_images"]
    h = model.encode_continuous(x)
    torch.testing.assert_close(h, t["encoder_output"], **LATENT_TOL)
    z_q, codes, _ = model.encode(x)
    assert torch.equal(codes, t["code_indices"])
    torch.testing.assert_close(z_q, t["quantized"], **LATENT_TOL)
    z_st, _, info = model.quantize(h, return_loss=True)
    torch.testing.assert_close(z_st, t["quantized_return_loss"], **LATENT_TOL)
    torch.testing.assert_close(info["quantizer_loss"], t["quantizer_loss"], **LATENT_TOL)
    torch.testing.assert_close(model.decode(z_q), t["decoded_unclamped"], **IMAGE_TOL)
    torch.testing.assert_close(model.decode_codes(codes, clamp=True), t["decoded"], **IMAGE_TOL)
    torch.testing.assert_close(model.quantize.get_codebook_entry(codes), t["codebook_entry_from_2d_codes"])
    torch.testing.assert_close(model.quantize.get_codebook_entry(codes.view(2, 4, 4)),
                               t["codebook_entry_from_2d_codes"])
    soft, argmin = model.soft_codes(h)
    torch.testing.assert_close(soft, t["soft_code"], **LATENT_TOL)
    assert torch.equal(argmin, codes)


def test_shortcut_quirk_discards_the_block_input():
    from pipeline.models.maskgit_vqgan import ResnetBlock

    block = ResnetBlock(32, 64)
    x = torch.randn(1, 32, 8, 8)
    h = block.conv2(torch.nn.functional.silu(block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x))))))
    torch.testing.assert_close(block(x), h + block.nin_shortcut(h))
    assert block.nin_shortcut.weight.shape == (64, 64, 1, 1)


def test_released_keys_and_parameter_count():
    reference = json.loads((FIXTURES / "reference_keys" / "maskgit_vqgan_released_keys.json").read_text())
    with torch.device("meta"):
        model = build_model("maskgit_vqgan")
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [
        (e["key"], e["shape"]) for e in reference["keys"]]
    assert count_parameters(model) == reference["num_params"]
    assert count_parameters(model.decoder) == reference["num_params_decoder"]
    assert count_parameters(model.encoder) == reference["num_params_encoder"]


def test_taming_key_style():
    model = MaskGITVQGAN(VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=16,
                                     key_style="taming"))
    keys = model.state_dict().keys()
    assert "decoder.mid.block_1.conv1.weight" in keys and "decoder.mid.block_2.conv1.weight" in keys
    assert "decoder.up.1.upsample.conv.weight" in keys
    out, info = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 3, 16, 16) and info["min_encoding_indices"].shape == (2, 64)


def test_demo_vqgan_trains_its_encoder():
    torch.manual_seed(0)
    model = build_model("vqgan_demo")
    x = torch.rand(1, 3, 64, 64)
    out, info = model(x)
    assert info["min_encoding_indices"].shape == (1, 256)  # 16 x 16 codes per 64 x 64 image
    ((out - x).square().mean() + info["quantizer_loss"]).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_bare_weights_file_and_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="maskgit-vqgan-imagenet-f16-256.bin"):
        MaskGITVQGAN.from_pretrained(tmp_path / "missing")
    # a bare .bin file without config.json is read as the official architecture: a tiny file fails
    state = load_file(str(FIXTURES / "maskgit_vqgan" / "model.safetensors"))
    torch.save(state, tmp_path / "maskgit-vqgan-imagenet-f16-256.bin")
    with pytest.raises(InputError) as err:
        MaskGITVQGAN.from_pretrained(tmp_path / "maskgit-vqgan-imagenet-f16-256.bin")
    assert "encoder.conv_in.weight: expected (128, 3, 3, 3), found (32, 3, 3, 3)" in str(err.value)
    model = MaskGITVQGAN.from_pretrained(tmp_path / "maskgit-vqgan-imagenet-f16-256.bin", ch=32,
                                         ch_mult=(1, 1, 2, 2, 2), z_channels=64, codebook_size=256)
    assert count_parameters(model) == 1_507_555


def test_vqgan_dead_codes_restart_in_training_only_and_released_layout_has_no_usage_buffer():
    torch.manual_seed(0)
    config = VQGANConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, codebook_size=8, norm_groups=2,
                         restart_dead_codes=True)
    model = MaskGITVQGAN(config).train()
    assert "quantize.usage_ema" in model.state_dict()
    assert "quantize.usage_ema" not in build_model("maskgit_vqgan").state_dict()
    h = torch.randn(4, 4, 2, 2) * 0.01 + 5.0  # every feature far from the U(-1/K, 1/K) codebook, one cluster
    frozen = model.quantize.embedding.weight.detach().clone()
    for _ in range(40):
        model.quantize(h)  # no grad: a frozen encoder (TiTok's proxy codes, ALIT's stage 1) never restarts
    assert torch.equal(model.quantize.embedding.weight, frozen)
    model.quantize.requires_grad_(False)
    for _ in range(40):
        model.quantize(h.clone().requires_grad_(True))  # a trained encoder around a frozen codebook
    assert torch.equal(model.quantize.embedding.weight, frozen)
    model.quantize.requires_grad_(True)
    for _ in range(40):
        model.quantize(h.clone().requires_grad_(True))
    assert (model.quantize.embedding.weight > 4.0).all(dim=1).sum() >= 7  # re-seeded on the cluster
    assert len(model.quantize(h)[1].unique()) >= 2  # the features now spread over several codes
