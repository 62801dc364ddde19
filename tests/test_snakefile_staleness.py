"""Snakemake reruns what DVC calls stale, and commits to dvc.lock only what it rebuilt.

A two-stage DVC project whose stages copy a parameter into their outputs runs with the project's
Snakefile. The sequence of issue 16: `dvc repro`, a parameter change, `snakemake`; before the fix
Snakemake judged by file times, reran nothing, and its `dvc commit -f` recorded the new parameter
against the old output.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, pipeline_env

pytestmark = pytest.mark.slow

# Each stage writes the parameters it tracks (and its input) into its output.
WRITE = """import sys, yaml
p = yaml.safe_load(open("params.yaml"))
stage = sys.argv[1]
text = {"first": lambda: str(p["a"]["n"]),
        "second": lambda: open("first.txt").read() + "-" + str(p["b"]["m"]),
        "other": lambda: str(p["c"]["k"])}[stage]()
open(stage + ".txt", "w").write(text)
"""
DVC_YAML = {"stages": {
    "first": {"cmd": "python write.py first", "deps": ["write.py"], "params": ["a.n"], "outs": ["first.txt"]},
    "second": {"cmd": "python write.py second", "deps": ["write.py", "first.txt"], "params": ["b.m"],
               "outs": ["second.txt"]},
    "other": {"cmd": "python write.py other", "deps": ["write.py"], "params": ["c.k"], "outs": ["other.txt"]},
}}


def _run(args, cwd):
    proc = subprocess.run(args, cwd=cwd, env=pipeline_env(cwd), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _set(repo: Path, key: str, sub: str, value: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[key][sub] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def _lock_param(repo: Path, stage: str, key: str):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"][stage]["params"]["params.yaml"][key]


@pytest.fixture()
def project(tmp_path):
    repo = tmp_path / "proj"
    repo.mkdir()
    shutil.copy2(ROOT / "Snakefile", repo / "Snakefile")
    (repo / "envs").mkdir()
    shutil.copy2(ROOT / "envs" / "pipeline.yaml", repo / "envs" / "pipeline.yaml")  # the rules' conda env
    (repo / "params.yaml").write_text(yaml.safe_dump({"a": {"n": 16}, "b": {"m": 1}, "c": {"k": 5}}))
    (repo / "write.py").write_text(WRITE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        _run(cmd, repo)
    _run(["dvc", "repro"], repo)
    return repo


def _snakemake(repo: Path, *targets: str) -> str:
    return _run([sys.executable, "-m", "snakemake", "--cores", "1", *targets], repo)


def test_a_parameter_changed_after_dvc_repro_is_rebuilt_before_the_commit(project):
    _set(project, "a", "n", 8)
    _snakemake(project)
    assert (project / "first.txt").read_text() == "8"
    assert (project / "second.txt").read_text() == "8-1"  # downstream of the rebuilt stage reran too
    assert _lock_param(project, "first", "a.n") == 8
    assert "up to date" in _run(["dvc", "status"], project)
    assert "Nothing to be done" in _snakemake(project, "-n")


def test_a_stale_stage_outside_the_targets_is_neither_run_nor_committed(project):
    _set(project, "a", "n", 8)
    _set(project, "c", "k", 7)
    _snakemake(project, "other.txt")
    assert (project / "other.txt").read_text() == "7"
    assert _lock_param(project, "other", "c.k") == 7
    assert (project / "first.txt").read_text() == "16"
    assert _lock_param(project, "first", "a.n") == 16  # not rebuilt, so not committed
    status = _run(["dvc", "status"], project)
    assert "first" in status and "other" not in status
