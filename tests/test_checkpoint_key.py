"""A training checkpoint is resumed only by a run of the same parameters, code and upstream inputs."""

from __future__ import annotations

from conftest import demo_params

from pipeline import params as P
from pipeline import profiles
from pipeline.stages import _common


def test_checkpoint_folder_changes_with_inputs_and_code(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "read_manifest", lambda root: {"splits": {"train": {"count": 3}}})
    params = demo_params({"paths": {"models": str(tmp_path / "models")}})
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
    other = demo_params({"paths": {"models": str(tmp_path / "models")}, "seed": 1})
    assert _common.checkpoint_dir(other, "train_titok-stage1", other.train_titok.stage1, inputs=[vqgan]).name != key()


def _titok_params(tmp_path, **train_titok):
    raw = profiles.resolve_profile("micro")
    raw["paths"] = {k: str(tmp_path / k) for k in raw["paths"]}
    raw["train_titok"]["stage2"]["steps"] = 2
    raw["train_titok"].update(train_titok)
    return P.validate(raw)


def _fake_run(monkeypatch, stage):
    from contextlib import contextmanager

    class Run:
        def log_metrics(self, *a, **k):
            pass

    @contextmanager
    def fake(*args):
        yield Run()

    monkeypatch.setattr(stage, "stage_run", fake)
    from pipeline.models.registry import build_model

    # a VQGAN, not None: the stage replays the draws of its init from its config before stage 1
    monkeypatch.setattr(stage.MaskGITVQGAN, "from_pretrained", lambda folder: build_model("vqgan_demo"))


def test_train_titok_opens_the_lpips_weights_before_stage_1(tmp_path, monkeypatch):
    import pytest

    from pipeline.errors import MissingWeightsError
    from pipeline.stages import train_titok as stage

    _fake_run(monkeypatch, stage)
    monkeypatch.setattr(stage, "_stage1", lambda *a: pytest.fail("stage 1 trained before the LPIPS check"))
    params = _titok_params(tmp_path, perceptual_vgg=str(tmp_path / "vgg16.pth"), perceptual_lin=str(tmp_path / "l.pth"))
    with pytest.raises(MissingWeightsError, match="vgg16.pth"):
        stage.run(params)


def test_a_failure_in_stage_2_keeps_the_stage_1_checkpoints(tmp_path, monkeypatch):
    import pytest

    from pipeline.stages import train_titok as stage

    _fake_run(monkeypatch, stage)
    ckpt = tmp_path / "models" / "checkpoints" / "train_titok-stage1-abc"
    ckpt.mkdir(parents=True)
    monkeypatch.setattr(stage, "_stage1", lambda *a: (None, {}, [], ckpt))

    def preempted(*args):
        raise RuntimeError("preempted in stage 2")

    monkeypatch.setattr(stage, "_stage2", preempted)
    with pytest.raises(RuntimeError, match="preempted"):
        stage.run(_titok_params(tmp_path))
    assert ckpt.is_dir()  # the requeued job resumes stage 2, not stage 1
