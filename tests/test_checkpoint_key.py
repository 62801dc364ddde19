"""A training checkpoint is resumed only by a run of the same parameters, code and upstream inputs."""

from __future__ import annotations

from pipeline import params as P
from pipeline.stages import _common


def test_checkpoint_folder_changes_with_inputs_and_code(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "read_manifest", lambda root: {"splits": {"train": {"count": 3}}})
    params = P.validate({"paths": {"models": str(tmp_path / "models")}})
    vqgan = tmp_path / "vqgan"
    vqgan.mkdir()
    (vqgan / "model.safetensors").write_bytes(b"weights A")

    def key(**kw) -> str:
        return _common.checkpoint_dir(params, "train_titok-stage1", params.train_titok.stage1, inputs=[vqgan],
                                      **kw).name

    first = key()
    assert key() == first  # deterministic
    (vqgan / "model.safetensors").write_bytes(b"weights B")  # a retrained upstream VQGAN
    retrained = key()
    assert retrained != first
    code = tmp_path / "code"
    code.mkdir()
    (code / "loss.py").write_text("x = 1\n")
    monkeypatch.setattr(_common, "CODE_ROOT", code)
    before = key()
    (code / "loss.py").write_text("x = 2\n")  # a change to the training code
    assert key() != before
    other = P.validate({"paths": {"models": str(tmp_path / "models")}, "seed": 1})
    assert _common.checkpoint_dir(other, "train_titok-stage1", other.train_titok.stage1, inputs=[vqgan]).name != key()
