"""The token-optimisation stages end to end on a scratch set-up: edit, generate, inpaint, then eval_tokenopt."""

import json
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import demo_params

from pipeline import params as P
from pipeline import profiles
from pipeline.errors import InputError
from pipeline.models.clip import create_clip, save_clip
from pipeline.models.titok import TiTok, TiTokConfig

SIZE = 32
SETUP = {
    "image_size": SIZE,
    "prepare": {"workers": 1, "shard_size": 8, "demo": {"train_per_class": 3, "val_per_class": 2, "ood_per_class": 1}},
    "fid": {"samples_per_class": 1, "prc_images": 30, "batch_size": 16},
    "tokenopt": {
        "optim": {"num_iter": 3, "num_augmentations": 2},
        "batch_size": 8,
        "edit": {"num_images": 3, "prompts": ["a bright photo of a {}", "a photo of a red {}"],
                 "negative_prompts": ["a dark photo of a {}", "a photo of a blue {}"]},
        "generate": {"num_per_class": 1, "seed_set_size": 12},
        "inpaint": {"num_images": 3, "mask_kinds": ["center", "boxes"], "optim": {"num_iter": 4}},
    },
}


class FakeRun:
    """Stands in for the MLflow run (tracking is tested in test_tracking.py)."""

    def __init__(self) -> None:
        self.metrics: dict = {}

    def log_metrics(self, metrics, step=None):
        from pipeline.io import flatten

        bad = [k for k in flatten(metrics) if not re.fullmatch(r"[\w\-. :/]+", k)]
        assert not bad, f"not valid MLflow metric names: {bad}"
        self.metrics |= flatten(metrics)

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).is_file()

    def set_tags(self, tags):
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Prepared demo data (30 train, 20 val images at 32 px in shards of 8), a random tiny TiTok and demo CLIP."""
    from pipeline.data import shard_writer
    from pipeline.stages.prepare import prepare

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tokenopt")
    params = demo_params(SETUP | {"paths": {k: str(root / k) for k in ("data", "models", "results", "weights")}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shard_writer, "ROW_GROUP", 3)  # several shards of several row groups: sample_split's path
        prepare(params, Path(params.paths.data) / "prepared", progress=False)
    torch.manual_seed(0)
    TiTok(TiTokConfig(image_size=SIZE, enc_width=32, enc_depth=1, enc_heads=2, enc_patch_size=8, dec_width=32,
                      dec_depth=1, dec_heads=2, dec_patch_size=8, num_latent_tokens=8, token_size=4,
                      codebook_size=16, legacy=False, pixel_decoder=False)).save_pretrained(root / "models" / "titok")
    save_clip(create_clip(params.train_clip.config), root / "models" / "clip")
    save_clip(create_clip(params.train_clip.judge_config), root / "models" / "clip" / "judge")
    return params


@pytest.fixture()
def fake_tracking(monkeypatch):
    import pipeline.tracking

    runs = {}

    @contextmanager
    def fake_stage_run(stage, params):
        runs[stage] = FakeRun()
        yield runs[stage]

    monkeypatch.setattr(pipeline.tracking, "stage_run", fake_stage_run)
    for name in ("tokenopt_edit", "tokenopt_generate", "tokenopt_inpaint", "eval_tokenopt"):
        monkeypatch.setattr(f"pipeline.stages.{name}.stage_run", fake_stage_run)
    return runs


def _samples(params, stage):
    folder = Path(params.paths.data) / "tokenopt" / stage
    with np.load(folder / "images.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / "records.json").read_text())


def test_four_stages_end_to_end(setup, fake_tracking):
    from pipeline.stages import eval_tokenopt, tokenopt_edit, tokenopt_generate, tokenopt_inpaint

    params = setup
    results = Path(params.paths.results)
    for stage in (tokenopt_edit, tokenopt_generate, tokenopt_inpaint, eval_tokenopt):
        assert stage.run(params) == 0
    for stage in ("tokenopt_edit", "tokenopt_generate", "tokenopt_inpaint"):
        assert (results / stage / "grid.png").stat().st_size > 0
        assert fake_tracking[stage].metrics["images"] > 0

    arrays, records = _samples(params, "tokenopt_edit")
    assert arrays["source"].shape == (3, SIZE, SIZE, 3) and arrays["edited"].shape == (6, SIZE, SIZE, 3)
    assert arrays["edited"].dtype == np.uint8
    assert records[4]["prompt"] == f"a photo of a red {records[4]['class_name']}" and records[4]["prompt_index"] == 1
    assert records[4]["negative_prompt"] == f"a photo of a blue {records[4]['class_name']}"

    arrays, records = _samples(params, "tokenopt_generate")
    assert set(arrays) == {"images", "images_random_init", "seeds", "seed_reconstructions", "random_tokens",
                           "labels"}
    assert arrays["images"].shape == (10, SIZE, SIZE, 3) and arrays["labels"].tolist() == list(range(10))
    assert arrays["images_random_init"].shape == (10, SIZE, SIZE, 3)
    assert records[3]["prompt"] == "a photo of a star" and records[3]["init"] == "seed"
    assert all(0 <= r["seed_split_index"] < 30 for r in records)

    arrays, records = _samples(params, "tokenopt_inpaint")
    assert arrays["inpainted"].shape == (6, SIZE, SIZE, 3) and arrays["masks"].shape == (6, SIZE, SIZE)
    assert [r["mask"] for r in records] == ["center"] * 3 + ["boxes"] * 3
    assert arrays["masks"][0, SIZE // 2, SIZE // 2] == 0 and arrays["masks"][0, 0, 0] == 1

    metrics = json.loads((results / "eval_tokenopt" / "details.json").read_text())
    gen = metrics["generate"]
    assert gen["num_samples"] == 10 and gen["protocol_num_samples"] == 10 and metrics["chance"] == 0.1
    assert set(gen["methods"]) == {"optimized", "optimized_random_init", "seeds", "seed_reconstructions",
                                   "random_tokens", "real_val"}
    keys = {"fid", "isc_mean", "precision", "recall", "clip_score", "judge_score", "judge_zero_shot_top1"}
    for row in gen["methods"].values():
        assert keys <= set(row)
        assert row["fid"] >= 0 and 0 <= row["judge_zero_shot_top1"] <= 1
    # the judge is the second demo CLIP (another tower), not the objective
    assert metrics["judge_independent"] is True and metrics["judge"] == "clip_judge_demo"
    edit = metrics["edit"]
    assert edit["overall"]["num_images"] == 6 and set(edit["per_prompt"]) == {"a bright photo of a {}",
                                                                              "a photo of a red {}"}
    assert {"clip_before", "clip_after", "judge_before", "judge_after", "psnr_to_source"} <= set(edit["overall"])
    bright, red = edit["per_prompt"]["a bright photo of a {}"], edit["per_prompt"]["a photo of a red {}"]
    assert bright["num_brightness_prompts"] == 3 and 0 <= bright["brightness_as_prompted_fraction"] <= 1
    assert red["num_brightness_prompts"] == 0 and red["brightness_as_prompted_fraction"] is None
    for kind in ("center", "boxes"):
        row = metrics["inpaint"][kind]
        assert row["num_images"] == 3 and 0 < row["known_fraction"] < 1
        assert {"fid", "l1_hole", "psnr_hole", "psnr_known"} <= set(row["result"]) and "psnr_hole" in row["start"]
    headline = json.loads((results / "eval_tokenopt" / "metrics.json").read_text())
    assert headline["judge_top1"] == gen["methods"]["optimized"]["judge_zero_shot_top1"]
    assert headline["inpaint_boxes_psnr_hole"] == metrics["inpaint"]["boxes"]["result"]["psnr_hole"]
    assert len(headline) <= 12 and all(isinstance(v, int | float) for v in headline.values())
    # the protocol each score followed, for the report (its words: pipeline.report.references)
    protocol = metrics["protocol"]
    assert protocol["generate"] == {"samples": 10, "reference": protocol["generate"]["reference"], "uint8": "round",
                                    "features": f"clip:{metrics['judge']}", "dataset": "demo, 10 classes",
                                    "image_size": SIZE}
    assert protocol["generate"]["reference"].startswith(f"demo {params.fid.reference_split}, ")
    assert protocol["clip_score"]["features"] == "clip:clip_demo" and protocol["judge_score"]["samples"] == 10
    assert protocol["inpaint"]["center"]["samples"] == 3 and protocol["inpaint"]["center"]["crop"] == "none"
    table = (results / "eval_tokenopt" / "generation.csv").read_text().splitlines()
    assert table[0].startswith("method,fid,") and len(table) == 7
    assert (Path(params.paths.data) / "tokenopt" / "fid_reference.npz").is_file()
    logged = fake_tracking["eval_tokenopt"].metrics
    assert "generate.methods.optimized.fid" in logged and "edit.prompt_1.clip_after" in logged
    assert not list(Path(params.paths.data).glob("tokenopt/.*tmp*"))


def test_reruns_write_identical_files(setup, fake_tracking):
    """Same seed, same bytes: what DVC hashes must not depend on the run (no timings in the outputs)."""
    from pipeline.stages import tokenopt_inpaint

    folder = Path(setup.paths.data) / "tokenopt" / "tokenopt_inpaint"
    assert tokenopt_inpaint.run(setup) == 0
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert tokenopt_inpaint.run(setup) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first


def test_missing_inputs_are_named(setup, tmp_path):
    from pipeline.stages import eval_tokenopt, tokenopt_edit

    elsewhere = demo_params(SETUP | {"paths": {"data": setup.paths.data, "models": str(tmp_path)}})
    with pytest.raises(InputError, match="titok/config.json: no TiTok there .* tokenopt.tokenizer.source"):
        tokenopt_edit.run(elsewhere)
    too_many = demo_params(SETUP | {"paths": setup.paths.model_dump(),
                                   "tokenopt": SETUP["tokenopt"] | {"edit": {"num_images": 21}}})
    with pytest.raises(InputError, match="tokenopt.edit.num_images: asks for 21 images but split 'val'"):
        tokenopt_edit.run(too_many)
    no_samples = demo_params(SETUP | {"paths": setup.paths.model_dump() | {"data": str(tmp_path)}})
    with pytest.raises(InputError, match="tokenopt_generate: no images.npz / records.json there. Run `dvc repro"):
        eval_tokenopt.run(no_samples)


@pytest.mark.parametrize(("section", "message"), [
    ({"optim": {"ema_decay": 1.0}}, "tokenopt.optim.ema_decay"),
    ({"generate": {"init": "noise"}}, "tokenopt.generate.init"),
    ({"generate": {"template": "a photo"}}, "tokenopt.generate.template"),
    ({"inpaint": {"mask_kinds": ["center", "ring"]}}, "tokenopt.inpaint.mask_kinds.1"),
    ({"inpaint": {"mask_kinds": ["half", "half"]}}, "tokenopt.inpaint.mask_kinds: expected distinct"),
    ({"edit": {"prompts": []}}, "tokenopt.edit.prompts"),
    ({"tokenizer": {"source": "official"}}, "tokenopt.tokenizer"),
    ({"batch_size": 0}, "tokenopt.batch_size"),
    ({"crops": 8}, "tokenopt.crops: unknown key"),
])
def test_schema_rejects_bad_values_with_the_dotted_key(section, message):
    with pytest.raises(P.ParamsError, match=message):
        demo_params({"tokenopt": section})


def test_profiles_resolve():
    paper = P.validate(profiles.resolve_profile("paper"))
    assert paper.tokenopt.optim.num_iter == 300 and paper.tokenopt.optim.num_augmentations == 8
    assert paper.tokenopt.generate.num_per_class is None and paper.tokenopt.tokenizer.source == "official"
    micro = P.validate(profiles.resolve_profile("micro"))
    assert micro.tokenopt.optim.num_iter <= 5


def test_sample_split_reads_the_drawn_rows(setup):
    from pipeline.data.shards import load_split
    from pipeline.stages._tokenopt import sample_split

    whole = load_split(Path(setup.paths.data) / "prepared", "train")
    drawn = sample_split(setup, "train", 7, seed=3, key="k")
    assert len(set(drawn.indices.tolist())) == 7 and list(drawn.indices) == sorted(drawn.indices)
    assert np.array_equal(drawn.images, whole.images[drawn.indices])
    assert np.array_equal(drawn.labels, whole.labels[drawn.indices])
    assert np.array_equal(sample_split(setup, "train", 30, seed=3, key="k").images, whole.images)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_token_optimisation_on_the_cpu_uses_deterministic_algorithms():
    """Two threads made tokenopt_edit's records differ from run to run; the stages' device turns that off."""
    from pipeline.stages import _tokenopt

    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        assert _tokenopt.device() == torch.device("cpu")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
