"""TiTok against the official implementation: fixture numerics, released key layouts, loading errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import attention_maps
from safetensors.torch import load_file, save_file

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models import count_parameters
from pipeline.models.maskgit_vqgan import VQGANConfig
from pipeline.models.quantizer import VectorQuantizer
from pipeline.models.registry import build_model, model_config
from pipeline.models.titok import TiTok, TiTokConfig

FIXTURES = Path(__file__).parent / "fixtures"
LATENT_TOL = dict(atol=1e-5, rtol=1e-4)
IMAGE_TOL = dict(atol=2e-4, rtol=0.0)
# fixture 1a replaced the hard-coded 128-channel pixel decoder with a 32-channel one
PIXEL_DECODER_OVERRIDES = {"titok_legacy_vq": {"vqgan": VQGANConfig(ch=32, image_size=64)}}


def _snapshot(name: str, tmp_path: Path) -> Path:
    """A Hugging Face-style folder: the fixture's official config.json, with the size table it used
    (``vit_sizes``) folded in, and the official weights."""
    src = FIXTURES / name
    folder = tmp_path / name
    folder.mkdir()
    config = json.loads((src / "config.json").read_text())
    config["vit_sizes"] = json.loads((src / "fixture_overrides.json").read_text())["model_size_tables_added"]
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(src / "model.safetensors", folder / "model.safetensors")
    return folder


def _load(name: str, tmp_path: Path) -> tuple[TiTok, dict[str, torch.Tensor]]:
    model = TiTok.from_pretrained(_snapshot(name, tmp_path), **PIXEL_DECODER_OVERRIDES.get(name, {}))
    return model, load_file(str(FIXTURES / name / "tensors.safetensors"))


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def test_legacy_vq_matches_official(tmp_path):
    model, t = _load("titok_legacy_vq", tmp_path)
    x = t["input_images"]
    torch.testing.assert_close(model.encode_continuous(x), t["encoder_latents_pre_quant"], **LATENT_TOL)
    tokens, info = model.encode(x)
    assert torch.equal(info["min_encoding_indices"], t["code_indices"])
    torch.testing.assert_close(tokens, t["quantized_latents"], **LATENT_TOL)
    for key in ("quantizer_loss", "commitment_loss", "codebook_loss"):  # zeroed: finetune_decoder=True
        torch.testing.assert_close(info[key], t[key])
    torch.testing.assert_close(model.decoder_logits(t["quantized_latents"]), t["decoder_logits"], **LATENT_TOL)
    torch.testing.assert_close(model.decode(t["quantized_latents"]), t["reconstruction"], **IMAGE_TOL)
    torch.testing.assert_close(model.decode_tokens(t["code_indices"]), t["reconstruction_from_indices"],
                               **IMAGE_TOL)
    torch.testing.assert_close(model(x)[0], t["forward_output"], **IMAGE_TOL)


@torch.no_grad()
def test_vq_pixel_matches_official(tmp_path):
    model, t = _load("titok_vq_pixel", tmp_path)
    x = t["input_images"]
    torch.testing.assert_close(model.encode_continuous(x), t["encoder_latents_pre_quant"], **LATENT_TOL)
    tokens, info = model.encode(x)
    assert torch.equal(info["min_encoding_indices"], t["code_indices"])
    torch.testing.assert_close(tokens, t["quantized_latents"], **LATENT_TOL)
    for key in ("quantizer_loss", "commitment_loss", "codebook_loss"):
        torch.testing.assert_close(info[key], t[key], **LATENT_TOL)
    assert 0 < info["usage"] <= 1 and info["perplexity"] >= 1
    torch.testing.assert_close(model.decode(t["quantized_latents"]), t["reconstruction"], **IMAGE_TOL)
    torch.testing.assert_close(model.decode_tokens(t["code_indices"]), t["reconstruction_from_indices"],
                               **IMAGE_TOL)
    torch.testing.assert_close(model(x)[0], t["forward_output"], **IMAGE_TOL)


@torch.no_grad()
def test_vae_pixel_matches_official(tmp_path):
    model, t = _load("titok_vae_pixel", tmp_path)
    x = t["input_images"]
    torch.testing.assert_close(model.encode_continuous(x), t["encoder_posterior_params"], **LATENT_TOL)
    torch.manual_seed(12365)  # the official sample draws torch.randn on the CPU generator
    sample, info = model.encode(x)
    torch.testing.assert_close(sample, t["posterior_sample"], **LATENT_TOL)
    for ours, theirs in (("mean", "posterior_mean"), ("logvar", "posterior_logvar"), ("std", "posterior_std"),
                         ("kl", "posterior_kl")):
        torch.testing.assert_close(info[ours], t[theirs], **LATENT_TOL)
    torch.testing.assert_close(model.decode(t["posterior_mean"]), t["reconstruction_from_mean"], **IMAGE_TOL)
    torch.testing.assert_close(model.decode_tokens(t["posterior_sample"]), t["reconstruction_from_sample"],
                               **IMAGE_TOL)


REFERENCE_NAMES = {
    "titok_s128": "titok_s128", "titok_b64": "titok_b64", "titok_l32": "titok_l32",
    "titok_bl64_vq8k": "titok_bl64_vq8k", "titok_bl128_vq8k": "titok_bl128_vq8k",
    "titok_sl256_vq8k": "titok_sl256_vq8k", "titok_ll32_vae": "titok_ll32_vae_c16",
    "titok_bl64_vae": "titok_bl64_vae_c16", "titok_bl128_vae": "titok_bl128_vae_c16",
}


@pytest.mark.parametrize("name", list(REFERENCE_NAMES))
def test_released_configs_match_reference_keys(name):
    reference = json.loads((FIXTURES / "reference_keys" / "titok_released_configs_keys.json").read_text())
    ref = reference[REFERENCE_NAMES[name]]
    with torch.device("meta"):
        model = build_model(name)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in ref["keys"]]
    assert count_parameters(model) == ref["num_params"]
    # the official config.json of the release maps to the same architecture
    official = {"model": {"vq_model": ref["config_vq_model"]},
                "dataset": {"preprocessing": {"crop_size": ref["crop_size"]}}}
    assert TiTokConfig.from_official(official, freeze_encoder=False) == model.config


def test_parameter_counts_of_the_paper():
    counts = {}
    for name in ("titok_s128", "titok_b64", "titok_l32"):
        with torch.device("meta"):
            counts[name] = round(count_parameters(build_model(name)) / 1e6, 2)
    assert counts == {"titok_s128": 83.67, "titok_b64": 204.81, "titok_l32": 641.05}


def test_straight_through_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = build_model("titok_demo", enc_depth=1, dec_depth=1)
    images = torch.rand(2, 3, 64, 64)
    tokens, info = model.encode(images)
    loss = model.decoder_logits(tokens).square().mean() + info["quantizer_loss"]
    loss.backward()
    for name in ("encoder.patch_embed.weight", "encoder.conv_out.weight", "latent_tokens"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.quantize.embedding.weight.grad.abs().sum() > 0  # codebook loss trains the codebook


def test_straight_through_passes_the_gradient_unchanged():
    quantizer = VectorQuantizer(codebook_size=16, token_size=4, use_l2_norm=False)
    latents = torch.randn(2, 4, 1, 8, requires_grad=True)
    tokens, info = quantizer(latents)
    upstream = torch.randn_like(tokens)
    (tokens * upstream).sum().backward()
    torch.testing.assert_close(latents.grad, upstream)  # identity Jacobian of z + sg(e - z)
    codes = info["min_encoding_indices"]  # (B, 1, N)
    torch.testing.assert_close(tokens.detach(), quantizer.get_codebook_entry(codes).permute(0, 3, 1, 2))


def test_demo_roundtrip_save_and_load(tmp_path):
    model = build_model("titok_demo", enc_depth=1, dec_depth=1).eval()
    model.save_pretrained(tmp_path / "demo")
    loaded = TiTok.from_pretrained(tmp_path / "demo")
    assert loaded.config == model.config
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_missing_folder_names_the_file_and_how_to_get_it(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        TiTok.from_pretrained(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "config.json") in message
    assert "model.safetensors" in message and "pytorch_model.bin" in message
    assert "hf download yucornetto/tokenizer_titok_l32_imagenet" in message


def test_missing_weights_file(tmp_path):
    folder = _snapshot("titok_vq_pixel", tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="model.safetensors or pytorch_model.bin"):
        TiTok.from_pretrained(folder)


def test_shape_mismatch_lists_keys_with_shapes(tmp_path):
    folder = _snapshot("titok_vq_pixel", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["quantize.embedding.weight"] = torch.zeros(64, 16)
    del state["decoder.conv_out.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(InputError) as err:
        TiTok.from_pretrained(folder)
    message = str(err.value)
    assert "quantize.embedding.weight: expected (128, 16), found (64, 16)" in message
    assert "decoder.conv_out.bias" in message and str(folder / "model.safetensors") in message


def test_pytorch_model_bin_loads_without_unpickling_objects(tmp_path):
    folder = _snapshot("titok_vq_pixel", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    model = TiTok.from_pretrained(folder)
    torch.testing.assert_close(model.state_dict()["quantize.embedding.weight"], state["quantize.embedding.weight"])
    torch.save({"state": object()}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="pytorch_model.bin"):
        TiTok.from_pretrained(folder)


def test_dead_codes_are_restarted_from_encoder_outputs_only_while_the_encoder_trains():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, use_l2_norm=True, restart_dead_codes=True).train()
    z = torch.randn(16, 4, 1, 1) * 0.01 + torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1)  # one cluster
    frozen_codebook = q.embedding.weight.detach().clone()
    for _ in range(40):
        q(z)  # no grad on z: a frozen encoder (TiTok stage 2) never moves the codebook
    assert torch.equal(q.embedding.weight, frozen_codebook)
    for _ in range(40):
        q(z.clone().requires_grad_(True))
    used = q(z)[1]["min_encoding_indices"].unique()
    restarted = F.normalize(q.embedding.weight, dim=1)[:, 0] > 0.99  # re-seeded on the cluster
    assert restarted.sum() >= 7 and len(used) >= 2  # the images now spread over several codes
    assert "usage_ema" in q.state_dict()
    assert "usage_ema" not in VectorQuantizer(8, 4, use_l2_norm=True).state_dict()  # official layout
    before = q.embedding.weight.detach().clone()
    q.eval()(z.clone().requires_grad_(True))
    assert torch.equal(before, q.embedding.weight)  # eval mode never restarts


def test_demo_titok_starts_local_with_restarts_released_configs_do_not():
    demo, released = build_model("titok_demo"), TiTokConfig()
    assert demo.config.init == "local" and demo.config.restart_dead_codes and not demo.config.scrambles_tokens
    assert released.init == "vit" and not released.restart_dead_codes and released.scrambles_tokens
    assert demo.decoder.decoder_embed.weight[48:].std() > 0.1  # xavier for 12 -> 96 (rows 0-47: position codes)
    assert build_model("titok_demo", init="vit").decoder.decoder_embed.weight.std() < 0.025
    with pytest.raises(ValueError, match="legacy_reshape=False"):
        model_config("titok_demo", legacy_reshape=True)


def _first_block_attention(model, images):
    """Attention probabilities (B, heads, L, L) of the first encoder and the first decoder block."""
    maps = attention_maps(lambda: model.decoder_logits(model.encode(images)[0]))
    return maps[0], maps[model.config.enc_depth]


def test_local_init_routes_each_grid_cell_through_its_own_token():
    torch.manual_seed(0)
    model = build_model("titok_demo").eval()
    images = torch.rand(2, 3, 64, 64)
    enc, dec = _first_block_attention(model, images)
    # encoder: latent i (grid cell (i // 8, i % 8) of 4 x 8) over the 8 x 8 patches; patch cell (r // 2, c)
    patches = torch.arange(64)
    patch_cell = (patches // 8) // 2 * 8 + patches % 8
    latent_rows = enc[:, :, 65:, 1:65]  # (B, h, 32, 64)
    own = latent_rows * (patch_cell[None, :] == torch.arange(32)[:, None])
    assert own.sum(-1).mean() > 0.9, own.sum(-1).mean()
    # decoder: mask token at (r, c) of 16 x 16 over the 32 latents; its cell (r // 4, c // 2)
    masks = torch.arange(256)
    mask_cell = (masks // 16) // 4 * 8 + (masks % 16) // 2
    mask_rows = dec[:, :, 1:257, 257:]  # (B, h, 256, 32)
    assert mask_rows.gather(-1, mask_cell.view(1, 1, 256, 1).expand(2, 4, 256, 1)).mean() > 0.9
    # and the layouts that would undo it: the xavier model attends uniformly
    enc_x, _ = _first_block_attention(build_model("titok_demo", init="xavier").eval(), images)
    assert (enc_x[:, :, 65:, 1:65] * (patch_cell[None, :] == torch.arange(32)[:, None])).sum(-1).mean() < 0.2


def test_centred_patch_embedding_makes_the_tokens_depend_on_the_image():
    torch.manual_seed(0)
    colours = 0.3 + 0.4 * torch.rand(16, 3, 1, 1)  # away from 0 and 1, as most photographs
    images = (colours + 0.1 * torch.randn(16, 3, 64, 64)).clamp(0, 1)

    def image_share(model):  # the share of the tokens' energy that varies across images
        with torch.no_grad():
            z = model.encode_continuous(images)
        return (z.var(0).sum() / (z**2).mean(0).sum()).item()

    local = build_model("titok_demo")
    uncentred = build_model("titok_demo")
    uncentred.load_state_dict(local.state_dict())
    torch.nn.init.zeros_(uncentred.encoder.patch_embed.bias)
    assert image_share(local) > 4 * image_share(uncentred), (image_share(local), image_share(uncentred))
