"""The open_clip wrapper, local-weights loading, the contrastive trainer and the train_clip stage pieces."""

import json
import os

import pytest
import torch
from conftest import TINY_CLIP, demo_params

from pipeline.errors import InputError, MissingWeightsError
from pipeline.metrics.clip_score import clip_score, cosine_score, zero_shot_accuracy
from pipeline.models.clip import DEMO_CONFIG, ClipModel, create_clip, load_clip, register_config, save_clip
from pipeline.train.clip import ClipTrainConfig, contrastive_loss, dihedral, train_clip

TINY = TINY_CLIP
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    path = tmp_path_factory.mktemp("cfg") / "clip_test_tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture()
def tiny(tiny_config) -> ClipModel:
    torch.manual_seed(0)
    return create_clip("clip_test_tiny", config=tiny_config)


def test_demo_config_builds_offline():
    clip = create_clip("clip_demo")
    assert register_config(DEMO_CONFIG) == "clip_demo"
    assert clip.image_size == (64, 64) and clip.tokenize(["a photo of a circle"]).shape == (1, 32)
    assert clip.embed_dim == json.loads(DEMO_CONFIG.read_text())["embed_dim"]


def test_demo_tower_round_trips_through_its_folder(tmp_path):
    # The demo's image tower is a timm model registered by pipeline.models: a saved folder must load back.
    torch.manual_seed(0)
    clip = create_clip("clip_demo").eval()
    assert json.loads(DEMO_CONFIG.read_text())["vision_cfg"]["timm_model_name"] == "clip_demo_cnn"
    save_clip(clip, tmp_path / "clip")
    loaded = load_clip("clip_demo", tmp_path / "clip")
    x = torch.rand(2, 3, 32, 32)  # the micro profile's images: resized to the tower's 64 px
    with torch.no_grad():
        assert torch.allclose(loaded.encode_images(x), clip.encode_images(x), atol=1e-6)


def test_dihedral_augmentation_permutes_pixels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    y = dihedral(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert torch.equal(dihedral(x, torch.Generator().manual_seed(0)), y)


def test_preprocess_resizes_normalises_and_passes_gradients(tiny):
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    y = tiny.preprocess(x)
    assert y.shape == (2, 3, 16, 16)
    flat = torch.full((1, 3, 16, 16), 0.5)  # no resize at the model size: only the normalisation
    assert torch.allclose(tiny.preprocess(flat), (flat - tiny.mean) / tiny.std)
    tiny.requires_grad_(False)
    loss = -(tiny.encode_images(x) @ tiny.encode_texts(["a red circle"]).T).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    wide = tiny.preprocess(torch.rand(1, 3, 20, 40), interpolation="bilinear", antialias=False)
    assert wide.shape == (1, 3, 16, 16)  # shortest side to 16, then centre crop


def test_save_and_load_round_trip(tiny, tmp_path):
    save_clip(tiny, tmp_path / "clip")
    assert (tmp_path / "clip" / "open_clip_model.safetensors").is_file()
    loaded = load_clip("clip_test_tiny", tmp_path / "clip")
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_images(x), tiny.encode_images(x), atol=1e-6)
        assert torch.allclose(loaded.encode_texts(["two blue stars"]), tiny.encode_texts(["two blue stars"]), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    # A plain checkpoint file (torch.save of the state dict) loads with weights_only.
    torch.save(tiny.model.state_dict(), tmp_path / "ckpt.bin")
    from_file = load_clip("clip_test_tiny", tmp_path / "ckpt.bin")
    assert torch.equal(from_file.model.logit_scale, tiny.model.logit_scale)


def test_missing_weights_name_the_file_and_the_source(tmp_path):
    missing = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(MissingWeightsError) as err:
        load_clip("ViT-B-32", missing, tag="laion2b_s34b_b79k")
    msg = str(err.value)
    assert str(missing) in msg and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert "hf download" in msg and "open_clip_pytorch_model.bin" in msg
    with pytest.raises(MissingWeightsError, match="timm/ViT-B-16-SigLIP"):
        load_clip("ViT-B-16-SigLIP", tmp_path / "siglip", tag="webli")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="empty/open_clip_pytorch_model.bin"):
        load_clip("ViT-B-32", tmp_path / "empty")


def test_wrong_checkpoint_and_bad_config(tiny, tmp_path):
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "bad.bin")
    with pytest.raises(InputError, match="does not fit"):
        load_clip("clip_test_tiny", tmp_path / "bad.bin")
    (tmp_path / "broken.json").write_text(json.dumps({"embed_dim": 4}))
    with pytest.raises(InputError, match="vision_cfg"):
        register_config(tmp_path / "broken.json")
    with pytest.raises(InputError, match="unknown open_clip model config"):
        create_clip("no_such_clip")


def test_contrastive_loss_treats_equal_captions_as_positives():
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(0.0)
    distinct = contrastive_loss(e, e, scale, torch.arange(4))
    assert distinct.item() == pytest.approx(
        torch.nn.functional.cross_entropy(e @ e.T, torch.arange(4)).item(), rel=1e-5)
    # All captions equal: every pair is a positive; with identical embeddings the loss is its floor, ln 4.
    one = e[:1].expand(4, 8)
    same = contrastive_loss(one, one, scale, torch.zeros(4, dtype=torch.long))
    assert same.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-5)


def test_tiny_clip_trains_and_scores(tiny):
    # Two classes a CLIP can tell apart from pixels: red and blue images, captioned by colour.
    g = torch.Generator().manual_seed(0)
    n = 64
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 16, 16, 3, dtype=torch.uint8)
    images[labels == 0, :, :, 0] = 200
    images[labels == 1, :, :, 2] = 200
    images = (images.int() + torch.randint(0, 40, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    captions = [f"a photo of a {'red' if y == 0 else 'blue'} square" for y in labels]
    result = train_clip(tiny, images, captions, ClipTrainConfig(epochs=10, batch_size=16, lr=3e-3, warmup_steps=4))
    assert result.steps == 40 and len(result.losses) == 40
    # 8 images of each caption per batch of 16: the loss cannot go below ln 8.
    floor = torch.log(torch.tensor(8.0)).item()
    assert sum(result.losses[:5]) / 5 > floor + 0.3 and sum(result.losses[-5:]) / 5 < floor + 0.1
    acc = zero_shot_accuracy(tiny, images, labels, ["red square", "blue square"], ["a photo of a {}."])
    assert acc > 0.9
    scores = clip_score(tiny, images, captions)
    assert scores.shape == (n,) and (scores.abs() <= 100).all()
    wrong = clip_score(tiny, images, [c.replace("red", "X").replace("blue", "red").replace("X", "blue")
                                      for c in captions])
    assert scores.mean() > wrong.mean()
    assert torch.allclose(clip_score(tiny, images[:1], captions[0]), scores[:1])


def test_class_prompt_term_teaches_what_captions_alone_do_not(tiny):
    # Red and blue images, all captioned "a photo": the captions never tell the classes apart, so only
    # the class-prompt (UniCL) term can teach them.
    g = torch.Generator().manual_seed(0)
    n = 64
    labels = torch.arange(n) % 2
    images = torch.randint(0, 40, (n, 16, 16, 3), generator=g).to(torch.uint8)
    images[labels == 0, :, :, 0] += 160
    images[labels == 1, :, :, 2] += 160
    captions = ["a photo"] * n
    prompts = ["a photo of a first", "a photo of a second"]

    def accuracy(label_weight: float) -> float:
        clip = create_clip(tiny.name)
        cfg = ClipTrainConfig(epochs=10, batch_size=16, lr=3e-3, warmup_steps=4, augment=False,
                              label_weight=label_weight)
        train_clip(clip, images, captions, cfg, labels=labels, label_texts=prompts)
        return zero_shot_accuracy(clip, images, labels, ["first", "second"], ["a photo of a {}."])

    assert accuracy(1.0) > 0.9
    assert accuracy(0.0) < 0.75
    with pytest.raises(ValueError, match="label_weight"):
        train_clip(tiny, images, captions, ClipTrainConfig(label_weight=1.0))


def test_cosine_score_is_symmetric_and_bounded():
    a, b = torch.randn(10, 16), torch.randn(10, 16)
    assert torch.allclose(cosine_score(a, b), cosine_score(b, a))
    assert (cosine_score(a, b).abs() <= 100 + 1e-4).all()
    assert torch.allclose(cosine_score(a, a), torch.full((10,), 100.0))
    assert torch.allclose(cosine_score(a, -a), torch.full((10,), -100.0))


def test_train_clip_stage_writes_model_and_metrics(tmp_path, monkeypatch):
    from pathlib import Path

    from pipeline.stages import train_clip as stage
    from pipeline.stages._inputs import feature_space, fid_num_samples, fid_reference, judge_clip, objective_clip
    from pipeline.stages.prepare import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = demo_params({"image_size": 32, "prepare": {
        "workers": 1, "demo": {"train_per_class": 3, "val_per_class": 2, "ood_per_class": 1}},
        "train_clip": {"train": {"epochs": 2, "batch_size": 10, "warmup_steps": 1}}, "fid": {"samples_per_class": 2}})
    prepare(params, Path(params.paths.data) / "prepared", progress=False)
    assert stage.run(params) == 0
    results = tmp_path / "results" / "train_clip"
    metrics = json.loads((results / "details.json").read_text())
    assert metrics["steps"] == 6 and metrics["val_images"] == 20 and metrics["chance"] == pytest.approx(0.1)
    assert 0 <= metrics["zero_shot_top1"] <= 1
    # the judge: another config, another seed, its own accuracy
    judge_metrics = metrics["judge"]
    assert judge_metrics["model"] == "clip_judge_demo" != metrics["model"]
    assert judge_metrics["seed"] == params.seed + 1 and 0 <= judge_metrics["zero_shot_top1"] <= 1
    assert not any("seconds" in k for k in metrics)  # timings go to MLflow: details.json is reproducible
    headline = json.loads((results / "metrics.json").read_text())
    assert headline == {"parameters": metrics["parameters"], "steps": 6, "loss": metrics["final_loss"],
                        "zero_shot_top1": metrics["zero_shot_top1"],
                        "judge_top1": judge_metrics["zero_shot_top1"], "chance": metrics["chance"]}
    for role in ("objective", "judge"):  # the training curves: step 0 and every 10th, with images/s
        rows = (results / f"curve_{role}.csv").read_text().splitlines()
        assert rows[0] == "step,loss,images_per_s" and [r.split(",")[0] for r in rows[1:]] == ["0"]
    clip = judge_clip(params)  # the demo judge, read back from models/clip/judge
    assert clip.image_size == (64, 64) and clip.name == "clip_judge_demo"
    objective = objective_clip(params)
    assert objective.name == "clip_demo"
    def tower(model):
        return {k: tuple(v.shape) for k, v in model.model.state_dict().items() if k.startswith("visual.")}

    assert tower(clip) != tower(objective)  # another image tower, not another copy of the objective's
    space = feature_space(params, clip)
    ref = fid_reference(params, space, tmp_path / "ref.npz", split="val")
    assert ref.num_images == 20 and fid_num_samples(params) == 20


def test_pretrained_source_needs_both_models():
    from pipeline import params as P

    with pytest.raises(P.ParamsError, match="train_clip.objective and train_clip.judge"):
        demo_params({"train_clip": {"source": "pretrained"}})
    with pytest.raises(P.ParamsError, match="templates"):
        demo_params({"train_clip": {"templates": ["no placeholder"]}})


def test_caption_variants_name_the_photo_quality_with_the_shape():
    from pipeline.data.demo import caption_variants

    meta = {"caption": "a dark blurry photo of two small red stars on a plain background", "shape": "star",
            "object_count": 2, "color": "red"}
    variants = caption_variants(meta)
    assert variants[0] == meta["caption"] and "a dark photo of a star." in variants
    assert variants.count("a photo of a star.") == 2  # the zero-shot prompt's words, for the shape alone
    plain = caption_variants({**meta, "caption": "a photo of two small red stars on a plain background"})
    assert plain.count("a photo of a star.") == 3 and not any("dark" in v for v in plain)


def test_a_demo_clip_built_in_another_process_saves(tmp_path):
    """train_clip trains in worker processes: the parent, which never built one, saves the models."""
    import open_clip.factory

    from pipeline.models.clip import create_clip

    clip = create_clip("clip_demo")
    open_clip.factory._MODEL_CONFIGS.pop("clip_demo")  # as in a process that never registered it
    save_clip(clip, tmp_path / "clip")
    assert load_clip("clip_demo", tmp_path / "clip").name == "clip_demo"
