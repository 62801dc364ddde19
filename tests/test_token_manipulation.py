"""Token manipulation (token-opt E1): position analysis, copy-paste editing, the stage end to end."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import demo_params
from torch import nn

from pipeline import params as P
from pipeline.experiments import token_manipulation
from pipeline.models.quantizer import VectorQuantizer
from pipeline.models.titok import TiTok, TiTokConfig

PLANTED = 5


class PlantedTokenizer(nn.Module):
    """A synthetic VQ tokenizer: position ``PLANTED`` encodes mean brightness, the others random
    projections of the mean-free image (independent of brightness)."""

    def __init__(self, size: int = 16, n: int = 8, c: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.config = SimpleNamespace(image_size=size, quantize_mode="vq", num_latent_tokens=n, codebook_size=16)
        self.register_buffer("proj", torch.randn(c * n, 3 * size * size, generator=g) / size)
        self.register_buffer("direction", torch.randn(c, generator=g))
        self.n, self.c = n, c
        self.quantize = VectorQuantizer(16, c)
        with torch.no_grad():
            self.quantize.embedding.weight.copy_(torch.randn(16, c, generator=g) * 2)

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        flat = (x - x.mean(dim=(1, 2, 3), keepdim=True)).flatten(1)
        z = (flat @ self.proj.t()).view(len(x), self.c, 1, self.n)  # (B, C, 1, N)
        z[:, :, 0, PLANTED] = 8 * (x.mean(dim=(1, 2, 3))[:, None] - 0.5) * self.direction + 0.1 * z[:, :, 0, PLANTED]
        return z

    def decode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        # brightness from the planted position's code, a mean-free pattern from all codes
        e = self.quantize.get_codebook_entry(codes)  # (B, N, C)
        level = 0.5 + 0.35 * torch.tanh(e[:, PLANTED] @ self.direction / 8)  # (B,)
        pattern = (e.reshape(len(codes), -1) @ self.proj).view(len(codes), 3, 16, 16) * 0.02
        pattern = pattern - pattern.mean(dim=(1, 2, 3), keepdim=True)
        return level[:, None, None, None] + pattern


def _planted_images(m: int = 300, size: int = 16) -> tuple[torch.Tensor, list[dict]]:
    rng = np.random.default_rng(1)
    texture = rng.uniform(-0.2, 0.2, (m, size, size, 3))
    offset = rng.uniform(0.25, 0.75, (m, 1, 1, 1))
    images = torch.from_numpy(np.clip(texture + offset, 0, 1) * 255).round().to(torch.uint8)
    meta = [{"unrelated": float(u)} for u in rng.uniform(0, 1, m)]
    return images, meta


def test_analysis_recovers_a_planted_position():
    images, meta = _planted_images()
    model = PlantedTokenizer()
    encoded = token_manipulation.encode(model, images, batch_size=64)
    assert encoded.latents.shape == (300, 4, 8) and encoded.codes.shape == (300, 8)
    attrs = token_manipulation.attribute_table(["brightness", "unrelated"], images, np.zeros(300), meta, wnids=None)
    assert [a.source for a in attrs] == ["image", "recorded"]
    scores = token_manipulation.position_scores(encoded, attrs, bins=4)
    assert token_manipulation.rank_positions(scores["brightness"]["f_ratio"])[0] == PLANTED
    assert token_manipulation.rank_positions(scores["brightness"]["mutual_information"])[0] == PLANTED
    unrelated = scores["unrelated"]["f_ratio"]
    assert token_manipulation.rank_positions(unrelated)[0] != PLANTED
    assert unrelated[PLANTED] < 4 < scores["brightness"]["f_ratio"][PLANTED] / 10  # null F is about 1


def test_copying_the_planted_position_moves_the_attribute_more_than_random_ones():
    images, meta = _planted_images()
    model = PlantedTokenizer()
    encoded = token_manipulation.encode(model, images)
    (attr,) = token_manipulation.attribute_table(["brightness"], images, np.zeros(300), meta, wnids=None)
    groups = token_manipulation.group_labels(attr, 4)
    scores = token_manipulation.position_scores(encoded, [attr], 4)
    ranking = token_manipulation.rank_positions(scores["brightness"]["f_ratio"])
    recon = token_manipulation.measure("brightness", token_manipulation.decode(model, encoded.codes))
    result = token_manipulation.edit_effects(model, encoded, attr, ranking, top_k=1, groups=groups,
                                             recon_measure=recon, num_pairs=100, bootstrap_samples=500, seed=0)
    assert result["positions"] == [PLANTED] and result["top_beats_random"]
    assert result["top"]["mean"] > 1 and abs(result["random"]["mean"]) < 0.1  # in sd of the measure
    assert PLANTED not in result["random_positions"]
    assert (groups[result["pairs"]].min(axis=1) == 0).all() and (groups[result["pairs"]].max(axis=1) == 3).all()


def test_f_ratio_matches_a_one_way_anova_on_one_channel():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(0)
    latents, groups = rng.normal(size=(60, 1, 3)), rng.integers(0, 3, 60)
    ours = token_manipulation.f_ratio(latents, groups)
    for n in range(3):
        expected = f_oneway(*(latents[groups == g, 0, n] for g in range(3))).statistic
        assert ours[n] == pytest.approx(expected)


def test_group_labels_bins_continuous_by_quantile_and_categorical_by_value():
    cont = token_manipulation.Attribute("x", np.arange(100.0), False, "recorded")
    assert np.bincount(token_manipulation.group_labels(cont, 4)).tolist() == [25, 25, 25, 25]
    cat = token_manipulation.Attribute("color_index", np.array([7.0, 2, 2, 5, 7, 1, 3]), True, "recorded")
    assert token_manipulation.group_labels(cat, 2).tolist() == [4, 1, 1, 3, 4, 0, 2]


def test_unknown_attribute_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown attribute 'animal'.*available: blur, .*brightness"):
        token_manipulation.attribute_table(["animal"], torch.zeros(2, 8, 8, 3, dtype=torch.uint8), np.zeros(2),
                                           [{"blur": 0.1}, {"blur": 0.2}], wnids=None)
    # from the synset ids, not the labels: tench (ImageNet label 0), puffer (397), abacus (398), chain saw (491)
    wnids = ["n01440764", "n02655020", "n02666196", "n03000684"]
    attr = token_manipulation.attribute_table(["animal"], torch.zeros(3, 8, 8, 3, dtype=torch.uint8),
                                              np.array([0, 1, 2]), [], wnids=wnids)[0]
    assert attr.values.tolist() == [1, 1, 0] and attr.categorical
    # a class subset: label 1 is the chain saw here, not goldfish (which it is in the 1000-class order)
    attr = token_manipulation.attribute_table(["animal"], torch.zeros(2, 8, 8, 3, dtype=torch.uint8),
                                              np.array([0, 1]), [], wnids=["n01440764", "n03000684"])[0]
    assert attr.values.tolist() == [1, 0]


def _tiny_titok(n: int = 8) -> TiTok:
    torch.manual_seed(0)
    cfg = TiTokConfig(image_size=32, enc_width=32, enc_depth=1, enc_heads=2, enc_patch_size=8, dec_width=32,
                      dec_depth=1, dec_heads=2, dec_patch_size=8, num_latent_tokens=n, token_size=4,
                      codebook_size=16, legacy=False, pixel_decoder=False)
    return TiTok(cfg).eval()


def test_copy_paste_of_all_positions_reproduces_the_reference_reconstruction():
    model = _tiny_titok()
    images = torch.rand(6, 3, 32, 32)
    encoded = token_manipulation.encode(model, images)
    target, reference = encoded.codes[:3], encoded.codes[3:]
    edited = token_manipulation.copy_positions(target, reference, range(8))
    assert torch.equal(edited, reference)
    assert torch.equal(token_manipulation.decode(model, edited), token_manipulation.decode(model, reference))
    one = token_manipulation.copy_positions(target, reference, [2])
    assert torch.equal(one[:, 2], reference[:, 2])
    assert torch.equal(one[:, [0, 1, 3, 4, 5, 6, 7]], target[:, [0, 1, 3, 4, 5, 6, 7]])


def test_substitution_changes_only_the_chosen_position():
    codes = torch.randint(0, 16, (4, 8))
    out = token_manipulation.substitute(codes, 3, 11)
    assert (out[:, 3] == 11).all()
    assert torch.equal(out[:, [0, 1, 2, 4, 5, 6, 7]], codes[:, [0, 1, 2, 4, 5, 6, 7]])
    per_image = token_manipulation.substitute(codes, 0, torch.tensor([1, 2, 3, 4]))
    assert per_image[:, 0].tolist() == [1, 2, 3, 4] and torch.equal(per_image[:, 1:], codes[:, 1:])
    assert torch.equal(codes, codes.clone())  # the input is left alone


@pytest.mark.parametrize("positions, match", [([32], r"\[32\] out of range.*32 token positions \(valid: 0..31\)"),
                                              ([-1, 3], r"\[-1\] out of range"),
                                              ([2, 2], "repeated position"),
                                              ([], "no token position")])
def test_bad_positions_are_rejected_by_the_library(positions, match):
    codes = torch.zeros(2, 32, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        token_manipulation.copy_positions(codes, codes, positions)


def test_bad_positions_are_rejected_by_the_schema():
    def error(section):
        with pytest.raises(P.ParamsError) as info:
            demo_params({"token_manipulation": section})
        return str(info.value)

    assert "repeated position" in error({"positions_to_edit": [1, 1]})
    assert "token_manipulation.positions_to_edit.0: expected greater than or equal to 0" in \
        error({"positions_to_edit": [-2]})
    assert "folder must name" in error({"tokenizer": {"source": "official"}})
    assert "unknown key" in error({"position": [1]})
    assert "unknown key" in error({"num_tokens": 32})  # the count is the tokenizer's: read from the model
    assert demo_params({"token_manipulation": {"positions_to_edit": [40]}})  # checked against the loaded model


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 40), rng.normal(1.0, 1.0, 4000)
    widths = []
    for values in (small, large):
        ci = token_manipulation.bootstrap_ci(values, 1000, seed=0)
        assert ci.low < ci.mean < ci.high and ci.mean == pytest.approx(values.mean())
        widths.append(ci.high - ci.low)
    assert widths[1] < widths[0] / 5  # ~ 1/sqrt(n): 10x narrower for 100x the values
    half = 1.96 * large.std() / np.sqrt(len(large))  # the normal interval the bootstrap approaches at large n
    ci = token_manipulation.bootstrap_ci(large, 2000, seed=0)
    assert ci.low == pytest.approx(large.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(large.mean() + half, abs=0.15 * half)
    single = token_manipulation.bootstrap_ci(np.array([0.3]), 100)
    assert single.as_dict() == {"mean": 0.3, "ci_low": 0.3, "ci_high": 0.3}


def test_stage_runs_end_to_end_and_writes_every_output(tmp_path, monkeypatch):
    from pipeline.stages import token_manipulation as stage
    from pipeline.stages.prepare import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _tiny_titok().save_pretrained(tmp_path / "models" / "titok")
    params = demo_params({"image_size": 32, "prepare": {
        "workers": 1, "demo": {"train_per_class": 1, "val_per_class": 4, "ood_per_class": 1}}, "token_manipulation": {
        "num_images": 40, "top_k": 2, "num_pairs": 12, "bootstrap_samples": 200, "grid_pairs": 2,
        "batch_size": 16, "positions_to_edit": [7], "attributes": ["brightness", "blur", "color_index", "saturation"]}})
    prepare(params, Path(params.paths.data) / "prepared", progress=False)  # 40 demo val images at 32 px
    assert stage.run(params) == 0

    out = tmp_path / "results" / "token_manipulation"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "details.json", "positions.json", "figures"}
    assert {p.name for p in (out / "figures").iterdir()} == {
        "heatmap.png", "edits_brightness.png", "edits_blur.png", "edits_color_index.png", "edits_saturation.png"}
    metrics = json.loads((out / "details.json").read_text())
    assert set(metrics["attributes"]) == {"brightness", "blur", "color_index", "saturation"}
    headline = json.loads((out / "metrics.json").read_text())
    assert headline == {"num_images": 40, **{f"{a}_top_minus_random": e["difference"]["mean"]
                                             for a, e in metrics["attributes"].items()}}
    assert metrics["attributes"]["color_index"]["measure"] == "colour_temperature"
    blur = metrics["attributes"]["blur"]
    assert blur["measure"] == "sharpness" and len(blur["positions"]) == 2 and blur["num_pairs"] == 12
    for side in ("top", "random", "difference"):
        assert blur[side]["ci_low"] <= blur[side]["mean"] <= blur[side]["ci_high"]
    assert blur["top_beats_random"] == (blur["top"]["ci_low"] > blur["random"]["ci_high"])
    positions = json.loads((out / "positions.json").read_text())
    assert sorted(positions["color_index"]["ranking"]) == list(range(8))
    assert positions["color_index"]["categorical"] and positions["brightness"]["source"] == "recorded"
    assert len(positions["blur"]["mutual_information"]) == 8
    assert not list(tmp_path.glob("results/.token_manipulation.tmp-*"))


def test_stage_checks_positions_and_top_k_against_the_tokenizer(tmp_path, monkeypatch):
    from pipeline.errors import InputError
    from pipeline.stages import token_manipulation as stage

    monkeypatch.chdir(tmp_path)
    _tiny_titok().save_pretrained(tmp_path / "models" / "titok")  # 8 token positions
    with pytest.raises(InputError, match=r"token_manipulation.positions_to_edit: \[8, 31\] out of range: the "
                                         r"tokenizer at .* has 8 token positions, 0..7"):
        stage.run(demo_params({"token_manipulation": {"positions_to_edit": [3, 8, 31]}}))
    with pytest.raises(InputError, match=r"token_manipulation.top_k: 5 leaves too few of the 8 positions .* "
                                         r"expected at most 4"):
        stage.run(demo_params({"token_manipulation": {"top_k": 5}}))
    with pytest.raises(InputError, match="official"):
        stage.run(demo_params({"paths": {"models": "elsewhere"}}))


def test_stage_stops_early_on_an_attribute_with_one_value(tmp_path, monkeypatch):
    from pipeline.errors import InputError
    from pipeline.stages import token_manipulation as stage
    from pipeline.stages.prepare import prepare

    monkeypatch.chdir(tmp_path)
    _tiny_titok().save_pretrained(tmp_path / "models" / "titok")
    params = demo_params({"image_size": 32, "prepare": {"workers": 1, "demo": {
        "train_per_class": 1, "val_per_class": 1, "ood_per_class": 1}}, "token_manipulation": {
        "num_images": 4, "bins": 2, "attributes": ["brightness", "class"]}})
    prepare(params, Path(params.paths.data) / "prepared", progress=False)
    # as when every image of a class subset is an animal: the class attribute takes one value here
    table = stage.token_manipulation.attribute_table
    monkeypatch.setattr(stage.token_manipulation, "attribute_table", lambda names, images, labels, *a: table(
        names, images, np.zeros_like(labels), *a))
    with pytest.raises(InputError, match=r"attributes: class take\(s\) a single value on the 4 images of split 'val'"):
        stage.run(params)
    assert not (tmp_path / "results").exists()  # nothing was encoded or written
