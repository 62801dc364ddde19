"""Seed sweeps: ``python -m pipeline.sweep --seeds 0 1 2 [--stages STAGE ...] [--jobs J]``.

One DVC experiment per seed (``dvc exp run --queue -S seed=N [STAGE ...]``), run by DVC's own queue with
``J`` workers (``dvc queue start --jobs J``), then one summary of their headline metrics
(``results/sweep/summary.json`` and ``summary.md``): per metric the mean, the sample standard deviation
(n - 1), min, max, n and every seed's value with the experiment (name, commit, dvc.lock sha256) it
came from. The experiments stay in ``dvc exp show``; nothing is applied to the workspace, so no output
in dvc.lock changes.

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
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import dvcfile
from pipeline.errors import InputError
from pipeline.io import flatten, write_json, write_text

SWEEP_DIR = "sweep"  # under paths.results
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
SEED_KEY = "seed"
POLL_SECONDS = 5.0


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


def _dvc(args: list[str], root: Path, capture: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=capture, text=True)
    if proc.returncode != 0:
        raise SweepError(f"`dvc {' '.join(args)}` failed:\n{(proc.stderr or proc.stdout or '')[-2000:]}")
    return proc.stdout or ""


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
    failed = [n for n in names if shown[n] != "Success"]
    for name in failed:
        log = subprocess.run([sys.executable, "-m", "dvc", "queue", "logs", name], cwd=root, capture_output=True,
                             text=True).stdout
        print(f"--- last lines of `dvc queue logs {name}` ---\n" + "\n".join(log.splitlines()[-20:]), file=sys.stderr)
    if failed:
        raise SweepError(f"{len(failed)} of {len(names)} experiments failed ({', '.join(failed)}); no summary "
                         "written. See `dvc queue logs NAME`")


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


def sweep(root: Path, seeds: Sequence[int], targets: Sequence[str], jobs: int) -> Path:
    """Queue and run one experiment per seed over ``targets`` (all stages when empty), then write the summary.

    Returns the summary's folder.
    """
    from pipeline import params as params_mod

    graph = dvc_graph(root)
    check_request(seeds, targets, jobs, graph)
    check_workspace(root)
    params = params_mod.load(root / params_mod.PARAMS_FILE)
    stages = covered_stages(graph, targets) if targets else list(graph)
    _prepare_store()

    sweep_id = uuid.uuid4().hex[:8]
    names = {f"sweep-{sweep_id}-seed{s}": s for s in seeds}
    for name, seed in names.items():
        _dvc(["exp", "run", "--queue", "--name", name, "--set-param", f"{SEED_KEY}={seed}", *targets], root)
        print(f"queued {name}: seed {seed}, stages {', '.join(stages)}", flush=True)
    _dvc(["queue", "start", "--jobs", str(jobs)], root)
    print(f"running {len(names)} experiments on {jobs} DVC queue worker(s); live output: `dvc queue logs -f NAME`",
          flush=True)
    wait_for(names, root)

    metric_files = {s: graph[s].metrics for s in stages}
    experiments = collect(names, root, [p for s in stages for p in metric_files[s]])
    summary = summarise(sweep_id, experiments, stages, metric_files)
    out = root / params.paths.results / SWEEP_DIR
    write_json(out / SUMMARY_JSON, summary)
    write_text(out / SUMMARY_MD, to_markdown(summary))
    print(f"wrote {out / SUMMARY_JSON} and {SUMMARY_MD}: {sum(len(k) for k in summary['metrics'].values())} "
          f"metrics over seeds {', '.join(map(str, seeds))}; `dvc repro report` shows their spread")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.sweep``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], metavar="N", help="one experiment per seed")
    parser.add_argument("--stages", nargs="*", default=[], metavar="STAGE",
                        help="dvc.yaml stages to rebuild (with their upstream stages); default: all")
    parser.add_argument("--jobs", type=int, default=1, help="DVC queue workers running experiments side by side")
    args = parser.parse_args(argv)
    try:
        sweep(Path.cwd(), args.seeds, args.stages, args.jobs)
    except InputError as err:
        print(f"error: sweep: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
