"""The prepare stage as a whole: MLflow logging, atomic output, the CLI's handling of unusable input."""

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import demo_params

from pipeline import profiles
from pipeline.data import shard_writer
from pipeline.stages import prepare as stage

ROOT = Path(__file__).resolve().parent.parent
MICRO = {"image_size": 16, "prepare": {"demo": {"num_classes": 10, "train_per_class": 3, "val_per_class": 1,
                                                "ood_per_class": 1}, "shard_size": 10, "workers": 1}}


class FakeRun:
    """Stands in for the MLflow run (tracking itself is tested in test_tracking.py; a real sqlite
    store costs seconds to create)."""

    def __init__(self) -> None:
        self.metrics: dict = {}
        self.artifacts: list = []

    def log_metrics(self, metrics, step=None):
        self.metrics |= metrics

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).is_file()
        self.artifacts.append(f"{artifact_path}/{Path(path).name}")


def test_run_writes_prepared_and_logs_counts(tmp_path, monkeypatch):
    import pipeline.tracking

    runs = []

    @contextmanager
    def fake_stage_run(stage_name, params):
        assert stage_name == "prepare" and params.prepare.shard_size == 10
        runs.append(FakeRun())
        yield runs[-1]

    monkeypatch.setattr(pipeline.tracking, "stage_run", fake_stage_run)
    monkeypatch.chdir(tmp_path)
    assert stage.run(demo_params(MICRO)) == 0
    out = tmp_path / "data" / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: i["count"] for s, i in manifest["splits"].items()} == {"train": 30, "val": 10, "ood": 10}
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "ood-00000.parquet", "samples.png", "skipped.json", "train-00000.parquet",
        "train-00001.parquet", "train-00002.parquet", "val-00000.parquet"]
    (run,) = runs
    assert run.metrics["train.count"] == 30 and run.metrics["ood.shards"] == 1 and run.metrics["num_classes"] == 10
    assert run.artifacts == ["prepare/manifest.json", "prepare/skipped.json", "prepare/samples.png"]


def test_failure_midway_leaves_no_prepared_folder(tmp_path, monkeypatch):
    params = demo_params(MICRO)
    out = tmp_path / "prepared"
    calls = {"n": 0}
    real_add = shard_writer.ShardWriter.add

    def failing_add(self, row):
        calls["n"] += 1
        if calls["n"] == 25:  # after two shards were written
            raise RuntimeError("killed")
        real_add(self, row)

    monkeypatch.setattr(shard_writer.ShardWriter, "add", failing_add)
    with pytest.raises(RuntimeError, match="killed"):
        stage.prepare(params, out, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither prepared/ nor its temporary sibling

    # A complete earlier output survives a failed rerun, and a rerun recovers.
    monkeypatch.setattr(shard_writer.ShardWriter, "add", real_add)
    first = stage.prepare(params, out, progress=False)
    monkeypatch.setattr(shard_writer.ShardWriter, "add", failing_add)
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        stage.prepare(params, out, progress=False)
    assert json.loads((out / "manifest.json").read_text())["splits"] == first["splits"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_cli_reports_unusable_input_with_exit_code_2(tmp_path):
    params = demo_params({"prepare": {"source": "imagenet_folder", "imagenet": {"root": str(tmp_path / "nope")}}})
    (tmp_path / "params.yaml").write_text(profiles.dump(params))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                          "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert proc.returncode == 2, proc.stderr
    assert f"error: prepare: {tmp_path / 'nope'}: ImageNet folder not found (prepare.imagenet.root)" in proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()
