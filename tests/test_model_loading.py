"""Loading skips the random init: ``from_pretrained`` builds on the meta device and assigns the file's tensors.

A loaded model must equal the saved one exactly (values, dtypes, buffers, outputs) and no random init may
run: every init in these models draws from torch's global generator, so its state before and after a load
proves that none ran. The strict key checks and their file-naming errors are tested with each model
(tests/test_models_*.py); here the generic helpers: dtype casting, tied tensors, non-persistent buffers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.models.alit import ALIT
from pipeline.models.checkpoints import build_and_load
from pipeline.models.maskgit_vqgan import MaskGITVQGAN
from pipeline.models.registry import build_model
from pipeline.models.titok import TiTok


@pytest.mark.parametrize(("name", "cls"), [("titok_demo", TiTok), ("vqgan_demo", MaskGITVQGAN), ("alit_demo", ALIT)])
def test_from_pretrained_equals_the_saved_model_without_initialising(tmp_path, name, cls):
    torch.manual_seed(0)
    saved = build_model(name).eval()
    saved.save_pretrained(tmp_path)
    rng = torch.get_rng_state()
    loaded = cls.from_pretrained(tmp_path)
    assert torch.equal(torch.get_rng_state(), rng), "a random init ran while loading"

    a, b = saved.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert all(t.device.type == "cpu" for t in [*loaded.parameters(), *loaded.buffers()])
    assert all(p.requires_grad for p in loaded.parameters()) and not loaded.training
    # whole-model numerics, not only the tensors: the same reconstruction bit for bit
    size = saved.config.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if cls is ALIT:  # halting draws from the generator: the same seed for both
            out = [m(images, pixel_iters="all", generator=torch.Generator().manual_seed(2))["reconstruction"][-1]
                   for m in (saved, loaded)]
        else:
            out = [m(images)[0] for m in (saved, loaded)]
    assert torch.equal(*out)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)


def test_build_and_load_casts_to_the_model_dtype_and_unties_shared_tensors():
    weight = torch.randn(4, 4)
    # a half-precision tensor, and one tensor under two keys (torch.save keeps tied weights so)
    state = {"a.weight": weight, "a.bias": torch.zeros(4, dtype=torch.float16), "b.weight": weight,
             "b.bias": torch.zeros(4)}
    model = build_and_load(_Tied, state, "tied.bin")
    assert model.a.bias.dtype == torch.float32 and model.a.bias.device.type == "cpu"
    assert torch.equal(model.a.weight, model.b.weight)
    with torch.no_grad():
        model.a.weight.add_(1.0)
    assert not torch.equal(model.a.weight, model.b.weight), "the two keys must not share memory once loaded"


def test_build_and_load_keeps_strict_errors_naming_the_file():
    with pytest.raises(InputError, match=r"weights in some/file.bin do not fit _Tied(.|\n)*missing keys \(2\)"):
        build_and_load(_Tied, {"a.weight": torch.zeros(4, 4), "a.bias": torch.zeros(4)}, "some/file.bin")


class _WithMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("mask", torch.ones(2), persistent=False)


def test_build_and_load_refuses_non_persistent_buffers_it_cannot_fill():
    with pytest.raises(TypeError, match="non-persistent buffers \\(mask\\)"):
        build_and_load(_WithMask, {"lin.weight": torch.zeros(2, 2), "lin.bias": torch.zeros(2)}, "x.bin")


def test_load_clip_equals_the_saved_model_without_initialising(tmp_path):
    """A CLIP folder (open_clip's local-dir layout) and a bare checkpoint file, ViT text tower with its causal mask."""
    import json

    from conftest import TINY_CLIP

    from pipeline.models.clip import create_clip, load_clip, save_clip

    config = tmp_path / "clip_load_tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    saved = create_clip("clip_load_tiny", config=config).eval()
    save_clip(saved, tmp_path / "clip")
    torch.save(saved.model.state_dict(), tmp_path / "ckpt.bin")
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for weights in (tmp_path / "clip", tmp_path / "ckpt.bin"):
        rng = torch.get_rng_state()
        loaded = load_clip("clip_load_tiny", weights, config=config)
        assert torch.equal(torch.get_rng_state(), rng), "a random init ran while loading"
        a, b = saved.state_dict(), loaded.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(loaded.model.attn_mask, saved.model.attn_mask)
        assert all(t.device.type == "cpu" for t in [*loaded.parameters(), *loaded.buffers()])
        with torch.no_grad():
            assert torch.equal(loaded.encode_images(x), saved.encode_images(x))
            assert torch.equal(loaded.encode_texts(["two blue stars"]), saved.encode_texts(["two blue stars"]))
