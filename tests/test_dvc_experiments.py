"""`dvc exp run` records into the workspace's MLflow store, tagged with the experiment, with its -S values."""

import subprocess

import pytest
import yaml
from conftest import ROOT, pipeline_env

pytestmark = pytest.mark.slow

STAGE = """import yaml
from pipeline.tracking import stage_run
params = yaml.safe_load(open("params.yaml"))
with stage_run("make", params):
    open("out.txt", "w").write(str(params["train"]["lr"]))
"""
DVC_YAML = {"stages": {"make": {"cmd": "python make.py", "deps": ["make.py"], "params": ["train.lr"],
                                "outs": ["out.txt"]}}}


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("how", ["--temp", "--queue"])
def test_experiment_runs_land_in_the_workspace_store(tmp_path, how):
    from mlflow.tracking import MlflowClient

    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "make.py").write_text(STAGE)
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.1}, "other": 1}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    env = pipeline_env(repo)
    env.pop("MLFLOW_TRACKING_URI")  # the default store: <checkout>/mlflow.db
    env["PYTHONPATH"] = str(ROOT)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        _run(cmd, repo, env)
    _run(["dvc", "exp", "run", how, "-n", "lr-probe", "-S", "train.lr=0.5"], repo, env)
    if how == "--queue":
        _run(["dvc", "queue", "start", "-j", "1"], repo, env)
        _run(["dvc", "queue", "logs", "lr-probe"], repo, env)  # waits for the task to finish
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "tokenizer-repro"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["dvc.exp_name"] == "lr-probe"
    assert len(run.data.tags["dvc.exp_baseline_rev"]) == 40
    assert run.data.params == {"train.lr": "0.5"}  # the -S value, and only the declared key
    assert exp.artifact_location == (repo / "mlartifacts").as_uri()
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 0.1  # the workspace unchanged
