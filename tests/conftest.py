"""Shared test set-up: no network, quiet DVC, and a scratch copy of the repository for pipeline runs."""

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TORCH_HOME", str(ROOT / ".pytest_cache" / "torch-home-empty"))


# A tiny open_clip model config for tests (random init, builds offline in a fraction of a second).
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def demo_params(overrides: dict | None = None, *sets: str, source: str = "test"):
    """The demo profile with ``overrides`` merged in and ``sets`` (``"a.b.c=value"``) applied, validated.

    What ``configure demo --set ...`` would write: a test names only the keys it changes, and a nested
    key (``{"train_titok": {"stage1": {"steps": 3}}}``) keeps its siblings' demo values. Through
    pipeline.profiles' own functions, so the schema's defaults need not be the demo's values.
    """
    from pipeline import params, profiles

    raw = profiles.resolve_profile("demo")
    if overrides:
        raw = profiles.deep_merge(raw, copy.deepcopy(overrides))
    for assignment in sets:
        profiles.set_dotted(raw, assignment)
    return params.validate(raw, source)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine: more threads only add contention."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def repo_files() -> list[str]:
    """Files a fresh clone would have: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    files = [f for f in out.split("\0") if f and (ROOT / f).is_file()]
    # Outputs of an earlier run in this checkout are not part of a clone.
    return [f for f in files if not f.startswith("results/") or f in ("results/README.md", "results/sweep/README.md")]


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


@dataclass(frozen=True)
class MicroRun:
    """The micro pipeline after one ``dvc repro``: the scratch repo and the parameters each stage read."""

    repo: Path
    reads: Path  # <stage>.json: the keys the stage read (pipeline/param_reads.py)


@pytest.fixture(scope="session")
def micro_repro(tmp_path_factory) -> MicroRun:
    """The micro pipeline run once by ``dvc repro`` (minutes), shared by every test that only reads the result.

    Tests must not change ``repo``: copy it (``shutil.copytree``) to commit, push or rerun anything.
    """
    from pipeline.param_reads import ENV

    base = tmp_path_factory.mktemp("micro-repro")
    repo, reads = make_scratch_repo(base / "repo"), base / "reads"
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env={**pipeline_env(repo), ENV: str(reads)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"micro dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return MicroRun(repo, reads)


def _close(a, b, path: str, rel: float, diffs: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            diffs.append(f"{path}: keys {sorted(set(a) ^ set(b))}")
        for k in set(a) & set(b):
            _close(a[k], b[k], f"{path}.{k}", rel, diffs)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]", rel, diffs)
    elif isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        if not math.isclose(a, b, rel_tol=rel, abs_tol=1e-6):
            diffs.append(f"{path}: {a} != {b}")
    elif a != b:
        diffs.append(f"{path}: {a!r} != {b!r}")


def assert_same_results(a: Path, b: Path, rel: float = 1e-3) -> None:
    """Two finished runs of the pipeline agree: same outputs, identical data, equal metrics.

    The prepared data must be byte-identical. Metrics must agree to ``rel``: with the thread count
    pinned (pipeline/__main__.py) CPU training is bitwise reproducible, and the tolerance only
    absorbs what a different BLAS path could change; the report is left out (it cites run ids).
    """
    locks = [yaml.safe_load((r / "dvc.lock").read_text())["stages"] for r in (a, b)]
    outs = [{o["path"]: o["md5"] for name, st in lk.items() if name != "report" for o in st.get("outs", [])}
            for lk in locks]
    assert set(outs[0]) == set(outs[1]), f"different outputs: {set(outs[0]) ^ set(outs[1])}"
    prepared = [p for p in outs[0] if p.endswith("/prepared")]
    assert prepared and all(outs[0][p] == outs[1][p] for p in prepared), "prepared data differs"
    diffs: list[str] = []
    # metrics.json is the headline of details.json (the full record): both, so nothing goes unchecked
    for path in sorted(p for p in outs[0] if p.endswith(("metrics.json", "details.json"))):
        _close(json.loads((a / path).read_text()), json.loads((b / path).read_text()), path, rel, diffs)
    assert not diffs, "metrics differ:\n" + "\n".join(diffs[:40])
    # (the training curves hold images/s: they differ between runs by design)
    byte_diffs = sorted(p for p in outs[0] if outs[0][p] != outs[1][p])
    if byte_diffs:
        print(f"outputs equal in metrics but not byte-identical: {byte_diffs}")


def attention_maps(run) -> list:
    """The softmax attention (B, heads, L, L) of every ``vit.Attention`` call made by ``run()``, in order."""
    import torch

    import pipeline.models.vit as vit

    seen, sdpa = [], vit.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1))
        return sdpa(q, k, v, *args, **kwargs)

    vit.F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            run()
    finally:
        vit.F.scaled_dot_product_attention = sdpa
    return seen
