"""The MLflow server and UI from the locked environment (README, Tracking): a stage's run seen through the REST API.

``mlflow-skinny`` has no server; the project depends on ``mlflow``, whose ``mlflow server`` / ``mlflow ui``
serve the UI and the REST API the UI reads. These tests start the README's server on a free local port
and stop it (its whole process group) whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_scratch_repo, pipeline_env

from pipeline import tracking

START_TIMEOUT_S = 90  # a loaded 2-core CI machine needs 10 to 45 s to start the server
NODE = "tracking-node"  # the name compute nodes use for the server's host (README: --allowed-hosts)


@dataclass(frozen=True)
class Server:
    """A running ``mlflow server``: its base URL and the files its output goes to."""

    url: str
    port: int
    stderr: Path

    def get(self, path: str, query: dict[str, str] | None = None, host: str | None = None) -> Any:
        """GET ``path`` and decode its JSON (``host``: the Host header a remote client would send)."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, headers={"Host": host} if host else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body.startswith(b"{") else body.decode()

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST ``payload`` as JSON to ``path`` and decode the JSON answer."""
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no output)"


@contextmanager
def mlflow_server(db: Path, artifacts: Path, logs: Path) -> Iterator[Server]:
    """The README's SLURM command (``mlflow server --backend-store-uri sqlite:///... --artifacts-destination ...
    --host ... --port ... --allowed-hosts ...``) on a free local port, stopped on exit.

    One worker and no job runner: the default four workers and MLflow 3's job runner (seven ``huey``
    consumers for GenAI jobs, which the pipeline never submits) only cost start-up time on a shared CI machine.
    """
    port = _free_port()
    stdout, stderr = logs / "server.out", logs / "server.err"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--allowed-hosts", f"{NODE}:{port},127.0.0.1:{port}", "--workers", "1"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        # Its own session: the server's uvicorn workers die with it (killpg), not orphaned.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=logs, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", port, stderr)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with status {proc.returncode} before answering:\n{_tail(stderr)}")
            try:
                server.get("/api/2.0/mlflow/experiments/search", {"max_results": "10"})
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer on port {port} within {START_TIMEOUT_S} s:\n"
                                f"{_tail(stderr)}")
                time.sleep(0.5)
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _experiment(server: Server, name: str) -> dict[str, Any]:
    found = server.get("/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name})["experiment"]
    return {**found, "tags": {t["key"]: t["value"] for t in found.get("tags", [])}}


def _runs(server: Server, experiment_id: str) -> list[dict[str, Any]]:
    return server.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]}).get("runs", [])


def test_a_stage_run_is_visible_through_the_server(tmp_path, monkeypatch):
    # A real stage, as `dvc repro` runs it, records into the repository's sqlite store.
    repo = make_scratch_repo(tmp_path / "repo")
    stage = subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=repo, env=pipeline_env(repo),
                           capture_output=True, text=True)
    assert stage.returncode == 0, stage.stderr[-3000:]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    logs = tmp_path / "server"
    logs.mkdir()
    with mlflow_server(repo / "mlflow.db", tmp_path / "server-artifacts", logs) as server:
        experiment = _experiment(server, tracking.EXPERIMENT)
        # The UI opens the experiment on its runs: the type is set, not left for the UI to guess.
        assert experiment["tags"][tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        (run,) = _runs(server, experiment["experiment_id"])
        assert run["info"]["run_name"] == "prepare" and run["info"]["status"] == "FINISHED"
        logged = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert logged == {k: ("null" if v is None else str(v))
                          for k, v in tracking.declared_values("prepare", params).items()}
        assert logged["image_size"] == "32"  # the micro profile's, as params.yaml holds it
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["dvc.stage"] == "prepare"

        # The stage's printed output is the run's artifact logs/prepare.log, readable through the server.
        run_id = run["info"]["run_id"]
        listed = server.get("/api/2.0/mlflow/artifacts/list", {"run_id": run_id, "path": tracking.LOG_ARTIFACT_DIR})
        assert [f["path"] for f in listed["files"]] == [f"{tracking.LOG_ARTIFACT_DIR}/prepare.log"]
        text = server.get("/get-artifact", {"run_uuid": run_id, "path": f"{tracking.LOG_ARTIFACT_DIR}/prepare.log"})
        assert "prepare: wrote data/prepared" in text

        # A compute node reaches the server by the host's name, allowed by --allowed-hosts; another name is
        # refused (MLflow 3's DNS-rebinding guard), which is why the README's SLURM command lists the name.
        assert server.get("/api/2.0/mlflow/experiments/search", {"max_results": "1"}, host=f"{NODE}:{server.port}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.get("/api/2.0/mlflow/experiments/search", {"max_results": "1"}, host=f"elsewhere:{server.port}")
        assert refused.value.code == 403

        # A SLURM job with MLFLOW_TRACKING_URI=http://...: the run and its artifacts go through the server,
        # the artifacts into --artifacts-destination (a new experiment, created by the server).
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "through-the-server")
        monkeypatch.chdir(repo)
        figure = repo / "figure.png"
        figure.write_bytes(b"\x89PNG not really")
        with tracking.stage_run("prepare", params) as remote:
            remote.log_artifact(figure)
        experiment = _experiment(server, "through-the-server")
        assert experiment["tags"][tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        assert [r["info"]["run_id"] for r in _runs(server, experiment["experiment_id"])] == [remote.run_id]
        assert [p.name for p in (tmp_path / "server-artifacts").rglob("figure.png")] == ["figure.png"]


@pytest.mark.slow
def test_every_stage_run_holds_its_log_and_its_figures(micro_repro):
    """On the micro pipeline's own store: each stage's run has ``logs/<stage>.log`` and every figure it wrote."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    from pipeline.dvcfile import OUTPUT_KINDS, dvc_stages

    repo = micro_repro.repo
    stages = dvc_stages(repo, yaml.safe_load((repo / "params.yaml").read_text()))
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    latest = {r.data.tags["dvc.stage"]: r for r in reversed(runs)}  # search_runs lists the newest first
    assert set(latest) == set(stages)
    missing = []
    for stage, declared in stages.items():
        root = Path(urlparse(latest[stage].info.artifact_uri).path)  # a file:// store beside mlflow.db
        artifacts = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        log = root / tracking.LOG_ARTIFACT_DIR / f"{stage}.log"
        if not log.is_file() or not log.read_text().strip():
            missing.append(f"{stage}: {tracking.LOG_ARTIFACT_DIR}/{stage}.log")
        outs = [repo / p for kind in OUTPUT_KINDS for p in declared[kind]]
        figures = [f for o in outs for f in ([o] if o.is_file() else sorted(o.rglob("*"))) if f.suffix == ".png"]
        missing += [f"{stage}: {f.relative_to(repo)}" for f in figures
                    if f.name not in {Path(a).name for a in artifacts}]
    assert not missing, "not in the stage's MLflow run:\n" + "\n".join(missing)
