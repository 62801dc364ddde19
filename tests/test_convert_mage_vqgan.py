"""`python -m pipeline.convert_mage_vqgan` turns MAGE's VQGAN checkpoint into ALIT's base-VQGAN folder.

The official file cannot be downloaded here, so the tests write its equivalent: random tensors under the
key names and shapes that the official ALIT module records under ``base_tokenizer.vqgan.`` (the listing
of the released ALIT configs in tests/fixtures/alit, taken from the official code), which are the keys
of MAGE's taming ``VQModel``, saved with ``torch.save`` as MAGE's ``init_from_ckpt`` reads them.
"""

import json

import pytest
import torch
from conftest import ROOT

from pipeline import convert_mage_vqgan, profiles
from pipeline import params as P
from pipeline.errors import InputError
from pipeline.models.maskgit_vqgan import MaskGITVQGAN

PREFIX = "base_tokenizer.vqgan."


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """A random MAGE VQGAN state dict with the official key names and shapes (54.5 M parameters)."""
    listing = json.loads((ROOT / "tests" / "fixtures" / "alit" / "alit_released_configs_keys.json").read_text())
    gen = torch.Generator().manual_seed(0)
    return {k["key"][len(PREFIX):]: torch.randn(k["shape"], generator=gen)
            for k in listing["alit_small"]["keys"] if k["key"].startswith(PREFIX)}


def test_official_checkpoint_converts_into_a_folder_the_alit_stage_loads(tmp_path, official_state, capsys):
    src, dst = tmp_path / "vqgan_jax_strongaug.ckpt", tmp_path / "weights" / "alit" / "mage_vqgan"
    torch.save({"state_dict": official_state}, src)  # the Lightning-style wrapper MAGE's loader unwraps
    assert convert_mage_vqgan.main([str(src), str(dst)]) == 0
    assert str(dst) in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    loaded = MaskGITVQGAN.from_pretrained(dst).state_dict()
    assert loaded.keys() == official_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in official_state.items())
    # the stage's own loader, on the paper profile pointed at the folder: the MAGE architecture, 16 x 16 codes
    from pipeline.models.registry import model_config
    from pipeline.stages.train_alit import load_base_vqgan

    raw = profiles.resolve_profile("paper")
    profiles.set_dotted(raw, f"train_alit.vqgan={dst}")
    params = P.validate(raw, "test")
    vqgan = load_base_vqgan(params)
    assert vqgan.config.key_style == "taming" and vqgan.config.downsample_factor == 16
    # the ALIT config the stage builds on it (not the 207 M-parameter model: the config checks the grids agree)
    assert model_config(params.train_alit.model, vqgan=vqgan.config, image_size=params.image_size).grid_size == 16


def test_a_flat_state_dict_converts_too(tmp_path, official_state):
    src, dst = tmp_path / "flat.ckpt", tmp_path / "out"
    torch.save(official_state, src)
    convert_mage_vqgan.convert(src, dst)
    assert torch.equal(MaskGITVQGAN.from_pretrained(dst).quantize.embedding.weight,
                       official_state["quantize.embedding.weight"])


def test_wrong_keys_name_the_file_and_every_key_and_write_nothing(tmp_path, official_state, capsys):
    state = dict(official_state)
    del state["decoder.up.1.upsample.conv.bias"]
    state["quant_conv.weight"] = torch.zeros(256, 256, 1, 1)  # taming's VQGAN has it, MAGE's has not
    src, dst = tmp_path / "other.ckpt", tmp_path / "out"
    torch.save({"state_dict": state}, src)
    assert convert_mage_vqgan.main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "missing keys (1)" in err and "decoder.up.1.upsample.conv.bias" in err
    assert "unexpected keys (1)" in err and "quant_conv.weight" in err and "vqgan_jax_strongaug.ckpt" in err
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]  # no folder, no temporary left behind


def test_a_missing_or_unreadable_file_says_where_to_get_it(tmp_path):
    with pytest.raises(InputError, match="not found.*Google Drive.*pipeline.convert_mage_vqgan"):
        convert_mage_vqgan.convert(tmp_path / "vqgan_jax_strongaug.ckpt", tmp_path / "out")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=f"cannot read weights file {junk}"):
        convert_mage_vqgan.convert(junk, tmp_path / "out")
