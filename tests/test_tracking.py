"""MLflow tracking: a stage run carries params, metrics, artifacts and provenance tags; runs are grouped."""

import pytest

from pipeline import tracking


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_INVOCATION", "inv-123")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("DVC_STAGE", "prepare")
    return uri


def test_stage_run_records_params_metrics_artifacts_and_tags(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    artifact = tmp_path / "manifest.json"
    artifact.write_text("{}")
    params = {"seed": 0, "image_size": 64, "paths": {"data": "data", "models": "models"},
              "prepare": {"shard_size": 10, "root": None}, "train_clip": {"lr": 1.0}}
    with tracking.stage_run("prepare", params) as run:
        run.log_metrics({"images": 12, "nested": {"psnr": 20.5}, "skip": "text"})
        run.log_artifact(artifact)
    client = MlflowClient(mlflow_uri)
    data = client.get_run(run.run_id).data
    # exactly what dvc.yaml declares for the stage (seed, image_size, paths.data, prepare): not train_clip
    assert data.params == {"seed": "0", "image_size": "64", "paths.data": "data", "prepare.shard_size": "10",
                           "prepare.root": "null"}
    seconds = data.metrics.pop("seconds")  # the stage body's wall time, logged by stage_run itself
    assert 0 <= seconds < 60
    assert data.metrics == {"images": 12.0, "nested.psnr": 20.5}
    assert data.tags["dvc.stage"] == "prepare"
    assert data.tags["slurm.job_id"] == "4242"
    assert data.tags["pipeline.invocation"] == "inv-123"
    assert data.tags["git.commit"]
    assert data.tags["host"]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["manifest.json"]
    assert list((tmp_path / "mlartifacts").rglob("manifest.json")), "artifacts are stored beside the database"


def test_a_curve_is_logged_in_one_call_as_its_rows_would_be_one_by_one(mlflow_uri):
    from mlflow.tracking import MlflowClient

    rows = [{"step": 0, "loss": 2.5, "images_per_s": 100}, {"step": 10, "loss": 1.25, "images_per_s": 120.5}]
    with tracking.stage_run("prepare", {}) as run:
        run.log_curve(rows, prefix="objective/")
    client = MlflowClient(mlflow_uri)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.run_id, key)]
               for key in ("objective/loss", "objective/images_per_s")}
    assert history == {"objective/loss": [(0, 2.5), (10, 1.25)], "objective/images_per_s": [(0, 100.0), (10, 120.5)]}
    assert "objective/step" not in client.get_run(run.run_id).data.metrics


def test_runs_of_one_invocation_share_a_tag(mlflow_uri):
    from mlflow.tracking import MlflowClient

    ids = []
    for stage in ("a", "b"):
        with tracking.stage_run(stage, {}) as run:
            ids.append(run.run_id)
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    found = client.search_runs([exp.experiment_id], "tags.`pipeline.invocation` = 'inv-123'")
    assert sorted(r.info.run_id for r in found) == sorted(ids)


def test_invocation_id_without_launcher_env_is_stable_within_a_process(monkeypatch):
    monkeypatch.delenv("PIPELINE_INVOCATION", raising=False)
    assert tracking.invocation_id() == tracking.invocation_id()


def test_default_uri_is_sqlite_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_dvc_experiments_record_into_the_workspace_store_with_their_name(monkeypatch, tmp_path):
    """`dvc exp run --temp` runs in a copy of the repo and sets DVC_ROOT to the workspace (dvc.env)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-oryx")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert tracking.tracking_uri() == f"sqlite:///{workspace / 'mlflow.db'}"
    tags = tracking.run_tags("train_titok")
    assert tags["dvc.exp_name"] == "bushy-oryx" and tags["dvc.exp_baseline_rev"] == "a" * 40


def test_a_moved_checkout_writes_its_artifacts_beside_its_own_store(monkeypatch, tmp_path):
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.chdir(old)
    (old / "a.txt").write_text("a")
    with tracking.stage_run("a", {}) as run:
        run.log_artifact(old / "a.txt")
    first = run.run_id
    shutil.copytree(old, new)
    shutil.rmtree(old)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    monkeypatch.chdir(new)
    (new / "b.txt").write_text("b")
    with tracking.stage_run("b", {}) as run:
        run.log_artifact(new / "b.txt")
    assert (new / "mlartifacts" / run.run_id / "artifacts" / "b.txt").is_file()
    assert not old.exists()
    client = MlflowClient(tracking.tracking_uri())
    assert [a.path for a in client.list_artifacts(first)] == ["a.txt"]  # the earlier run's, found in the copy


def test_an_unreachable_tracking_server_stops_the_stage_in_seconds_with_one_line(monkeypatch):
    import socket
    import time

    from pipeline.errors import InputError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(InputError, match="not reachable") as err, tracking.stage_run("prepare", {}):
        pass
    assert time.monotonic() - start < 10 and "MLFLOW_TRACKING_URI" in str(err.value)


def test_a_corrupt_store_stops_the_stage_with_one_line(monkeypatch, tmp_path):
    from pipeline.errors import InputError

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(InputError, match="cannot be used") as err, tracking.stage_run("prepare", {}):
        pass
    assert "\n" not in str(err.value)


def _log_artifact(client, run_id: str, stage: str) -> str:
    local = client.download_artifacts(run_id, f"{tracking.LOG_ARTIFACT_DIR}/{stage}.log")
    with open(local) as f:
        return f.read()


def test_the_stage_output_is_its_runs_log_artifact_summary_line_included(mlflow_uri):
    import sys

    from mlflow.tracking import MlflowClient

    with tracking.stage_output_logged("prepare"):
        print("inside the run")
        with tracking.stage_run("prepare", {}) as run:
            print("progress", file=sys.stderr)
        print("prepare: the summary printed after the run's block")
    lines = _log_artifact(MlflowClient(mlflow_uri), run.run_id, "prepare").splitlines()
    printed = ["inside the run", "progress", "prepare: the summary printed after the run's block"]
    # in order, among MLflow's own lines (creating the store)
    assert [line for line in lines if line in printed] == printed
    client = MlflowClient(mlflow_uri)
    tags = client.get_experiment_by_name(tracking.EXPERIMENT).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"  # the UI opens it on its runs


def test_a_crashed_stage_keeps_its_log_with_the_traceback(mlflow_uri):
    from mlflow.tracking import MlflowClient

    with pytest.raises(ZeroDivisionError), tracking.stage_output_logged("prepare"):
        with tracking.stage_run("prepare", {}) as run:
            print("step 1")
            _ = 1 / 0
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run.run_id).info.status == "FAILED"
    log = _log_artifact(client, run.run_id, "prepare")
    assert "step 1\n" in log and log.rstrip().endswith("ZeroDivisionError: division by zero")
