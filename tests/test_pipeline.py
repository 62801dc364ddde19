"""The whole pipeline on the micro profile: dvc repro, its no-op rerun, Snakemake parity and the DAG."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, pipeline_env

pytestmark = pytest.mark.slow


def _run(args, cwd, env=None, **kw):
    proc = subprocess.run(args, cwd=cwd, env=env or pipeline_env(cwd), capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _stage_names(repo: Path) -> set[str]:
    out = _run(["dvc", "stage", "list", "--name-only"], repo).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def _undeclared_reads(repo: Path, reads: Path) -> list[str]:
    """``stage: key`` for every parameter a stage read that its dvc.yaml entry does not declare."""
    from pipeline.dvcfile import declared_params, interpolated_keys

    problems = []
    for path in sorted(reads.glob("*.json")):
        declared = [*declared_params(path.stem, repo), *interpolated_keys(path.stem, repo)]
        for key in json.loads(path.read_text()):
            if not any(key == d or key.startswith(d + ".") for d in declared):
                problems.append(f"{path.stem}: reads {key!r}; add `- {key}` to its params in dvc.yaml")
    return problems


def test_dvc_repro_then_noop_rerun(micro_repro):
    # micro_repro ran `dvc repro` with every stage recording the parameters it reads (pipeline/param_reads.py)
    scratch_repo, reads = micro_repro.repo, micro_repro.reads
    stages = _stage_names(scratch_repo)
    assert {p.stem for p in reads.glob("*.json")} == stages
    assert not _undeclared_reads(scratch_repo, reads), "\n".join(_undeclared_reads(scratch_repo, reads))
    lock = yaml.safe_load((scratch_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == stages
    start = time.monotonic()
    second = _run(["dvc", "repro"], scratch_repo)
    elapsed = time.monotonic() - start
    print(f"second dvc repro: {elapsed:.1f} s")
    assert "Data and pipelines are up to date." in second.stdout + second.stderr
    assert not re.search(r"Running stage", second.stdout)
    assert "Data and pipelines are up to date." in _run(["dvc", "status"], scratch_repo).stdout


def test_snakemake_run_matches_dvc_and_commit_leaves_status_clean(micro_repro, tmp_path):
    from conftest import assert_same_results, make_scratch_repo

    # the session's `dvc repro` of the micro profile, copied because this test changes it further down
    by_dvc = Path(shutil.copytree(micro_repro.repo, tmp_path / "dvc", symlinks=True))
    by_smk = make_scratch_repo(tmp_path / "smk")
    _run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2"], by_smk)
    status = _run(["dvc", "status"], by_smk)
    assert "Data and pipelines are up to date." in status.stdout
    assert_same_results(by_dvc, by_smk)
    rerun = _run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2", "-n"], by_smk)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr

    # Issue 16's sequence on the real pipeline: built by `dvc repro`, a parameter changed, then Snakemake.
    # It must rebuild the stage (not only the report) before its commit, and verify must pass.
    figure = by_dvc / "results" / "eval_titok" / "reconstructions.png"
    before = figure.read_bytes()
    _run([sys.executable, "-m", "pipeline", "configure", "micro", "--set", "eval_titok.grid_images=2"], by_dvc)
    _run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2"], by_dvc)
    assert figure.read_bytes() != before  # the 2-image grid, not the stale 4-image one
    assert "Data and pipelines are up to date." in _run(["dvc", "status"], by_dvc).stdout
    _run([sys.executable, "-m", "pipeline.verify"], by_dvc)


def _dvc_edges(repo: Path) -> tuple[set[str], set[tuple[str, str]]]:
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        graph = r.index.graph
        name = {st: st.addressing for st in graph.nodes}
        nodes = set(name.values())
        # networkx edge (a, b) in DVC's graph means a depends on b.
        edges = {(name[b], name[a]) for a, b in graph.edges}
    return nodes, edges


def _snakemake_edges(repo: Path) -> tuple[set[str], set[tuple[str, str]]]:
    dot = _run([sys.executable, "-m", "snakemake", "--forceall", "--rulegraph", "--quiet", "all"], repo).stdout
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"]+)\"", dot, flags=re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}
    nodes = set(labels.values()) - {"all"}
    edges = {(a, b) for a, b in edges if "all" not in (a, b)}
    to_stage = {n: n.replace("__", "@") for n in nodes}
    return set(to_stage.values()), {(to_stage[a], to_stage[b]) for a, b in edges}


def test_snakemake_and_dvc_have_the_same_dag():
    dvc_nodes, dvc_edges = _dvc_edges(ROOT)
    smk_nodes, smk_edges = _snakemake_edges(ROOT)
    assert smk_nodes == dvc_nodes
    assert smk_edges == dvc_edges
    dry = _run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--quiet", "rules"], ROOT).stdout
    stage_list = _stage_names(ROOT)
    assert stage_list == dvc_nodes
    for stage in stage_list:
        assert stage.replace("@", "__") in dry


def test_slurm_profile_resolves_resources_without_slurm():
    dry = _run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "-n", "--forceall"], ROOT)
    assert "Job stats" in dry.stdout + dry.stderr
