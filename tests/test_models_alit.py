"""ALIT: equivalence with the official implementation (tests/fixtures/alit), loading, adaptive length."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import attention_maps
from safetensors.torch import load_file, save_file

from pipeline.errors import InputError, MissingWeightsError
from pipeline.models import count_parameters
from pipeline.models.alit import ALIT, ALITConfig, latent_distillation_loss
from pipeline.models.alit_adaptive import adaptive_tokenize
from pipeline.models.maskgit_vqgan import VQGANConfig
from pipeline.models.registry import build_model, model_config

FIXTURE = Path(__file__).parent / "fixtures" / "alit"
ITERS = range(8)
# suggested tolerances for a float32 reimplementation (fixture notes, section 6)
FEATURES = {"atol": 1e-5, "rtol": 1e-4}
IMAGES = {"atol": 2e-4, "rtol": 0.0}


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "tensors.safetensors"))


@pytest.fixture(scope="module")
def model() -> ALIT:
    return ALIT.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def micro() -> ALIT:
    """A random ALIT on 16 px images (4x4 grid, 2 tokens per iteration) for the control-flow tests."""
    torch.manual_seed(0)
    vqgan = VQGANConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=8, codebook_size=32,
                        key_style="taming")
    config = ALITConfig(width=32, num_layers=1, num_heads=2, image_size=16, patch_size=4, num_init_latent_tokens=2,
                        max_latent_tokens=16, vq_codebook_size=16, vqgan=vqgan)
    return ALIT(config).eval()


@pytest.fixture(scope="module")
def scenario_a(model, tensors):
    with torch.no_grad():
        return model(tensors["input_images"], pixel_iters="all")


def test_fixture_keys_load_strict(model):
    listing = [(e["key"], e["shape"]) for e in json.loads((FIXTURE / "state_dict_keys.json").read_text())]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == listing  # same keys, same order
    model.load_state_dict(load_file(str(FIXTURE / "model.safetensors")), strict=True)
    assert count_parameters(model) == 1_072_239
    assert count_parameters(model.base_tokenizer) == 795_699


def test_fixture_vqgan_features_and_codes(model, tensors, scenario_a):
    with torch.no_grad():
        features = model.base_tokenizer.vqgan.encoder(tensors["input_images"])
    torch.testing.assert_close(features, tensors["vqgan_encoder_output"], **FEATURES)
    assert torch.equal(scenario_a["code_targets"], tensors["vqgan_gt_indices"])


@pytest.mark.parametrize(("ours", "theirs", "tol"), [
    ("latent_tokens", "latent_tokens", FEATURES),
    ("image_tokens", "image_tokens", FEATURES),
    ("factorized_latents", "factorized_latents", FEATURES),
    ("quantized_latents", "quantized_latents", FEATURES),
    ("code_indices", "code_indices", None),
    ("logits", "decoder_logits", FEATURES),
    ("soft_code", "soft_code", FEATURES),
    ("halting_prob", "halting_prob", FEATURES),
    ("halting_mask", "drop_mask", None),
    ("reconstruction", "reconstruction", IMAGES),
])
def test_fixture_every_iteration(scenario_a, tensors, ours, theirs, tol):
    assert scenario_a["num_tokens"] == [8 * (i + 1) for i in ITERS]
    for i in ITERS:
        expected = tensors[f"iter{i}_{theirs}"]
        if tol is None:
            assert torch.equal(scenario_a[ours][i], expected), f"iteration {i}"
        else:
            torch.testing.assert_close(scenario_a[ours][i], expected, **tol, msg=f"{ours}, iteration {i}")


def test_fixture_halting_with_recorded_masks(model, tensors):
    """Scenario B (threshold 0): tokens are masked; replaying the recorded masks gives the same run."""
    masks = [tensors[f"halt0_iter{i}_drop_mask"] for i in ITERS]
    assert sum(int(m.sum()) for m in masks) > 0
    with torch.no_grad():
        out = model(tensors["input_images"], pixel_iters=[0, 7], drop_masks=masks)
    for ours, theirs, tol in [("latent_tokens", "latent_tokens", FEATURES), ("logits", "decoder_logits", FEATURES),
                              ("halting_prob", "halting_prob", FEATURES)]:
        for i in ITERS:
            torch.testing.assert_close(out[ours][i], tensors[f"halt0_iter{i}_{theirs}"], **tol)
    for i in (0, 7):
        torch.testing.assert_close(out["reconstruction"][i], tensors[f"halt0_iter{i}_reconstruction"], **IMAGES)
    for i in ITERS:
        assert torch.equal(out["code_indices"][i], tensors[f"halt0_iter{i}_code_indices"])


def test_fixture_halting_draws_match_the_official_seeded_run(model, tensors):
    """With the official seed, our Bernoulli draws are the recorded ones (same order of RNG use)."""
    halting_everything = ALIT(dataclasses.replace(model.config, dynamic_halting_threshold=0.0)).eval()
    halting_everything.load_state_dict(model.state_dict())
    torch.manual_seed(600)
    with torch.no_grad():
        out = halting_everything(tensors["input_images"])
    for i in ITERS:
        assert torch.equal(out["halting_mask"][i], tensors[f"halt0_iter{i}_drop_mask"])


def test_fixture_training_losses(model, tensors):
    model.train()
    try:
        out = model(tensors["input_images"])
        total, logs = latent_distillation_loss(out, model.vqgan_codebook)
    finally:
        model.eval()
    torch.testing.assert_close(total.detach(), tensors["train_total_loss"], atol=1e-4, rtol=1e-6)
    for kind in ("nll", "code", "quantization"):
        ours = torch.tensor([logs[f"{kind}_loss_{i}"] for i in ITERS])
        torch.testing.assert_close(ours, tensors[f"train_{kind}_loss_per_iter"], atol=1e-5, rtol=1e-5)
    weights = torch.tensor([2.5, 2.0, 1.5, 1.25, 1.0, 1.0, 1.0, 1.0])
    per_iter = {kind: tensors[f"train_{kind}_loss_per_iter"] for kind in ("nll", "code", "quantization")}
    demo_total, _ = latent_distillation_loss(out, model.vqgan_codebook, code_weight=30.0, quantizer_weight=0.0)
    expected = (weights * per_iter["nll"]).sum() + 30.0 * per_iter["code"].sum()  # the demo's weighting
    torch.testing.assert_close(demo_total.detach(), expected, atol=1e-3, rtol=1e-5)
    total.backward()
    assert model.encoder.transformer[0].attn.in_proj_weight.grad is not None
    assert model.base_tokenizer.vqgan.quantize.embedding.weight.grad is None  # soft codes use a detached codebook
    model.zero_grad(set_to_none=True)


def test_fixture_official_batch_mean_selection(scenario_a, tensors):
    """The official encode(threshold): first iteration whose batch-mean L1 is below it, else the best."""
    x = tensors["input_images"]
    l1 = torch.stack([(r - x).abs().mean() for r in scenario_a["reconstruction"]])
    chosen = next((i for i in ITERS if l1[i] < 0.07), int(l1.argmin()))
    torch.testing.assert_close(scenario_a["latent_tokens"][chosen], tensors["encode_min_length_embedding"], **FEATURES)
    torch.testing.assert_close(scenario_a["reconstruction"][chosen], tensors["encode_min_length_reconstruction"],
                               **IMAGES)


def test_decode_tokens_matches_the_rollout(model, scenario_a):
    for i in (0, 3):
        torch.testing.assert_close(model.decode_tokens(scenario_a["code_indices"][i]), scenario_a["reconstruction"][i],
                                   **IMAGES)


@pytest.mark.parametrize("name", ["alit_small", "alit_base", "alit_semilarge"])
def test_released_config_keys_match_the_official_listing(name):
    listing = json.loads((FIXTURE / "alit_released_configs_keys.json").read_text())[name]
    expected = [(e["key"], e["shape"]) for e in listing["keys"] if not e["key"].startswith("gan_losses.")]
    with torch.device("meta"):
        model = build_model(name)
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected
    assert count_parameters(model) == listing["num_params_without_gan_losses"]


# ---- loading -------------------------------------------------------------------------------------


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(MissingWeightsError, match="config.json"):
        ALIT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        ALIT.from_pretrained(tmp_path)


def test_from_pretrained_official_checkpoint_skips_gan_losses(tmp_path, model, tensors):
    state = dict(model.state_dict())
    state["gan_losses.0.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    torch.save({"ema": state, "epoch": 3}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
    loaded = ALIT.from_pretrained(tmp_path)
    assert torch.equal(loaded.latent_tokens, model.latent_tokens)


def test_from_pretrained_lists_shape_mismatches(tmp_path, model):
    state = dict(model.state_dict())
    state["latent_tokens"] = torch.zeros(9, 64)
    state["quantize.embedding.weight"] = torch.zeros(32, 12)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
    with pytest.raises(InputError) as err:
        ALIT.from_pretrained(tmp_path)
    assert "latent_tokens: expected (8, 64), found (9, 64)" in str(err.value)
    assert "quantize.embedding.weight: expected (64, 12), found (32, 12)" in str(err.value)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    demo = build_model("alit_demo").eval()
    demo.save_pretrained(tmp_path)
    again = ALIT.from_pretrained(tmp_path)
    assert again.config == demo.config
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x, num_iters=1)["logits"][0], demo(x, num_iters=1)["logits"][0])


def test_config_rejects_a_grid_the_vqgan_does_not_have():
    with pytest.raises(ValueError, match="grid"):
        model_config("alit_demo", patch_size=8)


def test_decode_iters_skip_decoding_and_halting(model, tensors):
    with torch.no_grad():
        out = model(tensors["input_images"], num_iters=3, decode_iters=[2], pixel_iters=[2])
    assert out["iterations"] == [2] and out["num_tokens"] == [24]
    assert out["reconstruction"][0].shape == (2, 3, 64, 64)


# ---- adaptive length -----------------------------------------------------------------------------


def _images_with_ids(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 16, 16).clone()


def _scripted_errors(table: torch.Tensor):
    """A criterion that returns table[image id, call number] (the image id is its constant value)."""
    calls = []

    def criterion(recon, target):
        ids = target[:, 0, 0, 0].long()
        calls.append(ids.tolist())
        return table[ids, len(calls) - 1]

    return criterion, calls


def _count_decoder_calls(model: ALIT) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    batch_sizes: list[int] = []
    handle = model.decoder.register_forward_hook(lambda mod, args, out: batch_sizes.append(out.shape[0]))
    return batch_sizes, handle


def test_adaptive_count_is_the_first_passing_iteration(micro):
    table = torch.tensor([
        [0.9, 0.8, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1],  # passes at iteration 3 (then fails again: stays 3)
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # passes at once
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],  # never passes: best is the last
        [0.9, 0.4, 0.9, 0.9, 0.19, 0.9, 0.9, 0.9],  # passes at iteration 5
    ])
    criterion, calls = _scripted_errors(table)
    result = adaptive_tokenize(micro, _images_with_ids(4), threshold=0.2, criterion=criterion)
    assert result.iterations.tolist() == [3, 1, 8, 5]
    assert result.num_tokens.tolist() == [6, 2, 16, 10]
    assert result.passed.tolist() == [True, True, False, True]
    assert [len(c) for c in result.code_indices] == [6, 2, 16, 10]
    # an image is evaluated until it passes and never after
    assert [sum(i in c for c in calls) for i in range(4)] == [3, 1, 8, 5]
    assert torch.isnan(result.per_iter_errors[1, 1:]).all()


def test_adaptive_never_passing_image_gets_its_best_iteration(micro):
    table = torch.tensor([[0.9, 0.5, 0.3, 0.6, 0.7, 0.8, 0.9, 0.4]])
    criterion, _ = _scripted_errors(table)
    result = adaptive_tokenize(micro, _images_with_ids(1), threshold=0.2, criterion=criterion)
    assert result.iterations.tolist() == [3] and not result.passed.item()


def test_adaptive_batch_stops_once_every_image_halted(micro):
    table = torch.full((3, 8), 0.9)
    table[0, 0] = table[1, 1] = table[2, 1] = 0.1
    criterion, _ = _scripted_errors(table)
    batch_sizes, handle = _count_decoder_calls(micro)
    try:
        result = adaptive_tokenize(micro, _images_with_ids(3), threshold=0.2, criterion=criterion)
    finally:
        handle.remove()
    assert batch_sizes == [3, 2]  # two decoder calls instead of 8, the second without the halted image
    assert result.iterations.tolist() == [1, 2, 2]


def test_adaptive_real_model_matches_the_full_rollout(model, tensors):
    """Per image, the chosen count is the smallest iteration whose L1 is under the threshold."""
    no_halting = ALIT(dataclasses.replace(model.config, dynamic_halting=False)).eval()
    no_halting.load_state_dict(model.state_dict())
    x = tensors["input_images"]
    with torch.no_grad():
        recons = no_halting(x, num_iters=4, pixel_iters="all")["reconstruction"]
    l1 = torch.stack([(r - x).abs().flatten(1).mean(1) for r in recons], dim=1)  # (B, 4)
    for threshold in sorted(l1.flatten().tolist())[2::4]:
        threshold += 1e-5
        result = adaptive_tokenize(no_halting, x, threshold=threshold, max_iters=4)
        for b in range(x.shape[0]):
            passing = (l1[b] < threshold).nonzero().flatten()
            expected = int(passing[0]) + 1 if len(passing) else int(l1[b].argmin()) + 1
            assert result.iterations[b] == expected
            torch.testing.assert_close(result.reconstructions[b], recons[expected - 1][b], **IMAGES)


def test_adaptive_rejects_bad_arguments(model, tensors):
    with pytest.raises(ValueError, match="threshold"):
        adaptive_tokenize(model, tensors["input_images"], threshold=0.0)
    with pytest.raises(ValueError, match="max_iters"):
        adaptive_tokenize(model, tensors["input_images"], threshold=0.1, max_iters=9)


def test_demo_alit_starts_local_with_restarts_released_configs_do_not():
    demo, released = model_config("alit_demo"), model_config("alit_small")
    assert demo.init == "local" and demo.restart_dead_codes
    assert released.init == "vit" and not released.restart_dead_codes
    assert demo.vqgan.restart_dead_codes  # the shared demo VQGAN, trained by train_vqgan
    with pytest.raises(ValueError, match="init"):
        dataclasses.replace(demo, init="kaiming")
    model = ALIT(dataclasses.replace(demo, vqgan=dataclasses.replace(demo.vqgan, restart_dead_codes=False)))
    assert model.pre_quantizer_mlp.weight.std() > 0.1  # xavier for 64 -> 12, against the official 0.02
    assert "quantize.usage_ema" in model.state_dict()


def _first_block_attention(model, images):
    """Attention probabilities (B, heads, L, L) of the first encoder and the first decoder block."""
    maps = attention_maps(lambda: model(images, num_iters=1))
    return maps[0], maps[model.config.num_layers]


def test_local_alit_init_routes_each_grid_cell_through_its_own_latent():
    torch.manual_seed(0)
    demo = model_config("alit_demo")
    model = ALIT(dataclasses.replace(demo, vqgan=dataclasses.replace(demo.vqgan, restart_dead_codes=False))).eval()
    images = torch.rand(2, 3, 64, 64)
    enc, dec = _first_block_attention(model, images)
    grid = torch.arange(256)  # 16 x 16 image tokens; cell (r // 4, c // 2) of the 4 x 8 latent grid
    cell = (grid // 16) // 4 * 8 + (grid % 16) // 2
    own = enc[:, :, 257:, 1:257] * (cell[None, :] == torch.arange(32)[:, None])  # latents over image tokens
    assert own.sum(-1).mean() > 0.9, own.sum(-1).mean()
    mask_rows = dec[:, :, 1:257, 257:]  # (B, h, 256 mask tokens, 32 latents)
    assert mask_rows.gather(-1, cell.view(1, 1, 256, 1).expand(2, 4, 256, 1)).mean() > 0.9
    plain = ALIT(dataclasses.replace(model.config, init="xavier")).eval()
    enc_x, _ = _first_block_attention(plain, images)
    assert (enc_x[:, :, 257:, 1:257] * (cell[None, :] == torch.arange(32)[:, None])).sum(-1).mean() < 0.2
