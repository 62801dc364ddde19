# Snakemake rules derived from dvc.yaml: one rule per resolved DVC stage, never a second list of stages.
#
#   snakemake --profile profiles/local            # run locally, in parallel where the DAG allows
#   snakemake --profile profiles/slurm            # submit every stage as a SLURM job
#   dvc commit -f                                 # record the outputs in dvc.lock (done by onsuccess)
#
# The stages come from DVC's own parser (pinned DVC version: index.stages is internal API), so
# ${...} templating, foreach and matrix are resolved exactly as `dvc repro` resolves them. The values
# of each stage's tracked params are the rule's `params`.
#
# What to rerun is DVC's decision, not file times: Snakemake's params and mtime triggers know nothing of
# outputs built by `dvc repro`, so on its own it would skip a stage whose parameter changed and then
# commit the stale output. Every rule therefore has one more input, the marker .dvc-stale/<rule>; when
# the main process parses this file it asks DVC which stages are stale (`dvc status`) and sets their
# markers' time to now (newer than any output: the rule and everything downstream reruns), the others'
# to the epoch (never a reason to rerun). After a successful run, only the stages Snakemake actually ran
# (each rule leaves .dvc-stale/ran/<invocation>/<rule>) are committed to dvc.lock; a stale stage outside
# the requested targets stays stale in `dvc status`.
# Outputs without a file suffix are folders (wrapped in directory()). Per-stage cluster resources come
# from the `resources` section of params.yaml (key: the DVC stage name, or `default`).

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml
from dvc.repo import Repo
from snakemake.exceptions import WorkflowError


MARKERS = Path(".dvc-stale")


def _dvc_stages():
    stages = []
    with Repo(".") as repo:
        stale = set(repo.status()) if workflow.is_main_process else set()
        for st in repo.index.stages:
            tracked = {}
            deps = []
            for d in st.deps:
                if d.__class__.__name__ == "ParamsDependency":
                    tracked.update(d.read_params())
                else:
                    deps.append(d.def_path)
            cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd)
            stages.append(
                {
                    "rule": st.addressing.replace("@", "__").replace(".", "_").replace("-", "_"),
                    "stage": st.addressing,
                    "cmd": cmd,
                    "deps": deps,
                    "outs": [o.def_path for o in st.outs],
                    "tracked": json.dumps(tracked, sort_keys=True, default=str),
                    "stale": st.addressing in stale,
                }
            )
    return stages


def _mark(stages):
    """Set each rule's marker time: now for a stage DVC calls stale, the epoch for the others."""
    MARKERS.mkdir(exist_ok=True)
    now = time.time()
    for s in stages:
        marker = MARKERS / s["rule"]
        marker.touch()
        stamp = now if s["stale"] else 0
        os.utime(marker, (stamp, stamp))


STAGES = _dvc_stages()
if workflow.is_main_process:
    _mark(STAGES)
_PARAMS = yaml.safe_load(Path("params.yaml").read_text()) or {}
_RESOURCES = _PARAMS.get("resources") or {}
_SNAKEMAKE_KEYS = {
    "slurm_partition": "slurm_partition",
    "slurm_account": "slurm_account",
    "qos": "qos",
    "gpu": "gpu",
    "gpu_model": "gpu_model",
    "cpus_per_task": "cpus_per_task",
    "mem_mb": "mem_mb",
    "runtime": "runtime",
    "nodes": "nodes",
    "constraint": "constraint",
    "slurm_extra": "slurm_extra",
}

# One id for every job of this invocation (exported to SLURM jobs), so MLflow groups the runs.
os.environ.setdefault("PIPELINE_INVOCATION", uuid.uuid4().hex[:12])
RAN = MARKERS / "ran" / os.environ["PIPELINE_INVOCATION"]


def _resources(stage):
    merged = {**(_RESOURCES.get("default") or {}), **(_RESOURCES.get(stage.split("@")[0]) or {})}
    out = {_SNAKEMAKE_KEYS[k]: v for k, v in merged.items() if k in _SNAKEMAKE_KEYS and v not in (None, 0, "")}
    if out.get("gpu") and out.get("nodes", 1) > 1:
        # `gpu` is per node. The plugin turns `gpu` into `--gpus=<total>`, which SLURM may spread
        # unevenly over the nodes; `--gres` counts per node, as torchrun's --nproc_per_node does.
        gpus, model = out.pop("gpu"), out.pop("gpu_model", None)
        out["gres"] = f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}"
    return out


def _output(path):
    return directory(path) if Path(path).suffix == "" else path


localrules:
    all,


rule all:
    input:
        [o for s in STAGES for o in s["outs"]],


for _s in STAGES:

    rule:
        name:
            _s["rule"]
        input:
            _s["deps"],
            str(MARKERS / _s["rule"]),
        output:
            [_output(o) for o in _s["outs"]],
        params:
            cmd=_s["cmd"],
            stage=_s["stage"],
            tracked=_s["tracked"],
        log:
            f"logs/{_s['rule']}.log",
        threads: _resources(_s["stage"]).get("cpus_per_task", 1)
        resources:
            **_resources(_s["stage"]),
        conda:
            "envs/pipeline.yaml"
        shell:
            "export DVC_STAGE={params.stage:q}; ( {params.cmd} ) > {log:q} 2>&1 || (tail -n 40 {log:q}; exit 1); "
            # the invocation id comes from the environment, not params: params are a rerun trigger
            f"mkdir -p {MARKERS}/ran/$PIPELINE_INVOCATION && echo {{params.stage:q}} > {MARKERS}/ran/$PIPELINE_INVOCATION/{{rule}}"


onstart:
    # Every input the profile reads, checked before the first job starts (or is queued on SLURM): a
    # missing weights file or ImageNet folder stops the run here, with the table of what is missing.
    if Path("pipeline/preflight.py").is_file():
        if subprocess.run([sys.executable, "-m", "pipeline.preflight"]).returncode != 0:
            raise WorkflowError("preflight: inputs are missing (table above); no job was started")


onsuccess:
    ran = sorted(p.read_text().strip() for p in RAN.glob("*")) if RAN.is_dir() else []
    if ran and not os.environ.get("PIPELINE_SKIP_DVC_COMMIT"):
        print(f"Recording the outputs of the stages this run rebuilt in dvc.lock: dvc commit -f {' '.join(ran)}")
        # --no-relink leaves the workspace files (and their mtimes, which Snakemake compares) untouched.
        subprocess.run(["dvc", "--wait-for-lock", "commit", "-f", "-q", "--no-relink", *ran], check=True)
        if "report" in ran:
            # The report cites dvc.lock's hashes, which only exist after the commit: rebuild it now.
            print("Rebuilding the report against the committed lock: dvc repro -f -s report")
            subprocess.run(["dvc", "--wait-for-lock", "repro", "-f", "-s", "-q", "report"], check=True)
