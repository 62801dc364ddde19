"""``python -m pipeline.convert_mage_vqgan SRC DST``: the MAGE VQGAN as ALIT's base-VQGAN folder.

ALIT (``train_alit.source: train``) distils the VQGAN that MAGE released, ``vqgan_jax_strongaug.ckpt``
(MAGE README, Google Drive id ``13S_unB87n6KKuuMdyMnyExW0G1kplTbP``; ALIT's
``base_tokenizers/pretrained_models/download.py`` fetches the same file). The pipeline reads it as a
``from_pretrained`` folder (``train_alit.vqgan``, ``weights/alit/mage_vqgan`` in ``conf/paper.yaml``):
``config.json`` + ``model.safetensors``. This command writes that folder.

The official file is a ``torch.save`` of the taming ``VQModel`` state dict, either flat or under
``state_dict`` (MAGE's ``VQModel.init_from_ckpt`` accepts both and loads ``strict=True``), with keys
``encoder.*``, ``decoder.*`` and ``quantize.embedding.weight`` (1024 x 256). The architecture is MAGE's
``config/vqgan.yaml`` (ch 128, ch_mult 1 1 2 2 4, two residual blocks, z 256, 1024 codes) as ported
from MaskGIT: no attention blocks, no quant_conv, no biases in the residual convs; the key names are
taming's (``mid.block_1``, ``up.{i}.upsample.conv``), which is ``VQGANConfig(key_style="taming")``.
They are exactly the keys under ``base_tokenizer.vqgan.`` of every released ALIT checkpoint, so the
conversion is a strict load with no renaming: a key that does not fit stops it with the file and the key.

It is its own entry point, not a ``python -m pipeline`` subcommand: every stage runs
``pipeline/__main__.py``, and a one-off conversion does not belong among their dependencies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import InputError
from pipeline.io import atomic_dir
from pipeline.models import count_parameters
from pipeline.models.alit import ALIT_CONFIGS
from pipeline.models.checkpoints import load_state_dict_strict, read_state_dict
from pipeline.models.maskgit_vqgan import MaskGITVQGAN

GDRIVE = "https://drive.google.com/file/d/13S_unB87n6KKuuMdyMnyExW0G1kplTbP/view"
COMMAND = "uv run python -m pipeline.convert_mage_vqgan vqgan_jax_strongaug.ckpt {folder}"
HOW = (f"download MAGE's vqgan_jax_strongaug.ckpt (Google Drive, linked from the MAGE README: {GDRIVE}), "
       f"then `{COMMAND}`")


def convert(src: str | Path, dst: str | Path) -> MaskGITVQGAN:
    """Load the official MAGE VQGAN checkpoint ``src`` strictly and write it as a snapshot folder ``dst``.

    ``dst`` appears only once it is complete (written in a temporary sibling, then renamed); an existing
    ``dst`` is replaced. Raises ``InputError`` naming ``src`` when it is missing, unreadable, or holds
    keys or shapes other than the MAGE VQGAN's (all of them listed).
    """
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src}: not found. {HOW.format(folder=dst)}")
    # the MAGE VQGAN is the base tokenizer every released ALIT config is built on
    model = MaskGITVQGAN(ALIT_CONFIGS["alit_small"]().vqgan)
    load_state_dict_strict(model, read_state_dict(src, unwrap=("state_dict",)), src,
                           expected="the MAGE VQGAN (taming VQModel: ch 128, ch_mult 1 1 2 2 4, 1024 x 256 codes)",
                           hint="expected MAGE's vqgan_jax_strongaug.ckpt (keys encoder.*, decoder.*, "
                                "quantize.embedding.weight, flat or under 'state_dict')")
    with atomic_dir(dst) as tmp:
        model.save_pretrained(tmp)
    return model


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.convert_mage_vqgan``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.convert_mage_vqgan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="MAGE's vqgan_jax_strongaug.ckpt")
    parser.add_argument("dst", type=Path, help="the folder to write (train_alit.vqgan, e.g. weights/alit/mage_vqgan)")
    args = parser.parse_args(argv)
    try:
        model = convert(args.src, args.dst)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    count = count_parameters(model)
    print(f"wrote {args.dst} (config.json + model.safetensors, {count / 1e6:.1f} M parameters) from {args.src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
