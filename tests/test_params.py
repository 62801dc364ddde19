"""The params schema: profiles resolve, and bad values stop with the key's path, expectation and finding."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import demo_params

from pipeline import params as P
from pipeline import profiles
from pipeline.experiments.tokenopt_config import TokenOptConfig
from pipeline.train.config import ClipTrainConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def test_committed_params_yaml_is_the_resolved_demo_profile():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == P.validate(profiles.resolve_profile("demo")).model_dump(mode="json")


@pytest.mark.parametrize("profile", ["demo", "paper", "micro"])
def test_every_profile_validates(profile):
    params = P.validate(profiles.resolve_profile(profile))
    assert params.profile == profile


def test_paper_profile_is_imagenet_at_256():
    params = P.validate(profiles.resolve_profile("paper"))
    assert params.image_size == 256
    assert params.prepare.source == "imagenet_folder"


def _errors(raw, *sets):
    with pytest.raises(P.ParamsError) as info:
        demo_params(raw, *sets, source="params.yaml")
    return str(info.value)


def test_unknown_key_names_its_dotted_path_and_the_allowed_keys():
    msg = _errors({"prepare": {"demo": {"num_clases": 10}}})
    assert "params.yaml: prepare.demo.num_clases: unknown key" in msg
    assert "num_classes" in msg


def test_wrong_type_says_expected_and_found():
    msg = _errors({"prepare": {"shard_size": "many"}})
    assert "prepare.shard_size: expected a valid integer" in msg
    assert "found 'many' (str)" in msg


def test_out_of_range_value():
    msg = _errors({"image_size": 60})
    assert "image_size: expected a multiple of 16" in msg and "found 60" in msg
    msg = _errors({"prepare": {"demo": {"num_classes": 3}}})
    assert "prepare.demo.num_classes: expected greater than or equal to 10, found 3 (int)" in msg


def test_every_error_is_reported_at_once():
    msg = _errors({"seed": -1, "prepare": {"workers": 0}})
    assert "seed:" in msg and "prepare.workers:" in msg


def test_cross_field_rule_names_the_key():
    msg = _errors({"prepare": {"source": "imagenet_folder"}})
    assert "prepare.imagenet.root" in msg


def test_edit_needs_one_negative_prompt_per_prompt():
    with pytest.raises(P.ParamsError, match="tokenopt.edit.negative_prompts: expected one per prompt"):
        demo_params({"tokenopt": {"edit": {"prompts": ["a {}"], "negative_prompts": ["b {}", "c {}"]}}})
    assert demo_params({"tokenopt": {"edit": {"prompts": ["a {}"], "negative_prompts": None}}})


def test_top_level_must_be_a_mapping():
    with pytest.raises(P.ParamsError, match="expected a mapping"):
        P.validate(["not", "a", "mapping"], "params.yaml")


def test_set_dotted_overrides_and_unknown_profile(tmp_path):
    raw = profiles.resolve_profile("demo")
    profiles.set_dotted(raw, "prepare.demo.train_per_class=7")
    assert P.validate(raw).prepare.demo.train_per_class == 7
    with pytest.raises(P.ParamsError, match="no such profile"):
        profiles.resolve_profile("nope")


def test_a_nested_override_keeps_its_siblings():
    demo = P.validate(profiles.resolve_profile("demo"))
    raw = profiles.resolve_profile("demo")
    profiles.set_dotted(raw, "train_titok.stage1.steps=7")
    stage1 = P.validate(raw).train_titok.stage1
    assert stage1.steps == 7
    assert dataclasses.replace(stage1, steps=0) == dataclasses.replace(demo.train_titok.stage1, steps=0)
    micro = P.validate(profiles.resolve_profile("micro"))  # extends demo: what it does not name is the demo's
    assert micro.train_alit.stage1.betas == demo.train_alit.stage1.betas


def test_stage_refuses_to_start_on_invalid_params(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nprepare:\n  shard_sise: 3\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "check-params", "--params", str(bad)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "prepare.shard_sise: unknown key" in proc.stderr


def test_configure_writes_a_profile_with_overrides(tmp_path):
    out = tmp_path / "params.yaml"
    subprocess.run([sys.executable, "-m", "pipeline", "configure", "paper", "--set", "seed=3", "--output", str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    params = P.load(out)
    assert params.profile == "paper" and params.seed == 3 and params.image_size == 256


def _configure(out, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", "configure", "micro", "--output", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True)


def test_configure_keeps_values_edited_since_it_wrote_the_file(tmp_path):
    """An edit (or a `dvc exp run -S` override) is not silently dropped by the next configure."""
    out = tmp_path / "params.yaml"
    assert _configure(out).returncode == 0
    assert _configure(out).returncode == 0  # rewriting its own values needs no --force
    raw = yaml.safe_load(out.read_text())
    raw["train_titok"]["stage1"]["steps"] = 99
    out.write_text(yaml.safe_dump(raw))  # DVC rewrites the file in its own style: the comments go
    refused = _configure(out)
    assert refused.returncode == 2 and "train_titok.stage1.steps" in refused.stderr and "--force" in refused.stderr
    assert P.load(out).train_titok.stage1.steps == 99  # nothing written
    assert _configure(out, "--set", "train_titok.stage1.steps=99").returncode == 0  # the edit kept
    assert P.load(out).train_titok.stage1.steps == 99
    raw = yaml.safe_load(out.read_text())
    raw["seed"] = 5
    out.write_text(yaml.safe_dump(raw))
    assert _configure(out, "--force").returncode == 0
    assert P.load(out).seed == 0 and P.load(out).train_titok.stage1.steps == 6


def test_a_key_missing_from_params_yaml_stops_with_its_name(tmp_path):
    out = tmp_path / "params.yaml"
    raw = profiles.resolve_profile("micro")
    assert P.load(_write(out, raw)).train_titok.stage1.steps == 6
    del raw["train_titok"]["stage1"]["steps"]
    del raw["eval_alit"]
    with pytest.raises(P.ParamsError) as err:
        P.load(_write(out, raw))
    assert "train_titok.stage1.steps: missing" in str(err.value) and "eval_alit: missing" in str(err.value)
    assert "configure micro" in str(err.value)


def _write(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_old_clip_section_says_it_was_renamed_to_train_clip(tmp_path):
    """params files written before the section took its stage's name: one line naming the key and the fix."""
    raw = profiles.resolve_profile("micro")
    raw["clip"] = raw.pop("train_clip")  # an old params.yaml, complete under the old name
    with pytest.raises(P.ParamsError) as err:
        P.load(_write(tmp_path / "params.yaml", raw))
    assert str(err.value) == (
        f"{tmp_path / 'params.yaml'}: clip: this section was renamed to train_clip; rename the key clip: to "
        "train_clip: (and clip.KEY to train_clip.KEY in --set / dvc exp run -S overrides)")
    # an old override on the current profile (configure demo --set clip.eval_images=2): the same one line
    msg = _errors({}, "clip.eval_images=2")
    assert msg.splitlines() == [msg] and msg.startswith("params.yaml: clip: this section was renamed to train_clip")
    # other unknown top-level keys keep the generic message
    assert "unknown key (allowed here: profile, seed" in _errors({"clipp": {}})


def test_recording_view_records_the_keys_read_and_sections_used_whole():
    from pipeline.param_reads import RecordingView, unwrap

    params = P.validate(profiles.resolve_profile("micro"), "micro")
    view = RecordingView(params)
    assert view.prepare.demo.num_classes == params.prepare.demo.num_classes
    assert view.seed == params.seed
    view.train_clip.model_dump()  # a section used whole
    assert view.train_titok.stage1.steps == 6  # a library config (TrainConfig) is one value: read whole
    assert view.reads == {"prepare.demo.num_classes", "seed", "train_clip", "train_titok.stage1"}
    assert unwrap(view) is params
    with pytest.raises(AttributeError, match="read-only"):
        view.seed = 3


def test_artefact_paths_are_the_same_through_a_recording_view():
    from pipeline import layout
    from pipeline.param_reads import RecordingView

    params = P.validate(profiles.resolve_profile("micro"), "micro")
    view = RecordingView(params)  # what a stage gets when its reads are recorded (the tests' micro run)
    for path_of in (layout.prepared_root, layout.vqgan_dir, layout.titok_dir, layout.report_json):
        assert path_of(view) == path_of(params) == path_of(params.paths)
    assert layout.results_dir(view, "train_vqgan") == layout.results_dir(params, "train_vqgan")
    assert "paths" in " ".join(view.reads)


def test_model_names_in_the_schema_are_the_registrys():
    from typing import get_args

    from pipeline.models.alit import ALIT_CONFIGS
    from pipeline.models.maskgit_vqgan import VQGAN_CONFIGS
    from pipeline.models.registry import MODEL_NAMES
    from pipeline.models.titok import TITOK_CONFIGS

    titok = set(get_args(P.TitokName))
    vqgan = set(get_args(P.TrainVqgan.model_fields["model"].annotation))
    alit = set(get_args(P.TrainAlit.model_fields["model"].annotation))
    assert (titok, vqgan, alit) == (set(TITOK_CONFIGS), set(VQGAN_CONFIGS), set(ALIT_CONFIGS))
    assert len(MODEL_NAMES) == len(titok | vqgan | alit)  # no name in two families: the registry merges them
    raw = profiles.resolve_profile("micro")
    raw["train_titok"]["model"] = "titok_xl"
    with pytest.raises(P.ParamsError, match="train_titok.model"):
        P.validate(raw, "test")


def test_resources_name_known_stages():
    raw = profiles.resolve_profile("micro")
    raw["resources"] = {"default": {"gpu": 1}, "train_titk": {"gpu": 8}}
    with pytest.raises(P.ParamsError, match="not a stage: train_titk"):
        P.validate(raw, "test")


@pytest.mark.parametrize(("key", "library"), [("train_titok.stage1", TrainConfig), ("train_alit.stage2", TrainConfig),
                                              ("train_clip.train", ClipTrainConfig), ("tokenopt.optim", TokenOptConfig),
                                              ("tokenopt.inpaint.optim", TokenOptConfig)])
def test_a_training_section_is_the_library_config(key, library):
    """One field list per config: the section is the library's config itself, range checks included."""
    params = demo_params()
    section = params
    for part in key.split("."):
        section = getattr(section, part)
    assert type(section) is library
    raw = profiles.resolve_profile("micro")
    node = raw
    for part in key.split("."):
        node = node[part]
    node["lr"], node["lrr"] = -1.0, 1
    with pytest.raises(P.ParamsError) as err:
        P.validate(raw, "test")
    assert f"test: {key}.lr: expected greater than 0" in str(err.value)
    assert f"test: {key}.lrr: unknown key (allowed here: " in str(err.value)
    del node["lrr"], node["lr"]
    assert P.missing_keys(P.validate(raw, "test"), raw) == [f"{key}.lr"]
