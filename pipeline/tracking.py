"""MLflow tracking: every stage is one MLflow run.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set (e.g. ``http://host:5000`` for many SLURM jobs sharing one
``mlflow server``), otherwise ``sqlite:///<repo>/mlflow.db``, where ``<repo>`` is the checkout DVC runs
for (``DVC_ROOT``: ``dvc exp run --temp`` and ``--queue`` record into the workspace's store, and their
runs carry the tags ``dvc.exp_name`` and ``dvc.exp_baseline_rev``). Runs of one pipeline invocation share the
tag ``pipeline.invocation``: taken from ``PIPELINE_INVOCATION`` when the launcher sets it (the
Snakefile does), otherwise derived from the ``dvc repro`` / ``snakemake`` process that started the
stage, so that all stages of one ``dvc repro`` are grouped.

On success every run also gets the metric ``seconds`` (wall time of the stage body) and one tag
``dvc.md5.<path>`` per file output that dvc.yaml declares for the stage (metrics, plots, plain file
outs), holding the file's md5 as dvc.lock records it: :func:`runs_matching_lock`, which the report
calls, uses them to name the run that produced the outputs in dvc.lock, not merely the latest one.

The experiment carries MLflow's experiment-type tag for model training (``mlflow.experimentKind``:
``custom_model_development``), so the UI opens it on its runs. ``python -m pipeline <stage>`` runs the
stage inside :func:`stage_output_logged`: everything the stage printed, on stdout and stderr, is
attached to its run as the artifact ``logs/<stage>.log``; figures are logged by the stages themselves.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from pipeline.dvcfile import declared_params, output_digests
from pipeline.errors import InputError
from pipeline.io import MISSING, flatten, lookup
from pipeline.param_reads import unwrap

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "tokenizer-repro"
OUTPUT_TAG = "dvc.md5."
ARTIFACTS = "mlartifacts"  # the artifact folder beside a local sqlite store
# MLflow 3's experiment type (the UI's experiment-type selector): set, the UI opens the experiment on its
# runs table; unset, the UI infers the type from what the experiment holds and lets the user pick it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
LOG_ARTIFACT_DIR = "logs"  # a stage's output is the run's artifact logs/<stage>.log

# (run id, tracking URI) of every run stage_run opened in this process, for stage_output_logged.
_OPENED_RUNS: list[tuple[str, str]] = []


def tracking_uri() -> str:
    """The MLflow tracking URI in effect."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root() / 'mlflow.db'}"


def store_root() -> Path:
    """The checkout whose ``mlflow.db`` records the run: the repository DVC runs the stage for.

    ``dvc exp run --temp`` / ``--queue`` run a stage in a temporary copy of the repository and set
    ``DVC_ROOT`` to the original; its runs belong in the original's store, not in a copy that is deleted.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


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


def run_tags(stage: str) -> dict[str, str]:
    """The provenance tags attached to every stage run."""
    tags = {
        "git.commit": git_commit(),
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        "host": socket.gethostname(),
        "pipeline.invocation": invocation_id(),
        "pipeline.stage": stage,
    }
    for tag, var in (("dvc.exp_name", "DVC_EXP_NAME"), ("dvc.exp_baseline_rev", "DVC_EXP_BASELINE_REV")):
        if os.environ.get(var):  # set by `dvc exp run`
            tags[tag] = os.environ[var]
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
        tags["slurm.array_task_id"] = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    return tags


def hardware() -> dict[str, Any]:
    """CPU model, cores, RAM and the torch / CUDA devices of this machine."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_model": platform.processor() or "unknown", "cpu_cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else "not available"
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        info["torch"] = "not installed"
    return info


class StageRun:
    """A thin handle on the active MLflow run, so stage code never imports mlflow itself."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-finite and non-numeric values are skipped)."""
        import mlflow

        clean = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, int | float)}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_curve(self, rows: Sequence[Mapping[str, Any]], prefix: str = "") -> None:
        """Log a training curve in one call: every numeric value of every row as ``<prefix><name>`` at the row's
        ``step``, as :meth:`log_metrics` would row by row (one store round trip instead of one per row)."""
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        timestamp = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}{k}", float(v), timestamp, int(row["step"]))
                   for row in rows for k, v in flatten(row).items() if k != "step" and isinstance(v, int | float)]
        if metrics:
            MlflowClient().log_batch(self.run_id, metrics=metrics)  # the client splits it into allowed sizes

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach extra tags to the run."""
        import mlflow

        mlflow.set_tags(dict(tags))


def relocate_store(db: Path, experiment: str) -> None:
    """Point ``experiment``'s artifact location (and its runs') at the ``mlartifacts`` beside ``db``.

    MLflow stores an absolute artifact location, fixed when the experiment is created; a checkout that
    was moved or copied (its ``mlflow.db`` and ``mlartifacts`` with it) would otherwise keep writing its
    artifacts into the old folder. The rewrite only touches locations of the form ``<dir>/mlartifacts``.
    """
    import sqlite3

    new = (db.parent / ARTIFACTS).as_uri()
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?",
                          (experiment,)).fetchone()
        if row is None or row[1] == new or not row[1].startswith("file://") or not row[1].endswith("/" + ARTIFACTS):
            return
        exp_id, old = row
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
        con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                    (new, len(old) + 1, exp_id, len(old), old))


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Stop within seconds, with one line, when a tracking server cannot be reached.

    MLflow itself retries an unreachable server for minutes and then prints a long traceback; a stage
    should fail before its work with what to do.
    """
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise InputError(f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable ({err}). "
                         "Start it (`mlflow server ...`, see README, Tracking) or unset MLFLOW_TRACKING_URI to "
                         "use the local mlflow.db") from None


def declared_values(stage: str, params: Any) -> dict[str, Any]:
    """``{key: value}`` of the parameters dvc.yaml declares for ``stage`` (``params``: a ``Params`` or a
    plain mapping), sections flattened."""
    dump = params if isinstance(params, Mapping) else unwrap(params).model_dump(mode="json")
    values = {key: lookup(dump, key) for key in declared_params(stage)}
    return flatten({k: "<not in params.yaml>" if v is MISSING else v for k, v in values.items()})


@contextmanager
def stage_run(stage: str, params: Any) -> Iterator[StageRun]:
    """Open an MLflow run for ``stage`` logging the parameters its dvc.yaml entry declares and the provenance tags.

    ``params`` is the stage's ``Params``: exactly the keys DVC watches for the stage are logged, so the
    MLflow run and dvc.lock record the same parameters.
    """
    import mlflow

    uri = tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    try:
        if uri.startswith("sqlite:///"):
            # Keep artifacts beside the database rather than in whatever folder the stage runs from.
            artifacts = Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS
            if mlflow.get_experiment_by_name(name) is None:
                try:
                    mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
                except mlflow.exceptions.MlflowException:
                    pass  # created concurrently by another stage
            else:
                relocate_store(Path(uri.removeprefix("sqlite:///")), name)
        experiment = mlflow.set_experiment(name)
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # set once: a type chosen later in the UI is kept
            mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as err:  # noqa: BLE001 - whatever the store raises, the stage stops with one line
        raise InputError(f"the MLflow store {uri} cannot be used ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}). Repair or move it away, or point "
                         "MLFLOW_TRACKING_URI at another store") from None
    tags = run_tags(stage)
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        _OPENED_RUNS.append((run.info.run_id, uri))
        declared = declared_values(tags["dvc.stage"], params)
        flat = {k: ("null" if v is None else str(v))[:6000] for k, v in declared.items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))
        start = time.perf_counter()
        yield StageRun(run.info.run_id)
        mlflow.log_metric("seconds", time.perf_counter() - start)
        mlflow.set_tags({OUTPUT_TAG + path: md5 for path, md5 in output_digests(tags["dvc.stage"]).items()})


def runs_matching_lock(stages: list[str], lock_outs: dict[str, dict[str, str | None]]
                       ) -> tuple[dict[str, dict], str | None]:
    """The newest finished run per stage (tag ``pipeline.stage``) that produced dvc.lock's outputs.

    ``lock_outs`` is ``{stage: {out path: md5}}`` as :func:`pipeline.dvcfile.read_lock` returns it. A run
    qualifies when the ``dvc.md5.<path>`` tags :func:`stage_run` wrote equal dvc.lock's md5 for every file
    output of the stage (``matched: True``); a stage with no file output in the lock (directories only,
    e.g. ``prepare``) gets its newest run (``matched: False``); a stage none of whose runs qualify gets
    ``run_id: None``. Returns ``({}, why)`` when MLflow is unavailable.
    """
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}, f"not recorded (no MLflow database at {uri.removeprefix('sqlite:///')})"
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return {}, "not recorded (mlflow is not installed)"
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
        if exp is None:
            return {}, "not recorded (no MLflow experiment)"
        runs = {}
        for stage in stages:
            files = {path: md5 for path, md5 in (lock_outs.get(stage) or {}).items()
                     if md5 and not md5.endswith(".dir")}  # DVC marks directory hashes with ".dir"
            query = " and ".join([f"tags.`pipeline.stage` = '{stage}'", "attributes.status = 'FINISHED'",
                                  *(f"tags.`{OUTPUT_TAG}{path}` = '{md5}'" for path, md5 in files.items())])
            found = client.search_runs([exp.experiment_id], filter_string=query, max_results=1,
                                       order_by=["attributes.start_time DESC"])
            if found:
                r = found[0]
                runs[stage] = {"run_id": r.info.run_id, "matched": bool(files),
                               "seconds": r.data.metrics.get("seconds"), "host": r.data.tags.get("host"),
                               "invocation": r.data.tags.get("pipeline.invocation")}
            elif files:
                runs[stage] = {"run_id": None, "matched": False, "seconds": None, "host": None,
                               "invocation": None}
        return runs, None
    except Exception as err:  # noqa: BLE001 - any tracking failure only means "not recorded"
        return {}, f"not recorded (MLflow: {type(err).__name__}: {str(err)[:200]})"


class _Tee:
    """A text stream that writes to ``stream`` and copies every write into ``copy``.

    Anything else (``isatty``, ``fileno``, ``encoding``, ``buffer``) is the original stream's, so progress
    bars and libraries that ask about the terminal behave as without the copy.
    """

    def __init__(self, stream: TextIO, copy: TextIO) -> None:
        self._stream, self._copy = stream, copy

    def write(self, text: str) -> int:
        if not self._copy.closed:  # a library may keep a reference to the tee after the stage ends
            self._copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        if not self._copy.closed:
            self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def stage_output_logged(stage: str) -> Iterator[None]:
    """Copy what the stage writes to ``sys.stdout`` / ``sys.stderr`` into its MLflow run(s), as ``logs/<stage>.log``.

    Wraps the whole stage (``python -m pipeline <stage>``), not only the ``stage_run`` block, so the lines
    printed after the run's block (the stage's summary) and the traceback of a stage that crashed are in
    the log too; the log is attached to the finished run. Under Snakemake the same text is also in
    ``logs/<stage>.log`` of the checkout; under ``dvc repro`` this is its only copy. Output written to the
    file descriptors directly (C extensions, subprocesses) is not copied.
    """
    first = len(_OPENED_RUNS)
    with tempfile.TemporaryDirectory(prefix="stage-log-") as tmp:
        path = Path(tmp) / f"{stage}.log"
        try:
            with path.open("w", encoding="utf-8", errors="replace") as log:
                streams = sys.stdout, sys.stderr
                sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
                try:
                    yield
                except Exception:
                    log.write(traceback.format_exc())
                    raise
                finally:
                    sys.stdout, sys.stderr = streams
        finally:  # a failed stage's log (its traceback last) is the one most worth keeping
            for run_id, uri in _OPENED_RUNS[first:]:
                _attach_log(run_id, uri, path)


def _attach_log(run_id: str, uri: str, path: Path) -> None:
    """Attach ``path`` to the finished run; a store that fails now costs the log, not the stage's result."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).log_artifact(run_id, str(path), LOG_ARTIFACT_DIR)
    except Exception as err:  # noqa: BLE001 - the outputs are written and recorded; only the log copy is lost
        print(f"warning: the stage's log could not be attached to MLflow run {run_id} "
              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", file=sys.stderr)
