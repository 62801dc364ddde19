"""Results shared through a DVC remote (README, Sharing results): push after a run, pull into a fresh clone, verify.

The reviewer's clone gets every stage output from the remote and checks it with ``python -m pipeline.verify``;
no stage runs there (no stage means no MLflow run: the clone's store is never even created).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pipeline_env

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."
FIGURE = "results/eval_titok/reconstructions.png"  # a DVC-cached output, not in git: only the remote has it


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=pipeline_env(cwd), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:
    """DVC's locks and state database belong to the checkout they were made in."""
    return ["tmp"] if Path(folder).name == ".dvc" else []


def test_a_reviewer_pulls_the_results_and_verifies_them_without_running_a_stage(micro_repro, tmp_path):
    ran, remote, review = tmp_path / "ran", tmp_path / "remote", tmp_path / "review"
    shutil.copytree(micro_repro.repo, ran, symlinks=True, ignore=_skip_dvc_tmp)  # the shared run stays as it was

    # The researcher, after `dvc repro`: a default remote (in .dvc/config, committed), the lock in git, the
    # outputs in the remote.
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], ran)
    _run(["git", "add", "-A"], ran)
    _run(["git", "commit", "-qm", "results of the micro run"], ran)
    assert not _run(["git", "status", "--porcelain"], ran).stdout.strip(), "the run left files outside git and DVC"
    pushed = _run(["dvc", "push"], ran)
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout

    # The reviewer: a fresh clone knows the remote and has none of the cached outputs.
    _run(["git", "clone", "-q", str(ran), str(review)], tmp_path)
    assert "remote = shared" in (review / ".dvc" / "config").read_text()
    assert not (review / FIGURE).exists()
    pulled = _run(["dvc", "pull"], review)
    assert "Running stage" not in pulled.stdout + pulled.stderr
    assert (review / FIGURE).read_bytes() == (ran / FIGURE).read_bytes()
    assert UP_TO_DATE in _run(["dvc", "status"], review).stdout

    _run([sys.executable, "-m", "pipeline.verify"], review)
    assert UP_TO_DATE in _run(["dvc", "status"], review).stdout
    assert not (review / "mlflow.db").exists(), "a stage ran in the reviewer's clone (it opened an MLflow run)"
