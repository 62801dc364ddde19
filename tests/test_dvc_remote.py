"""Results shared through a DVC remote (README, Sharing results): push after a run, pull into a fresh clone, verify.

The reviewer's clone gets every stage output from the remote and checks it with ``python -m pipeline.verify``;
no stage runs there (no stage means no MLflow run: the clone's store is never even created). The same sequence
runs against a local folder and against an S3-compatible object store (moto's server on a free local port).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import pipeline_env

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."
FIGURE = "results/eval_titok/reconstructions.png"  # a DVC-cached output, not in git: only the remote has it
BUCKET = "tokenizer-repro"
# Dummy credentials (moto accepts any); kept out of git with `dvc remote modify --local`, as the README says.
S3_CREDENTIALS = (("access_key_id", "testing-key-id"), ("secret_access_key", "testing-secret"))


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=pipeline_env(cwd), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:
    """DVC's locks and state database belong to the checkout they were made in."""
    return ["tmp"] if Path(folder).name == ".dvc" else []


def _push_pull_verify(micro_repro, tmp_path: Path, url: str, options: Sequence[tuple[str, str]] = (),
                      local_options: Sequence[tuple[str, str]] = ()) -> None:
    """Push the micro run to the default remote ``url``, pull it into a fresh clone, verify it there.

    ``options`` are committed with the remote (``.dvc/config``); ``local_options`` (credentials) are set with
    ``--local`` in each checkout and must not reach git.
    """
    ran, review = tmp_path / "ran", tmp_path / "review"
    shutil.copytree(micro_repro.repo, ran, symlinks=True, ignore=_skip_dvc_tmp)  # the shared run stays as it was

    def configure(checkout: Path) -> None:
        for key, value in local_options:
            _run(["dvc", "remote", "modify", "--local", "shared", key, value], checkout)

    # The researcher, after `dvc repro`: a default remote (in .dvc/config, committed), the lock in git, the
    # outputs in the remote.
    _run(["dvc", "remote", "add", "-d", "shared", url], ran)
    for key, value in options:
        _run(["dvc", "remote", "modify", "shared", key, value], ran)
    configure(ran)
    _run(["git", "add", "-A"], ran)
    _run(["git", "commit", "-qm", "results of the micro run"], ran)
    assert not _run(["git", "status", "--porcelain"], ran).stdout.strip(), "the run left files outside git and DVC"
    pushed = _run(["dvc", "push"], ran)
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout

    # The reviewer: a fresh clone knows the remote and has none of the cached outputs (nor the credentials).
    _run(["git", "clone", "-q", str(ran), str(review)], tmp_path)
    config = (review / ".dvc" / "config").read_text()
    assert "remote = shared" in config
    assert not (review / ".dvc" / "config.local").exists()
    assert not any(value in config for _, value in local_options), "credentials were committed"
    assert not (review / FIGURE).exists()
    configure(review)
    pulled = _run(["dvc", "pull"], review)
    assert "Running stage" not in pulled.stdout + pulled.stderr
    assert (review / FIGURE).read_bytes() == (ran / FIGURE).read_bytes()
    assert UP_TO_DATE in _run(["dvc", "status"], review).stdout

    _run([sys.executable, "-m", "pipeline.verify"], review)
    assert UP_TO_DATE in _run(["dvc", "status"], review).stdout
    assert not (review / "mlflow.db").exists(), "a stage ran in the reviewer's clone (it opened an MLflow run)"


def test_a_reviewer_pulls_the_results_and_verifies_them_without_running_a_stage(micro_repro, tmp_path):
    _push_pull_verify(micro_repro, tmp_path, str(tmp_path / "remote"))


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server (moto) on a free local port with an empty bucket; stopped even if the test fails."""
    import boto3  # a dev dependency (with moto[server]), like pytest itself
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        keys = dict(S3_CREDENTIALS)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=keys["access_key_id"],
                     aws_secret_access_key=keys["secret_access_key"]).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def test_the_same_through_an_s3_compatible_object_store(micro_repro, tmp_path, s3_endpoint):
    _push_pull_verify(micro_repro, tmp_path, f"s3://{BUCKET}/results", options=[("endpointurl", s3_endpoint)],
                      local_options=S3_CREDENTIALS)
