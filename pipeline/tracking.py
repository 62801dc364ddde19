"""MLflow tracking: every stage is one MLflow run.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set (e.g. ``http://host:5000`` for many SLURM jobs sharing one
``mlflow server``), otherwise ``sqlite:///<repo>/mlflow.db``. Runs of one pipeline invocation share the
tag ``pipeline.invocation``: taken from ``PIPELINE_INVOCATION`` when the launcher sets it (the
Snakefile does), otherwise derived from the ``dvc repro`` / ``snakemake`` process that started the
stage, so that all stages of one ``dvc repro`` are grouped.

On success every run also gets the metric ``seconds`` (wall time of the stage body) and one tag
``dvc.md5.<path>`` per file output that dvc.yaml declares for the stage (metrics, plots, plain file
outs), holding the file's md5 as dvc.lock records it: the report uses them to name the run that
produced the outputs in dvc.lock, not merely the latest one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.dvcfile import output_digests

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "tokenizer-repro"
OUTPUT_TAG = "dvc.md5."


def tracking_uri() -> str:
    """The MLflow tracking URI in effect."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit, with ``-dirty`` when the work tree has changes; ``unknown`` outside git."""
    cwd = cwd or Path.cwd()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _launcher_process() -> str | None:
    """``pid:starttime`` of the nearest ancestor that is ``dvc`` or ``snakemake`` (Linux /proc only)."""
    pid = os.getppid()
    for _ in range(8):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if any(name in cmdline for name in ("dvc ", "/dvc", "snakemake")):
            start_time = stat.rsplit(")", 1)[1].split()[19]
            return f"{pid}:{start_time}"
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return None
    return None


def invocation_id() -> str:
    """An id shared by all stages of one pipeline invocation."""
    if os.environ.get("PIPELINE_INVOCATION"):
        return os.environ["PIPELINE_INVOCATION"]
    launcher = _launcher_process() or f"{os.getpid()}"
    return hashlib.sha1(f"{socket.gethostname()}:{launcher}".encode()).hexdigest()[:12]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_tags(stage: str) -> dict[str, str]:
    """The provenance tags attached to every stage run."""
    tags = {
        "git.commit": git_commit(),
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        "host": socket.gethostname(),
        "pipeline.invocation": invocation_id(),
        "pipeline.stage": stage,
    }
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
        tags["slurm.array_task_id"] = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    return tags


class StageRun:
    """A thin handle on the active MLflow run, so stage code never imports mlflow itself."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-finite and non-numeric values are skipped)."""
        import mlflow

        clean = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, int | float)}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach extra tags to the run."""
        import mlflow

        mlflow.set_tags(dict(tags))


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any]) -> Iterator[StageRun]:
    """Open an MLflow run for ``stage`` logging the flattened ``params`` and the provenance tags."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        # Keep artifacts beside the database rather than in whatever folder the stage runs from.
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        try:
            mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another stage
    mlflow.set_experiment(name)
    tags = run_tags(stage)
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = {k: ("null" if v is None else str(v))[:6000] for k, v in _flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))
        start = time.perf_counter()
        yield StageRun(run.info.run_id)
        mlflow.log_metric("seconds", time.perf_counter() - start)
        mlflow.set_tags({OUTPUT_TAG + path: md5 for path, md5 in output_digests(tags["dvc.stage"]).items()})
