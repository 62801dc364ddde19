"""`python -m pipeline.preflight` names every missing or broken input of the profile before any work."""

import subprocess
import sys

import yaml
from conftest import ROOT
from imagenet_folder import make_imagenet

from pipeline import params as P
from pipeline import preflight, profiles


def _paper(tmp_path, **overrides):
    raw = profiles.resolve_profile("paper")
    weights = tmp_path / "weights"
    raw["prepare"]["imagenet"]["root"] = str(tmp_path / "imagenet")
    raw["train_vqgan"]["folder"] = str(weights / "vqgan")
    for section in (raw["train_titok"], raw["tokenopt"]["tokenizer"], raw["token_manipulation"]["tokenizer"]):
        section["folder"] = str(weights / "titok")
    raw["train_alit"]["vqgan"] = str(weights / "mage_vqgan")
    for key, value in overrides.items():
        profiles.set_dotted(raw, f"{key}={value}")
    return P.validate(raw, "test")


def _rows(params):
    return {r.item.split(" (")[0]: r for r in preflight.checks(params)}


def test_paper_profile_with_nothing_in_place_lists_every_input_with_its_remedy(tmp_path):
    rows = _rows(_paper(tmp_path))
    assert rows["ImageNet folder"].status == "missing" and str(tmp_path / "imagenet") in rows["ImageNet folder"].detail
    for item in ("VQGAN", "TiTok", "ALIT base VQGAN", "LPIPS", "CLIP objective", "CLIP judge", "Inception",
                 "ADM reference batch"):
        assert rows[item].status == "missing", item
        assert "how to get it" in rows[item].detail or "Download" in rows[item].detail, item
    assert "download" in rows["TiTok"].detail and str(tmp_path / "weights" / "titok") in rows["TiTok"].detail
    assert "python -m pipeline.convert_mage_vqgan vqgan_jax_strongaug.ckpt" in rows["ALIT base VQGAN"].detail
    assert "Google Drive" in rows["ALIT base VQGAN"].detail
    assert rows["GPUs"].status in ("ok", "warn") and "train_titok" in rows["GPUs"].detail


def test_weights_that_load_pass_and_a_damaged_file_is_named(tmp_path):
    from pipeline.models.registry import build_model

    vqgan = build_model("vqgan_demo")
    vqgan.save_pretrained(tmp_path / "weights" / "vqgan")
    build_model("titok_demo", vqgan=vqgan.config).save_pretrained(tmp_path / "weights" / "titok")
    rows = _rows(_paper(tmp_path))
    assert rows["VQGAN"].status == "ok" and rows["TiTok"].status == "ok"
    damaged = tmp_path / "weights" / "titok" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    rows = _rows(_paper(tmp_path))
    assert rows["TiTok"].status == "missing" and str(damaged) in rows["TiTok"].detail


def test_imagenet_layout_is_checked_and_junk_class_folders_are_flagged(tmp_path):
    make_imagenet(tmp_path / "imagenet", val_layout="flat", bad=False)
    (tmp_path / "imagenet" / "train" / "__MACOSX").mkdir()
    (tmp_path / "imagenet" / "train" / "cats").mkdir()
    rows = _rows(_paper(tmp_path))
    detail = rows["ImageNet train classes"].detail
    assert rows["ImageNet train classes"].status == "warn" and "'cats'" in detail and "train/__MACOSX/" in detail
    assert rows["ImageNet train"].status == "ok" and rows["ImageNet val"].status == "ok"
    assert rows["disk for prepared shards"].status in ("ok", "warn")


def test_command_exits_1_on_the_paper_profile_and_0_on_the_demo(tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump(_paper(tmp_path).model_dump(mode="json")))
    demo = tmp_path / "demo.yaml"
    demo.write_text(profiles.dump(P.validate(profiles.resolve_profile("demo"), "demo")))
    run = [sys.executable, "-m", "pipeline.preflight", "--params"]
    failed = subprocess.run([*run, str(paper)], cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 1 and "MISSING" in failed.stdout and "missing or broken" in failed.stdout
    passed = subprocess.run([*run, str(demo)], cwd=ROOT, capture_output=True, text=True)
    assert passed.returncode == 0 and "MISSING" not in passed.stdout


def test_snakemake_runs_preflight_before_any_job(tmp_path):
    import pytest
    from conftest import make_scratch_repo, pipeline_env

    pytest.importorskip("snakemake")
    repo = make_scratch_repo(tmp_path / "repo")
    env = pipeline_env(repo)
    missing = tmp_path / "no-inception.pth"
    subprocess.run([sys.executable, "-m", "pipeline", "configure", "micro", "--set", "fid.feature_space=inception",
                    "--set", f"fid.inception_weights={missing}"], cwd=repo, env=env, check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "MISSING" in run.stdout and str(missing) in run.stdout
    assert not (repo / "data" / "prepared").exists()  # no job started
