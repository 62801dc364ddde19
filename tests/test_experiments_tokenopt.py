"""Test-time token optimisation: equivalence with the official loop (fixture), schedules, objectives, config."""

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from tqdm import tqdm

from pipeline.experiments.tokenopt import (
    CLIPObjective,
    KnownRegion,
    MaskedReconstructionObjective,
    RandomViews,
    TokenOptConfig,
    WeightedSum,
    images_to_tokens,
    noise_scale,
    optimize_tokens,
    tokens_to_images,
)
from pipeline.experiments.tokenopt_tasks import edit_images, generate_class_images, inpaint_images, make_masks
from pipeline.models.clip import load_clip
from pipeline.models.maskgit_vqgan import VQGANConfig
from pipeline.models.titok import TiTok, TiTokConfig

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fixture_titok():
    """Fixture 1a: tiny legacy VQ TiTok with the MaskGIT pixel decoder (32 base channels)."""
    folder = FIXTURES / "titok_legacy_vq"
    official = json.loads((folder / "config.json").read_text())
    sizes = json.loads((folder / "fixture_overrides.json").read_text())["model_size_tables_added"]
    cfg = TiTokConfig.from_official(official, extra_sizes=sizes, vqgan=VQGANConfig(ch=32, image_size=64))
    titok = TiTok(cfg)
    titok.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return titok


@pytest.fixture(scope="module")
def fixture_clip(tmp_path_factory):
    """The fixture's open_clip model, registered from its config (written to tmp) and loaded frozen."""
    cfg = json.loads((FIXTURES / "tokenopt" / "config.json").read_text())
    path = tmp_path_factory.mktemp("clip") / f"{cfg['open_clip_model_name']}.json"
    path.write_text(json.dumps(cfg["open_clip_model_config"]))
    return load_clip(cfg["open_clip_model_name"], FIXTURES / "tokenopt" / "clip_model.safetensors", config=path)


@pytest.fixture(scope="module")
def tiny_titok():
    """A small random non-legacy VQ TiTok (32 px, 8 tokens), fast enough for behavioural tests."""
    torch.manual_seed(0)
    cfg = TiTokConfig(image_size=32, enc_width=32, enc_depth=1, enc_heads=2, enc_patch_size=8, dec_width=32,
                      dec_depth=1, dec_heads=2, dec_patch_size=8, num_latent_tokens=8, token_size=4,
                      codebook_size=16, legacy=False, pixel_decoder=False)
    return TiTok(cfg)


class ZeroObjective(nn.Module):
    """Loss 0 with a zero gradient: Adam then leaves the tokens alone, only noise and resets move them."""

    def forward(self, images, views):
        return images.sum((1, 2, 3)) * 0.0


def test_fixture_equivalence(fixture_titok, fixture_clip):
    t = load_file(FIXTURES / "tokenopt" / "tensors.safetensors")
    cfg = json.loads((FIXTURES / "tokenopt" / "config.json").read_text())
    prompt = cfg["CLIPObjective_kwargs"]["prompt"]
    assert torch.equal(fixture_clip.tokenize([prompt]).cpu(), t["prompt_token_ids"])
    objective = CLIPObjective(fixture_clip, prompt)
    torch.testing.assert_close(objective.text, t["prompt_feat"], atol=1e-6, rtol=0)

    before, grads, steps = [], [], []

    def record_step(opt, args, kwargs):  # tokens and gradient right before each Adam step, as recorded
        z = opt.param_groups[0]["params"][0]
        before.append(z.detach().clone())
        grads.append(z.grad.detach().clone())

    handle = register_optimizer_step_pre_hook(record_step)
    try:
        result = optimize_tokens(fixture_titok, objective, TokenOptConfig.deterministic(num_iter=10),
                                 images=t["input_images"], callback=lambda info: steps.append(info))
    finally:
        handle.remove()

    assert torch.equal(torch.stack([s.codes for s in steps]), t["loop_code_indices_before_step"])
    torch.testing.assert_close(torch.stack(before)[0], t["initial_tokens"], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[0], t["step0_grad"], atol=2e-6, rtol=0)
    torch.testing.assert_close(torch.stack(grads), t["loop_grad"], atol=2e-6, rtol=0)
    torch.testing.assert_close(result.loss_history, t["loop_loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack([s.loss for s in steps]), t["loop_loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(before), t["loop_tokens_before_step"], atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.stack([s.tokens for s in steps]), t["loop_tokens_after_step"],
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.stack([s.images for s in steps]), t["loop_decoded"], atol=2e-4, rtol=0)
    torch.testing.assert_close(result.tokens, t["final_tokens"], atol=1e-3, rtol=0)
    assert torch.equal(result.codes, t["final_code_indices"])
    torch.testing.assert_close(result.images, t["final_image"], atol=2e-4, rtol=0)
    # the frozen networks never received gradients
    assert all(p.grad is None and not p.requires_grad for p in fixture_titok.parameters())
    assert all(p.grad is None and not p.requires_grad for p in fixture_clip.parameters())


def test_noise_schedule_formula():
    n = 301
    assert noise_scale(0, n) == 1.0
    for i in range(n):
        t = min(1.0, 1.5 * i / (n - 1))
        assert noise_scale(i, n) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * t)).item()), abs=1e-6)
        if i >= 2 * (n - 1) / 3:
            assert noise_scale(i, n) == 0.0
    assert all(noise_scale(i, n) >= noise_scale(i + 1, n) for i in range(n - 1))
    assert noise_scale(100, n) == pytest.approx(0.5)  # halfway to 2/3


def test_loop_applies_noise_and_ema_formulas(tiny_titok):
    # with a zero gradient Adam does not move the tokens: z_i = z_0 + sum_j<=i sigma s(j) eps_j
    cfg = TokenOptConfig(num_iter=12, ema_decay=0.9, token_noise=0.3, reg_type="none", reg_weight=0.0,
                         num_augmentations=0)
    z0 = torch.randn(3, 4, 1, 8)
    result = optimize_tokens(tiny_titok, ZeroObjective(), cfg, tokens=z0, seed=7)
    gen = torch.Generator().manual_seed(7)
    z, ema = z0.clone(), None
    for i in range(cfg.num_iter):
        z = z + cfg.token_noise * noise_scale(i, cfg.num_iter) * torch.randn(z.shape, generator=gen)
        ema = z.clone() if ema is None else cfg.ema_decay * ema + (1 - cfg.ema_decay) * z
    torch.testing.assert_close(result.tokens, ema, atol=1e-5, rtol=1e-5)
    assert result.loss_history.shape == (12, 3)


def test_progress_bar_and_early_stop(tiny_titok):
    bar = tqdm(total=10, file=io.StringIO())
    cfg = TokenOptConfig.deterministic(num_iter=10, optimize_post_quantization=True)
    result = optimize_tokens(tiny_titok, ZeroObjective(), cfg, images=torch.rand(2, 3, 32, 32), progress=bar,
                             callback=lambda info: info.step == 2)  # True stops after step 2
    assert bar.n == 3 and result.loss_history.shape == (3, 2) and result.codes.shape == (2, 1, 8)


def test_straight_through_reaches_continuous_tokens(tiny_titok):
    tiny_titok.requires_grad_(False)
    images = torch.rand(2, 3, 32, 32)
    for post in (False, True):
        z = images_to_tokens(tiny_titok, images, post_quantization=post).requires_grad_(True)
        decoded, codes = tokens_to_images(tiny_titok, z, post_quantization=post)
        decoded.pow(2).mean().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0 and torch.isfinite(z.grad).all()
        # the forward image is the one of the integer codes: only a code flip changes it
        torch.testing.assert_close(decoded.detach(), tiny_titok.decode_tokens(codes), atol=1e-4, rtol=0)
        assert all(p.grad is None for p in tiny_titok.parameters())


def test_frozen_networks_and_crops_with_autocast(tiny_titok, fixture_clip):
    titok = tiny_titok.requires_grad_(True)  # the loop must freeze them itself
    fixture_clip.requires_grad_(True)
    objective = WeightedSum([CLIPObjective(fixture_clip, ["a red square", "a blue circle"]),
                             CLIPObjective(fixture_clip, "a photo")], [1.0, 0.5])
    cfg = TokenOptConfig(num_iter=3, num_augmentations=2, per_sample_crops=True, precision="bf16")
    result = optimize_tokens(titok, objective, cfg, images=torch.rand(2, 3, 32, 32))
    assert result.images.shape == (2, 3, 32, 32) and result.images.dtype == torch.float32
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert torch.isfinite(result.loss_history).all()
    for net in (titok, fixture_clip):
        assert all(p.grad is None and not p.requires_grad for p in net.parameters())


def test_random_views_are_crops_with_flips():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    for per_sample in (False, True):
        views = RandomViews(6, per_sample, torch.Generator().manual_seed(1))(images, (5, 5))
        assert views.shape == (6, 2, 3, 5, 5)
        for k in range(6):
            offsets = []
            for b in range(2):
                found = [(top, left, flip) for top in range(4) for left in range(4) for flip in (False, True)
                         if torch.equal(views[k, b], (lambda c: c.flip(-1) if flip else c)(
                             images[b, :, top:top + 5, left:left + 5]))]
                assert len(found) == 1
                offsets.append(found[0])
            if not per_sample:
                assert offsets[0] == offsets[1]  # the official loop shares each crop across the batch
    whole = RandomViews(0, False, torch.Generator())(images, (4, 4))
    assert whole.shape == (1, 2, 3, 4, 4)


def test_masked_reconstruction_only_sees_known_pixels():
    target = torch.rand(2, 3, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 0  # the hole
    objective = MaskedReconstructionObjective(target, mask)
    assert torch.equal(objective(target.clone()), torch.zeros(2))
    changed = target.clone()
    changed[:, :, 4:12, 4:12] = torch.rand(2, 3, 8, 8)  # anything in the hole
    assert torch.equal(objective(changed), torch.zeros(2))
    x = (target + 0.1).requires_grad_(True)
    loss = objective(x)
    torch.testing.assert_close(loss, torch.full((2,), 0.1), atol=1e-6, rtol=0)
    loss.sum().backward()
    assert torch.all(x.grad[:, :, 4:12, 4:12] == 0) and torch.all(x.grad[:, :, :4] != 0)


def test_reset_restores_known_region(tiny_titok):
    images = torch.rand(2, 3, 32, 32)
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 0
    cfg = TokenOptConfig.deterministic(num_iter=2)
    seen = []
    optimize_tokens(tiny_titok, MaskedReconstructionObjective(images, mask), cfg, images=images * mask,
                    known=KnownRegion(images, mask), reset_period=2, callback=lambda info: seen.append(info))
    # after step 1 the tokens are the encoding of the decoded image with the known pixels pasted back
    composite = (1 - mask) * seen[1].images + mask * images
    torch.testing.assert_close(seen[1].tokens, images_to_tokens(tiny_titok, composite), atol=1e-5, rtol=0)
    assert not torch.allclose(seen[0].tokens, seen[1].tokens)


def test_negative_prompt_combination(fixture_clip):
    images = torch.rand(2, 3, 64, 64)
    views = RandomViews(0, False, torch.Generator())
    pos = CLIPObjective(fixture_clip, "a dog")(images, views)
    neg = -CLIPObjective(fixture_clip, "a cat")(images, views)  # cosine to the negative prompt
    guided = CLIPObjective(fixture_clip, "a dog", negative_prompts="a cat", guidance_scale=1.5)(images, views)
    torch.testing.assert_close(guided, pos - (1 - 1.5) * neg)
    with pytest.raises(ValueError, match="3 prompts for a batch of 2"):
        CLIPObjective(fixture_clip, ["a", "b", "c"])(images, views)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_iter", 0, "greater than or equal to 1"),
    ("num_iter", 2.5, "valid integer"),
    ("lr", -0.1, "greater than 0"),
    ("ema_decay", 1.0, "less than 1"),
    ("token_noise", -1.0, "greater than or equal to 0"),
    ("reg_type", "l1", "'seed', 'zero' or 'none'"),
    ("reg_weight", -0.5, "greater than or equal to 0"),
    ("num_augmentations", -1, "greater than or equal to 0"),
    ("precision", "fp8", "'fp32', 'bf16' or 'fp16'"),
])
def test_bad_config_rejected(field, value, message):
    with pytest.raises(ValueError, match=f"TokenOptConfig\n{field}\n  Input should be .*{message}"):
        TokenOptConfig(**{field: value})


def test_bad_calls_rejected(tiny_titok):
    cfg = TokenOptConfig.deterministic(num_iter=1)
    with pytest.raises(ValueError, match="exactly one of images"):
        optimize_tokens(tiny_titok, ZeroObjective(), cfg)
    with pytest.raises(ValueError, match="needs the known region"):
        optimize_tokens(tiny_titok, ZeroObjective(), cfg, images=torch.rand(1, 3, 32, 32), reset_period=5)
    with pytest.raises(ValueError, match="reset_period must be >= 0"):
        optimize_tokens(tiny_titok, ZeroObjective(), cfg, images=torch.rand(1, 3, 32, 32), reset_period=-2)
    with pytest.raises(ValueError, match="one weight per objective"):
        WeightedSum([ZeroObjective()], [1.0, 2.0])


def test_paper_defaults():
    cfg = TokenOptConfig()
    assert (cfg.num_iter, cfg.lr, cfg.ema_decay, cfg.token_noise, cfg.reg_type, cfg.reg_weight,
            cfg.num_augmentations) == (300, 0.1, 0.98, 0.3, "seed", 0.025, 8)


def test_experiment_tasks(tiny_titok, fixture_clip):
    cfg = TokenOptConfig(num_iter=1, num_augmentations=1)
    images = torch.rand(3, 3, 32, 32)
    edited = edit_images(tiny_titok, fixture_clip, images, ["a cat", "a dog", "a cat"], cfg, batch_size=2)
    assert edited.images.shape == (3, 3, 32, 32) and [r["prompt"] for r in edited.records] == ["a cat", "a dog",
                                                                                               "a cat"]
    for association in ("random", "clip_top1", "clip_top1pct"):
        out = generate_class_images(tiny_titok, fixture_clip, ["cat", "dog"], 2, cfg, seed_images=images,
                                    association=association, template="a photo of a {}", batch_size=4)
        assert out.images.shape == (4, 3, 32, 32)
        assert [r["prompt"] for r in out.records] == ["a photo of a cat"] * 2 + ["a photo of a dog"] * 2
        assert all(0 <= r["seed_index"] < 3 for r in out.records)
        if association == "clip_top1":  # the best seed of a class is the same for all its samples
            assert out.records[0]["seed_index"] == out.records[1]["seed_index"]
    scratch = generate_class_images(tiny_titok, fixture_clip, ["cat"], 2, cfg, template="a photo of a {}")
    assert scratch.images.shape == (2, 3, 32, 32) and "seed_index" not in scratch.records[0]

    for kind, known in (("center", 0.75), ("half", 0.5)):
        mask = make_masks(kind, 2, 32, torch.Generator())
        assert mask.shape == (2, 1, 32, 32) and mask.mean().item() == known
    boxes = make_masks("boxes", 4, 32, torch.Generator().manual_seed(0))
    assert ((boxes == 0).flatten(1).any(1)).all() and (boxes.flatten(1).mean(1) < 1).all()
    filled = inpaint_images(tiny_titok, images, "center", cfg, batch_size=2, reset_period=1)
    assert filled.images.shape == (3, 3, 32, 32) and filled.masks.shape == (3, 1, 32, 32)
    guided = inpaint_images(tiny_titok, images, "boxes", cfg, clip=fixture_clip, prompts=["a", "b", "c"])
    assert guided.records[2]["prompt"] == "c"

