"""pipeline.dvcfile: dvc.yaml outputs resolved from params.yaml, and the md5 of those that are files."""

import hashlib
from pathlib import Path

import yaml

from pipeline.dvcfile import dvc_stages, output_digests


def _repo(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"results": "res", "models": "mod"},
                                                          "splits": ["train", "val"]}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "x",
        "outs": ["${paths.models}/net", "${paths.unknown}/kept", "${paths.models}/${splits.1}.npz"],
        "metrics": [{"${paths.results}/train/metrics.json": {"cache": False}}],
        "plots": ["${ paths.results }/train/curve.png"],
    }}}))
    (tmp_path / "mod" / "net").mkdir(parents=True)
    (tmp_path / "res" / "train").mkdir(parents=True)
    (tmp_path / "res" / "train" / "metrics.json").write_text('{"psnr": 20.0}')
    return tmp_path


def test_dvc_stages_resolves_params_and_keeps_unknown_references(tmp_path):
    root = _repo(tmp_path)
    stages = dvc_stages(root, yaml.safe_load((root / "params.yaml").read_text()))
    assert stages["train"] == {"outs": ["mod/net", "${paths.unknown}/kept", "mod/val.npz"],
                               "metrics": ["res/train/metrics.json"], "plots": ["res/train/curve.png"]}


def test_output_digests_hash_existing_files_only(tmp_path):
    root = _repo(tmp_path)
    digests = output_digests("train", root)
    # the directory output and the missing plot are left out; the metrics file is hashed as DVC does
    assert digests == {"res/train/metrics.json": hashlib.md5(b'{"psnr": 20.0}').hexdigest()}
    assert output_digests("no_such_stage", root) == {}
