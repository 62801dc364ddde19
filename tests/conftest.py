"""Shared test set-up: no network, quiet DVC, and a scratch copy of the repository for pipeline runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TORCH_HOME", str(ROOT / ".pytest_cache" / "torch-home-empty"))


def repo_files() -> list[str]:
    """Files a fresh clone would have: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    files = [f for f in out.split("\0") if f and (ROOT / f).is_file()]
    # Outputs of an earlier run in this checkout are not part of a clone.
    return [f for f in files if not f.startswith("results/") or f == "results/README.md"]


def pipeline_env(tmp: Path) -> dict[str, str]:
    """Environment for running the pipeline's commands in a scratch repo with this interpreter."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["PYTHONPATH"] = str(tmp)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("PIPELINE_INVOCATION", None)
    return env


def make_scratch_repo(dest: Path, profile: str = "micro") -> Path:
    """Copy the project into ``dest`` as a fresh git+DVC repo configured with ``profile``."""
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    env = pipeline_env(dest)
    run = dict(cwd=dest, env=env, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run([sys.executable, "-m", "pipeline", "configure", profile], **run)
    subprocess.run(["git", "add", "-A"], **run)
    subprocess.run(["git", "commit", "-qm", "scratch"], **run)
    return dest


@pytest.fixture()
def scratch_repo(tmp_path):
    """A scratch copy of the repository configured with the micro profile."""
    return make_scratch_repo(tmp_path / "repo")
