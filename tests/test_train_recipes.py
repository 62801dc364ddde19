"""Recipes on the tiny demo models and the loss networks (PatchGAN, hinge, LeCam, LPIPS)."""

import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline.errors import MissingWeightsError
from pipeline.models.losses import (
    LPIPS,
    LeCam,
    PatchDiscriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from pipeline.models.registry import build_model
from pipeline.train.loop import TrainConfig, train
from pipeline.train.recipes import (
    GANSettings,
    ProxyCodeImages,
    TiTokDecoderRecipe,
    TiTokProxyCodeRecipe,
    TiTokSingleStageRecipe,
    VQGANRecipe,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add synchronisation on a shared 2-core box
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    return TensorDataset(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)))


def _train(recipe, data, run_dir, steps=2, **kw):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, log_every=1, ckpt_every=100, **kw)
    logged = []
    result = train(recipe, data, cfg, run_dir, log_fn=lambda m, s: logged.append(m))
    return result, logged[-1]


def test_vqgan_recipe(images, tmp_path):
    torch.manual_seed(0)
    result, metrics = _train(VQGANRecipe(build_model("vqgan_demo")), images, tmp_path, precision="bf16")
    assert {"loss", "l1", "l2", "quantizer", "codebook/usage", "codebook/perplexity"} <= set(metrics)
    assert result.step == 2


def test_titok_two_stage(images, tmp_path):
    torch.manual_seed(0)
    vqgan = build_model("vqgan_demo")
    titok = build_model("titok_demo", pixel_decoder=False)
    recipe = TiTokProxyCodeRecipe(titok, vqgan)
    frozen = {k: v.clone() for k, v in vqgan.state_dict().items()}
    _, metrics = _train(recipe, images, tmp_path / "s1", ema_decay=0.999)
    assert {"proxy_ce", "quantizer", "proxy_accuracy", "codebook/usage"} <= set(metrics)
    assert metrics["proxy_ce"] > 0
    assert all(torch.equal(v, vqgan.state_dict()[k]) for k, v in frozen.items())  # the teacher is frozen

    stage2 = build_model("titok_demo", freeze_encoder=True)
    stage2.load_state_dict(titok.state_dict(), strict=False)
    stage2.load_pixel_decoder(vqgan)
    encoder_before = {k: v.clone() for k, v in stage2.encoder.state_dict().items()}
    decoder_before = stage2.decoder.ffn[0].weight.detach().clone()
    recipe = TiTokDecoderRecipe(stage2, gan=GANSettings(start=1))
    _, metrics = _train(recipe, images, tmp_path / "s2", steps=3)
    assert {"l2", "gan", "disc/hinge", "disc/lecam"} <= set(metrics) and "perceptual" not in metrics
    assert all(torch.equal(v, stage2.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert not torch.equal(decoder_before, stage2.decoder.ffn[0].weight)


def test_stage1_pixel_term_goes_through_the_frozen_vqgan_decoder(images, tmp_path):
    torch.manual_seed(0)
    vqgan = build_model("vqgan_demo")
    titok = build_model("titok_demo")
    recipe = TiTokProxyCodeRecipe(titok, vqgan, quantizer_weight=0.0, pixel_weight=10.0)
    assert torch.equal(titok.pixel_decoder.conv_in.weight, vqgan.decoder.conv_in.weight)  # the VQGAN's decoder
    encoder_before = titok.encoder.conv_out.weight.detach().clone()
    decoder_before = titok.pixel_decoder.conv_in.weight.detach().clone()
    _, metrics = _train(recipe, images, tmp_path)
    assert metrics["pixel_l2"] > 0 and metrics["quantizer"] == 0
    assert not torch.equal(encoder_before, titok.encoder.conv_out.weight)
    assert torch.equal(decoder_before, titok.pixel_decoder.conv_in.weight)  # frozen in stage 1
    with pytest.raises(ValueError, match="pixel decoder"):
        TiTokProxyCodeRecipe(build_model("titok_demo", pixel_decoder=False), vqgan, pixel_weight=1.0)


def test_precomputed_proxy_codes_are_the_teachers_and_replace_it(images, tmp_path, monkeypatch):
    torch.manual_seed(0)
    vqgan = build_model("vqgan_demo").eval()
    cached = ProxyCodeImages(images, vqgan, batch_size=3)  # batches that do not divide the set
    with torch.no_grad():
        direct = vqgan.encode(images.tensors[0])[1]
    assert torch.equal(cached.codes, direct) and cached[5]["codes"].shape == (16 * 16,)
    recipe = TiTokProxyCodeRecipe(build_model("titok_demo"), vqgan)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although the codes were given")

    monkeypatch.setattr(vqgan, "encode", no_teacher)
    _, metrics = _train(recipe, cached, tmp_path)
    assert metrics["proxy_ce"] > 0


def test_titok_single_stage_vae(tmp_path):
    torch.manual_seed(0)
    titok = build_model("titok_ll32_vae", image_size=32, enc_width=64, enc_depth=1, enc_heads=2,
                        dec_width=64, dec_depth=1, dec_heads=2)
    data = TensorDataset(torch.rand(4, 3, 32, 32))
    _, metrics = _train(TiTokSingleStageRecipe(titok, gan=None), data, tmp_path, steps=1)
    assert {"l2", "kl"} <= set(metrics)


def test_gan_losses():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.5 + 0.75))
    assert hinge_generator_loss(fake).item() == pytest.approx(0.75)
    lecam = LeCam(decay=0.5)
    penalty = lecam.penalty(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.5) and lecam.ema_fake.item() == pytest.approx(-0.375)
    # mean relu(real - ema_fake)^2 + mean relu(ema_real - fake)^2
    expected = (2.375 ** 2 + 0.375 ** 2) / 2 + (2.5 ** 2 + 0.0) / 2
    assert penalty.item() == pytest.approx(expected)
    logits = PatchDiscriminator(channels=16, n_layers=3)(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)


def test_lpips_loads_local_weights(tmp_path):
    from torchvision.models import vgg

    torch.manual_seed(0)
    features = vgg.make_layers(vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
                for i, c in enumerate((64, 128, 256, 512, 512))}, tmp_path / "lin.pth")
    lpips = LPIPS(tmp_path / "vgg16.pth", tmp_path / "lin.pth")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    assert torch.allclose(lpips(y, y), torch.zeros(2), atol=1e-6)
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())

    with pytest.raises(MissingWeightsError, match="missing.pth") as e:
        LPIPS(tmp_path / "missing.pth", tmp_path / "lin.pth")
    assert "vgg16-397923af.pth" in str(e.value)
    with pytest.raises(MissingWeightsError, match="lpips"):
        LPIPS(tmp_path / "vgg16.pth", tmp_path / "nope" / "vgg.pth")
