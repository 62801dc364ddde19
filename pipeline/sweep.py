"""Seed sweeps: ``python -m pipeline.sweep --seeds 0 1 2 [--stages STAGE ...] [--jobs J | --slurm]``.

One DVC experiment per seed (``dvc exp run --queue -S seed=N [STAGE ...]``), run by DVC's own queue,
then one summary of their headline metrics (``results/sweep/summary.json`` and ``summary.md``): per
metric the mean, the sample standard deviation (n - 1), min, max, n and every seed's value with the
experiment (name, commit, dvc.lock sha256) it came from. The experiments stay in ``dvc exp show``;
nothing is applied to the workspace, so no output in dvc.lock changes.

Who works the queue:

- here, ``J`` workers on this machine (``dvc queue start --jobs J``); the command waits and writes the
  summary;
- with ``--slurm``, one SLURM job per seed, each running one DVC queue worker in the foreground
  (``dvc exp queue-worker``, what ``dvc queue start`` spawns) with the resources of the experiment's
  stages from ``params.yaml``, and one job after them (``--dependency=afterany``) that writes the summary
  with ``--collect SWEEP_ID`` (which can also be run by hand). The command returns once they are
  submitted. Not ``dvc exp run --temp`` per job: temp-dir runs share one stash, so concurrent ones could
  take each other's experiment.

Which stages a summary covers: the chosen stages and everything upstream of them (what ``dvc repro``
of the targets keeps up to date in each experiment). The experiment's other metrics files are the
baseline's, left in its commit unrebuilt, and never enter the summary.

One summary never mixes experiments whose code or params differ except in the seed: per covered
stage, its params in the experiment's dvc.lock (``seed`` aside) and the md5 of every dep no stage
produces (code, references) must be equal across seeds, or the sweep stops naming the differing key.
That record (:func:`fingerprint`) is in the summary, and the report shows the spread only when the
workspace's dvc.lock has the same one (:mod:`pipeline.report.spread`).

This is a separate entry point, like ``pipeline.verify``, not a subcommand of ``python -m pipeline``:
``pipeline/__main__.py`` is a dependency of every stage, and a sweep changes no stage's behaviour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import dvcfile
from pipeline.errors import InputError
from pipeline.io import flatten, write_json, write_text
from pipeline.layout import sweep_dir, sweep_summary_json, sweep_summary_md
from pipeline.params import PARAMS_FILE, Params, Resources, load

SEED_KEY = "seed"
POLL_SECONDS = 5.0
SLURM_LOGS = "logs"  # SLURM logs of a sweep: logs/sweep-<id>/ (beside the stages' logs/<stage>.log)


class SweepError(InputError):
    """A sweep that cannot run, or experiments that cannot be summarised together; the message says why."""


@dataclass(frozen=True)
class Experiment:
    """One finished experiment of a sweep: where its numbers come from."""

    name: str
    seed: int
    rev: str  # the experiment's commit
    baseline_rev: str
    lock: dict  # its dvc.lock
    lock_sha256: str  # sha256 of its dvc.lock file
    metrics: dict[str, Any]  # {metrics path: parsed file}


# ---------------------------------------------------------------------------------------------------
# the summary (plain values in, no DVC)


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{mean, std, min, max, n}`` of ``values``; ``std`` is the sample standard deviation (n - 1), None for
    one value (no spread can be measured from one seed)."""
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fingerprint(lock: dict, stages: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """What must be equal for two runs of ``stages`` to differ only in the seed, from a dvc.lock.

    Per stage: ``params`` (its params.yaml values, flattened, without ``seed``) and ``deps`` (the md5 of
    every dep that is not an output of a stage: code, references). Deps that are outputs (the prepared
    data, a trained model) differ between seeds by design; their producers are covered stages too.
    """
    entries = lock.get("stages") or {}
    outputs = {o["path"].rstrip("/") for e in entries.values() for o in e.get("outs") or []}

    def produced(path: str) -> bool:
        return any(path == out or path.startswith(out + "/") for out in outputs)

    record = {}
    for stage in stages:
        entry = entries.get(stage) or {}
        params = flatten((entry.get("params") or {}).get("params.yaml") or {})
        params = {k: v for k, v in params.items() if k != SEED_KEY and not k.startswith(SEED_KEY + ".")}
        deps = {d["path"]: d.get("md5") for d in entry.get("deps") or [] if not produced(d["path"].rstrip("/"))}
        record[stage] = {"params": dict(sorted(params.items())), "deps": dict(sorted(deps.items()))}
    return record


def fingerprint_differences(a: dict, b: dict) -> list[str]:
    """Every stage param and dep in which two :func:`fingerprint` records differ, as ``"stage: kind key: a vs b"``."""
    diffs = []
    for stage in sorted(set(a) | set(b)):
        if stage not in a or stage not in b:
            diffs.append(f"{stage}: covered by one side only")
            continue
        for kind in ("params", "deps"):
            x, y = a[stage][kind], b[stage][kind]
            for key in sorted(set(x) | set(y)):
                if x.get(key, "absent") != y.get(key, "absent"):
                    what = "param" if kind == "params" else "dep"
                    diffs.append(f"{stage}: {what} {key}: {json.dumps(x.get(key, 'absent'), default=str)} vs "
                                 f"{json.dumps(y.get(key, 'absent'), default=str)}")
    return diffs


def summarise(sweep_id: str, experiments: Sequence[Experiment], stages: Sequence[str],
              metric_files: dict[str, list[str]]) -> dict:
    """The sweep summary (``summary.json``) of ``experiments``, one per seed, over the covered ``stages``.

    ``metric_files``: each covered stage's DVC metrics files. Raises :class:`SweepError` when two
    experiments differ in anything but the seed (naming the stage and the param or dep), or share a seed.
    """
    if not experiments:
        raise SweepError("no experiment to summarise")
    seeds = [e.seed for e in experiments]
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"two experiments ran the same seed ({seeds}): a spread across seeds needs distinct seeds")
    first = experiments[0]
    record = fingerprint(first.lock, stages)
    for e in experiments[1:]:
        diffs = fingerprint_differences(record, fingerprint(e.lock, stages))
        if diffs:
            raise SweepError(f"experiments {first.name} and {e.name} differ in more than the seed, so they are not "
                             f"one sweep ({first.name} vs {e.name}): " + "; ".join(diffs[:5])
                             + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""))
    metrics: dict[str, dict[str, dict]] = {}
    for stage in stages:
        for path in metric_files.get(stage, []):
            flat = [(e, flatten(e.metrics.get(path) or {})) for e in experiments]
            keys = sorted({k for _, f in flat for k, v in f.items() if _is_number(v)})
            for key in keys:
                values = [{"seed": e.seed, "experiment": e.name, "value": f[key]} for e, f in flat
                          if _is_number(f.get(key))]
                metrics.setdefault(path, {})[key] = {**spread([v["value"] for v in values]), "values": values}
    return {
        "sweep": sweep_id,
        "seeds": seeds,
        "stages": list(stages),
        "std": "sample standard deviation (n - 1); null with one seed",
        "experiments": [{"name": e.name, "seed": e.seed, "rev": e.rev, "baseline_rev": e.baseline_rev,
                         "dvc_lock_sha256": e.lock_sha256} for e in experiments],
        "fingerprint": record,
        "metrics": metrics,
    }


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def to_markdown(summary: dict) -> str:
    """``summary.md``: the experiments, then one table per metrics file (mean, std, min, max, n, each seed)."""
    seeds = summary["seeds"]
    lines = [f"# Seed sweep {summary['sweep']}", "",
             f"Stages covered: {', '.join(summary['stages'])}. Seeds: {', '.join(map(str, seeds))}. "
             f"std: {summary['std']}.", "",
             "| experiment | seed | commit | dvc.lock sha256 | baseline |", "|---|---|---|---|---|"]
    lines += [f"| {e['name']} | {e['seed']} | `{e['rev']}` | `{e['dvc_lock_sha256']}` | `{e['baseline_rev']}` |"
              for e in summary["experiments"]]
    for path, keys in summary["metrics"].items():
        lines += ["", f"## {path}", "",
                  "| metric | mean | std | min | max | n | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---" * (6 + len(seeds)) + "|"]
        for key, s in keys.items():
            by_seed = {v["seed"]: v["value"] for v in s["values"]}
            lines.append(f"| {key} | {_num(s['mean'])} | {_num(s['std'])} | {_num(s['min'])} | {_num(s['max'])} | "
                         f"{s['n']} | " + " | ".join(_num(by_seed.get(seed)) for seed in seeds) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# running the experiments (DVC)


def _dvc(args: list[str], root: Path) -> str:
    # Output through files, not pipes: `dvc queue start` leaves a process holding its stdout and stderr
    # until its workers end, so reading pipes would wait for the workers (for ever if one hangs).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, stdout=out, stderr=err).returncode
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise SweepError(f"`dvc {' '.join(args)}` failed:\n{(stderr or stdout)[-2000:]}")
    return stdout


def _git(args: list[str], root: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Stage:
    """A resolved dvc.yaml stage: its file deps, its outputs and its DVC metrics files."""

    deps: list[str]
    outs: list[str]
    metrics: list[str]


def dvc_graph(root: Path) -> dict[str, Stage]:
    """The stages of ``root``'s dvc.yaml as DVC resolves them, in file order."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {st.addressing: Stage(
            deps=[d.def_path for d in st.deps if d.__class__.__name__ != "ParamsDependency"],
            outs=[o.def_path for o in st.outs], metrics=[o.def_path for o in st.outs if o.metric])
            for st in repo.index.stages}


def covered_stages(graph: dict[str, Stage], targets: Sequence[str]) -> list[str]:
    """``targets`` and every stage upstream of them, in dvc.yaml order (what ``dvc repro targets`` rebuilds)."""
    def under(path: str, out: str) -> bool:
        return path == out or path.startswith(out.rstrip("/") + "/")

    todo, seen = list(targets), set(targets)
    while todo:
        stage = todo.pop()
        for name, other in graph.items():
            if name not in seen and any(under(d, o) for d in graph[stage].deps for o in other.outs):
                seen.add(name)
                todo.append(name)
    return [s for s in graph if s in seen]


def check_request(seeds: Sequence[int], targets: Sequence[str], jobs: int, graph: dict[str, Stage]) -> None:
    """Refuse, before any work, a sweep that cannot run as asked."""
    if not seeds:
        raise SweepError("no seed given: name at least one, e.g. `--seeds 0 1 2`")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise SweepError(f"--seeds {' '.join(map(str, seeds))}: give distinct seeds >= 0")
    unknown = [t for t in targets if t not in graph]
    if unknown:
        raise SweepError(f"unknown stage {', '.join(unknown)} (dvc.yaml has: {', '.join(graph)})")
    if jobs < 1:
        raise SweepError(f"--jobs {jobs}: need at least one worker")


def check_workspace(root: Path) -> None:
    """Refuse a workspace whose state a queued experiment would not carry.

    ``dvc exp run --queue`` stashes the changes to files git tracks, never untracked ones, so each
    experiment would run without them while the summary claimed the workspace's code.
    """
    if not (root / ".git").exists() or not (root / ".dvc").is_dir():
        raise SweepError(f"{root} is not the root of a git and DVC repository (dvc exp needs both)")
    untracked = [f for f in _git(["ls-files", "-o", "--exclude-standard"], root).splitlines() if f]
    if untracked:
        shown = ", ".join(untracked[:10]) + (f" and {len(untracked) - 10} more" if len(untracked) > 10 else "")
        raise SweepError(f"untracked files that a queued experiment would not include: {shown}. "
                         "`git add` (and commit) them, or delete or .gitignore them, then run the sweep again")


def _prepare_store() -> None:
    """Create the MLflow store before the workers start: J stages opening a fresh sqlite store at once race
    on its schema migration and fail."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        MlflowClient(uri).search_experiments(max_results=1)


def _queue_status(root: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {t["name"]: t["status"] for t in repo.experiments.celery_queue.status() if t.get("name")}


def _queue_log(name: str, root: Path) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", "queue", "logs", name], cwd=root, capture_output=True,
                          text=True).stdout


def check_succeeded(names: dict[str, int], states: dict[str, str], root: Path, where: str) -> None:
    """Stop, naming each seed whose experiment did not succeed and its state, with the end of its DVC log.

    ``where``: what else to read (the SLURM job logs).
    """
    failed = [n for n in names if states.get(n) != "Success"]
    for name in failed:
        if states.get(name) == "Failed":
            log = "\n".join(_queue_log(name, root).splitlines()[-20:])
            print(f"--- last lines of `dvc queue logs {name}` ---\n{log}", file=sys.stderr)
    if failed:
        listed = ", ".join(f"seed {names[n]} ({n}): {states.get(n, 'not in the queue')}" for n in failed)
        raise SweepError(f"{len(failed)} of {len(names)} experiments did not succeed ({listed}); no summary "
                         f"written. See `dvc queue status`, `dvc queue logs NAME`{where}")


def wait_for(names: dict[str, int], root: Path) -> None:
    """Show each seed's state as it changes until all have finished; stop naming the seeds that failed."""
    start, shown, finished = time.monotonic(), {}, {"Success", "Failed"}
    while True:
        status = _queue_status(root)
        for name, seed in names.items():
            state = status.get(name, "Queued")
            if shown.get(name) != state:
                shown[name] = state
                print(f"[{time.monotonic() - start:6.0f} s] seed {seed} ({name}): {state}", flush=True)
        if all(shown[n] in finished for n in names):
            break
        time.sleep(POLL_SECONDS)
    check_succeeded(names, shown, root, "")


def collect(names: dict[str, int], root: Path, metric_paths: Sequence[str]) -> list[Experiment]:
    """The finished experiments ``names`` (name: seed), from ``dvc exp show --json`` and their commits."""
    shown = json.loads(_dvc(["exp", "show", "--json"], root))
    found: dict[str, tuple[dict, str]] = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for exp in group.get("revs") or []:
                if exp.get("name") in names:
                    found[exp["name"]] = (exp, baseline["rev"])
    experiments = []
    for name, seed in names.items():
        if name not in found:
            raise SweepError(f"experiment {name} is not in `dvc exp show`")
        exp, baseline = found[name]
        data = exp["data"]
        recorded = data["params"]["params.yaml"]["data"].get(SEED_KEY)
        if recorded != seed:
            raise SweepError(f"experiment {name} ran seed {recorded}, not the {seed} it was queued with")
        lock_text = _git(["show", f"{exp['rev']}:dvc.lock"], root)
        metrics = {p: (data.get("metrics") or {}).get(p, {}).get("data") for p in metric_paths}
        experiments.append(Experiment(name, seed, exp["rev"], baseline, dvcfile.parse_lock(lock_text),
                                      hashlib.sha256(lock_text.encode()).hexdigest(),
                                      {p: m for p, m in metrics.items() if m is not None}))
    return experiments


def sweep_names(sweep_id: str, seeds: Sequence[int]) -> dict[str, int]:
    """The experiment name of each seed of sweep ``sweep_id`` ({name: seed}): ``--collect`` finds them by it."""
    return {f"sweep-{sweep_id}-seed{s}": s for s in seeds}


@dataclass(frozen=True)
class Plan:
    """What a sweep covers, from the workspace: dvc.yaml's stages, the covered ones, the params."""

    graph: dict[str, Stage]
    stages: list[str]
    params: Params


def _plan(root: Path, seeds: Sequence[int], targets: Sequence[str], jobs: int) -> Plan:
    """The checks before any work (params.yaml among them), then what the sweep covers."""
    graph = dvc_graph(root)
    check_request(seeds, targets, jobs, graph)
    return Plan(graph, covered_stages(graph, targets) if targets else list(graph),
                load(root / PARAMS_FILE))


def _queue(root: Path, sweep_id: str, seeds: Sequence[int], targets: Sequence[str],
           stages: Sequence[str]) -> dict[str, int]:
    check_workspace(root)
    _prepare_store()
    names = sweep_names(sweep_id, seeds)
    for name, seed in names.items():
        _dvc(["exp", "run", "--queue", "--name", name, "--set-param", f"{SEED_KEY}={seed}", *targets], root)
        print(f"queued {name}: seed {seed}, stages {', '.join(stages)}", flush=True)
    return names


def write_summary(root: Path, sweep_id: str, names: dict[str, int], plan: Plan) -> Path:
    """Collect the finished experiments ``names``, write ``summary.json`` and ``summary.md``; returns their folder."""
    metric_files = {s: plan.graph[s].metrics for s in plan.stages}
    experiments = collect(names, root, [p for s in plan.stages for p in metric_files[s]])
    summary = summarise(sweep_id, experiments, plan.stages, metric_files)
    out, summary_json, summary_md = (root / f(plan.params) for f in (sweep_dir, sweep_summary_json, sweep_summary_md))
    write_json(summary_json, summary)
    write_text(summary_md, to_markdown(summary))
    print(f"wrote {summary_json} and {summary_md.name}: {sum(len(k) for k in summary['metrics'].values())} "
          f"metrics over seeds {', '.join(map(str, names.values()))}; `dvc repro report` shows their spread")
    return out


def sweep(root: Path, seeds: Sequence[int], targets: Sequence[str], jobs: int) -> Path:
    """Queue and run one experiment per seed over ``targets`` (all stages when empty) on ``jobs`` local DVC
    queue workers, then write the summary. Returns the summary's folder."""
    plan = _plan(root, seeds, targets, jobs)
    sweep_id = uuid.uuid4().hex[:8]
    names = _queue(root, sweep_id, seeds, targets, plan.stages)
    _dvc(["queue", "start", "--jobs", str(jobs)], root)
    print(f"running {len(names)} experiments on {jobs} DVC queue worker(s); live output: `dvc queue logs -f NAME`",
          flush=True)
    wait_for(names, root)
    return write_summary(root, sweep_id, names, plan)


# ---------------------------------------------------------------------------------------------------
# on SLURM: one job per seed, each a DVC queue worker; then a job that writes the summary


def stage_resources(resources: dict[str, Resources], stage: str) -> Resources:
    """One stage's resources: its ``resources`` entry over ``default`` (what the Snakefile's ``_resources`` does)."""
    merged = {}
    for key in dict.fromkeys(("default", stage.split("@")[0])):
        if key in resources:
            merged.update(resources[key].model_dump(exclude_unset=True))
    return Resources(**merged)


def experiment_resources(resources: dict[str, Resources], stages: Sequence[str]) -> Resources:
    """What one job needs to run one experiment of ``stages``, which DVC runs one after another in it.

    The most any stage asks for (GPUs per node, nodes, CPUs, memory), the sum of their runtimes, the
    ``slurm_extra`` flags of each. Partition, account, QoS, constraint and GPU model must agree among
    the stages that name one: a job has one of each.
    """
    each = {s: stage_resources(resources, s) for s in stages}
    named = {}
    for key in ("slurm_partition", "slurm_account", "qos", "constraint", "gpu_model"):
        values = {s: getattr(r, key) for s, r in each.items() if getattr(r, key)}
        if len(set(values.values())) > 1:
            raise SweepError(f"the stages of one experiment run in one SLURM job, but they ask for different "
                             f"{key}: " + ", ".join(f"{s} {v}" for s, v in values.items())
                             + ". Give them one value in the `resources` section of params.yaml, or sweep fewer "
                             "stages (--stages)")
        named[key] = next(iter(values.values()), None)
    extra = list(dict.fromkeys(r.slurm_extra for r in each.values() if r.slurm_extra))
    rs = list(each.values())
    return Resources(gpu=max(r.gpu for r in rs), cpus_per_task=max(r.cpus_per_task for r in rs),
                     mem_mb=max(r.mem_mb for r in rs), runtime=sum(r.runtime for r in rs),
                     nodes=max(r.nodes for r in rs), slurm_extra=" ".join(extra) or None, **named)


def sbatch_command(job_name: str, command: Sequence[str], res: Resources, log: Path, root: Path,
                   after: Sequence[str] = ()) -> list[str]:
    """The ``sbatch`` command line that runs ``command`` in ``root`` with ``res``, after the jobs ``after`` end."""
    args = ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={log}", f"--chdir={root}", "--export=ALL",
            # A requeued worker would find its experiment already marked failed by DVC, and a stage's
            # checkpoint lives in the experiment's temporary workspace, which no new run resumes from.
            "--no-requeue",
            f"--nodes={res.nodes}", f"--cpus-per-task={res.cpus_per_task}", f"--mem={res.mem_mb}",
            f"--time={res.runtime}"]
    if res.gpu:  # per node, as pipeline.launch counts them (torchrun --nproc_per_node)
        args.append(f"--gres=gpu:{res.gpu_model}:{res.gpu}" if res.gpu_model else f"--gres=gpu:{res.gpu}")
    for flag, value in (("--partition", res.slurm_partition), ("--account", res.slurm_account),
                        ("--qos", res.qos), ("--constraint", res.constraint)):
        if value:
            args.append(f"{flag}={value}")
    if res.slurm_extra:
        args += shlex.split(res.slurm_extra)
    if after:
        args += [f"--dependency=afterany:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    return [*args, "--wrap", shlex.join(command)]


def _sbatch(command: list[str], root: Path) -> str:
    """Submit; the job id."""
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"`{shlex.join(command[:-2])} ...` failed: {(proc.stderr or proc.stdout).strip()[-2000:]}\n"
                         "Experiments already queued stay in `dvc queue status` (`dvc queue remove --queued` drops "
                         "them); jobs already submitted are in `squeue --me`")
    return proc.stdout.strip().split(";")[0]  # --parsable: "<id>" or "<id>;<cluster>"


def collect_command(sweep_id: str, seeds: Sequence[int], targets: Sequence[str]) -> list[str]:
    """``python -m pipeline.sweep --collect`` for this sweep: the summary step, as a job or by hand."""
    return [sys.executable, "-m", "pipeline.sweep", "--collect", sweep_id, "--seeds", *map(str, seeds),
            *(["--stages", *targets] if targets else [])]


def submit(root: Path, seeds: Sequence[int], targets: Sequence[str]) -> list[str]:
    """Queue one experiment per seed, submit one SLURM job per seed that works the queue and one that writes
    the summary when they have ended. Returns the job ids, the summary's last."""
    if shutil.which("sbatch") is None:
        raise SweepError("--slurm submits jobs with `sbatch`, which is not on PATH here: run the sweep on the "
                         "cluster's login node (SLURM's commands on PATH), or leave out --slurm to run the seeds "
                         "on this machine's DVC queue (--jobs J)")
    plan = _plan(root, seeds, targets, 1)
    resources = plan.params.resources
    worker_res = experiment_resources(resources, plan.stages)
    sweep_id = uuid.uuid4().hex[:8]
    logs = root / SLURM_LOGS / f"sweep-{sweep_id}"
    names = _queue(root, sweep_id, seeds, targets, plan.stages)
    logs.mkdir(parents=True, exist_ok=True)
    workers = []
    for i in range(1, len(names) + 1):
        # A worker takes whichever queued experiment is next (one at a time) and stops 10 s after the queue
        # is empty; one job per seed, so each seed can run in an allocation of its own.
        worker = [sys.executable, "-m", "dvc", "exp", "queue-worker", f"dvc-exp-{sweep_id}-{i}@slurm"]
        workers.append(_sbatch(sbatch_command(f"sweep-{sweep_id}-worker{i}", worker, worker_res,
                                              logs / "worker%j.log", root), root))
        print(f"submitted SLURM job {workers[-1]}: DVC queue worker {i} of {len(names)}", flush=True)
    summary_job = _sbatch(sbatch_command(f"sweep-{sweep_id}-collect", collect_command(sweep_id, seeds, targets),
                                         stage_resources(resources, "default"), logs / "collect%j.log", root,
                                         after=workers), root)
    print(f"submitted SLURM job {summary_job}: writes the summary once jobs {', '.join(workers)} have ended.\n"
          f"Watch: `squeue --me`, `dvc queue status`, `dvc queue logs -f NAME`; SLURM logs in {logs}.\n"
          f"By hand: {shlex.join(['python', *collect_command(sweep_id, seeds, targets)[1:]])}", flush=True)
    return [*workers, summary_job]


def collect_sweep(root: Path, sweep_id: str, seeds: Sequence[int], targets: Sequence[str]) -> Path:
    """``--collect``: the summary of sweep ``sweep_id`` once all its experiments have succeeded."""
    plan = _plan(root, seeds, targets, 1)
    names = sweep_names(sweep_id, seeds)
    check_succeeded(names, _queue_status(root), root, f" and the SLURM logs in {SLURM_LOGS}/sweep-{sweep_id}/")
    return write_summary(root, sweep_id, names, plan)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.sweep``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], metavar="N", help="one experiment per seed")
    parser.add_argument("--stages", nargs="*", default=[], metavar="STAGE",
                        help="dvc.yaml stages to rebuild (with their upstream stages); default: all")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=int, default=1, help="DVC queue workers on this machine running experiments "
                       "side by side")
    where.add_argument("--slurm", action="store_true", help="one SLURM job per seed, then one that writes the "
                       "summary; returns once they are submitted")
    where.add_argument("--collect", metavar="SWEEP_ID", help="write the summary of a sweep whose experiments have "
                       "finished (same --seeds and --stages as it was started with)")
    args = parser.parse_args(argv)
    try:
        if args.slurm:
            submit(Path.cwd(), args.seeds, args.stages)
        elif args.collect:
            collect_sweep(Path.cwd(), args.collect, args.seeds, args.stages)
        else:
            sweep(Path.cwd(), args.seeds, args.stages, args.jobs)
    except InputError as err:
        print(f"error: sweep: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
