"""The pipeline on a real SLURM: the demo through Snakemake's SLURM executor, a requeued training job
that resumes from its checkpoint, a seed sweep with one job per seed, and the per-stage sbatch resources
of the paper profile.

The first three need a SLURM controller that answers (`tests/slurm/start-local-slurm.sh` starts a
one-node one; `.ci/run` does it in CI); without one they skip and say why. The dry run needs no SLURM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, assert_same_results, make_scratch_repo, pipeline_env

pytestmark = pytest.mark.slurm

SLURM_STARTER = "tests/slurm/start-local-slurm.sh"


def slurm_unavailable() -> str | None:
    """Why SLURM cannot be used here, or None when a controller answers and a node is usable."""
    for tool in ("sinfo", "scontrol", "sbatch", "squeue", "srun"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (install slurm-wlm, then run {SLURM_STARTER})"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"no SLURM controller answers `scontrol ping` ({(ping.stdout + ping.stderr).strip()[:200]}); " \
               f"start one with {SLURM_STARTER}"
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable SLURM node (sinfo states: {' '.join(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = slurm_unavailable()
    if reason:
        warnings.warn(f"SLURM tests skipped: {reason}", stacklevel=1)  # shown in pytest's summary
        pytest.skip(reason)


def _run(args, cwd, env=None, **kw):
    proc = subprocess.run(args, cwd=cwd, env=env or pipeline_env(cwd), capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


# ---------------------------------------------------------------------------------------------------
# 1. The micro pipeline through `snakemake --profile profiles/slurm` equals a plain `dvc repro`.


def test_slurm_pipeline_matches_dvc_repro(micro_repro, tmp_path, slurm):
    by_dvc = micro_repro.repo  # the session's `dvc repro` of the micro profile, only read here
    by_slurm = make_scratch_repo(tmp_path / "slurm", "micro")

    start = time.monotonic()
    smk = _run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                "--slurm-no-account",  # the test cluster has no accounting database to guess it from
                "--slurm-init-seconds-before-status-checks", "2", "--jobs", "4"], by_slurm)
    slurm_s = time.monotonic() - start
    print(f"\nmicro profile wall time: snakemake --profile profiles/slurm {slurm_s:.1f} s")

    log = smk.stdout + smk.stderr
    jobs = re.findall(r"submitted with SLURM jobid (\d+)", log)
    assert jobs, f"no job was submitted to SLURM:\n{log[-3000:]}"
    print(f"SLURM jobs: {', '.join(jobs)}")
    logs = list((by_slurm / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == len(jobs), f"one kept SLURM log per job (profile: slurm-keep-successful-logs): {logs}"
    status = _run(["dvc", "status"], by_slurm)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    assert_same_results(by_dvc, by_slurm)
    lock = yaml.safe_load((by_slurm / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(yaml.safe_load((by_dvc / "dvc.lock").read_text())["stages"])


# ---------------------------------------------------------------------------------------------------
# 2. A training job signalled mid-run checkpoints, is requeued and continues from its checkpoint.

TOY = "tests/slurm/toy_train.py"
TOY_STEPS = 16


def _toy_env() -> dict[str, str]:
    env = pipeline_env(ROOT)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _submit_toy(run_dir: Path, step_seconds: float) -> str:
    run_dir.mkdir(parents=True)
    # Like the Snakemake jobstep: the command runs in a job step (srun), which SLURM's signals reach.
    cmd = f"srun -n1 {sys.executable} -m pipeline.launch --module {TOY} {run_dir} {TOY_STEPS} {step_seconds}"
    # One CPU and 1 GB: without --mem the job asks for the whole node's memory and waits for any other job.
    out = _run(["sbatch", "--parsable", "--requeue", "--job-name", "toy_train", "-c", "1", "--mem", "1G",
                "-o", str(run_dir / "slurm-%j.out"),
                "-D", str(ROOT), "--export=ALL", "--wrap", cmd], ROOT, env=_toy_env())
    return out.stdout.strip().split(";")[0]


def _wait(predicate, timeout: float, what: str, job: str, run_dir: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-2000:] for p in run_dir.glob("slurm-*.out"))
    cluster = _cluster_state()  # before scancel, which would hide why the job waited
    subprocess.run(["scancel", job])
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (job {job})\n{cluster}\n{logs}")


def _cluster_state() -> str:
    """Every job with its state and reason, and the node's state and reason: why a job waits."""
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %j %T %r %M"], capture_output=True, text=True)
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %E"], capture_output=True, text=True)
    return f"squeue (id name state reason time):\n{jobs.stdout}{jobs.stderr}sinfo:\n{node.stdout}{node.stderr}"


@pytest.mark.parametrize("interrupt", ["scancel --signal=USR1", "scontrol requeue"])
def test_interrupted_training_job_resumes_from_checkpoint(tmp_path, slurm, interrupt):
    import torch

    reference = tmp_path / "reference"
    _run([sys.executable, "-m", "pipeline.launch", "--module", TOY, str(reference), str(TOY_STEPS)], ROOT,
         env={k: v for k, v in _toy_env().items() if not k.startswith("SLURM_")})

    run_dir = tmp_path / "slurm"
    job = _submit_toy(run_dir, step_seconds=0.4)
    _wait(lambda: any(run_dir.glob("ckpt-*.pt")), 300, "the first checkpoint", job, run_dir)
    if interrupt.startswith("scancel"):
        # Time nearly up: the loop checkpoints, exits 75, and pipeline.launch requeues the job.
        _run(["scancel", "--signal=USR1", job], ROOT)
    else:
        # Preemption-like: SLURM sends SIGTERM (the loop checkpoints) and requeues the job itself.
        _run(["scontrol", "requeue", job], ROOT)

    def requeued():
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        return re.search(r"Restarts=([1-9])", info) is not None and "JobState=PENDING" in info

    _wait(requeued, 120, "the job to be requeued", job, run_dir)
    # SLURM holds a requeued job for 120 s (BeginTime); let it start in 3 s, not now: slurmd revokes the
    # old run's credential when it ends, and a new run launched within that same second is killed as
    # "Job credential revoked" (slurmctld.log; FAILED, exit 1, no output), a race of this shortcut only.
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now+3"], capture_output=True)
    _wait(lambda: _job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 400,
          "the requeued job to finish", job, run_dir)
    logs = "\n".join(p.read_text()[-3000:] for p in run_dir.glob("slurm-*.out"))
    assert _job_state(job) == "COMPLETED", logs

    starts = [json.loads(line) for line in (run_dir / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2, starts
    assert starts[0]["start_step"] == 0 and starts[1]["restart_count"] == 1
    assert starts[0]["job_id"] == starts[1]["job_id"] == job, "requeued under the same job id"
    assert 0 < starts[1]["start_step"] < TOY_STEPS, f"the rerun must continue from the checkpoint: {starts}"
    final, ref = torch.load(run_dir / "final.pt"), torch.load(reference / "final.pt")
    assert final.keys() == ref.keys()
    assert all(torch.equal(final[k], ref[k]) for k in ref), "resumed weights differ from an uninterrupted run"


# ---------------------------------------------------------------------------------------------------
# 3. A seed sweep on SLURM: one job per seed works DVC's queue, a job after them writes the summary.


def test_slurm_seed_sweep(tmp_path, slurm):
    repo = make_scratch_repo(tmp_path / "repo", "micro")
    _run([sys.executable, "-m", "pipeline", "configure", "micro", "--set", "train_vqgan.optim.steps=3"], repo)
    _run(["git", "commit", "-qam", "tiny vqgan"], repo)
    start = time.monotonic()
    out = _run([sys.executable, "-m", "pipeline.sweep", "--seeds", "0", "1", "--stages", "train_vqgan", "--slurm"],
               repo).stdout
    jobs = re.findall(r"submitted SLURM job (\d+)", out)
    assert len(jobs) == 3, out
    summary_job, logs = jobs[-1], repo / "logs"

    def all_logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.rglob("*.log")))

    deadline = time.monotonic() + 900
    while _job_state(summary_job) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *jobs])
            pytest.fail(f"the sweep's jobs did not end in 900 s ({_job_state(summary_job)}):\n{all_logs()}")
        time.sleep(2)
    print(f"\nseed sweep of 2 seeds on SLURM (jobs {', '.join(jobs)}): {time.monotonic() - start:.0f} s")
    assert _job_state(summary_job) == "COMPLETED", all_logs()
    summary = json.loads((repo / "results/sweep/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["stages"] == ["prepare", "train_vqgan"]
    shown = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo).stdout)
    revs = {e["name"]: e["rev"] for b in shown for g in b.get("experiments") or [] for e in g["revs"]}
    for e in summary["experiments"]:
        assert e["rev"] == revs[e["name"]], (e, revs)
    assert summary["metrics"]["results/train_vqgan/metrics.json"]["psnr"]["n"] == 2


# ---------------------------------------------------------------------------------------------------
# 3. Dry run (no SLURM needed): every stage's resources in params.yaml reach its sbatch arguments.


class _Resources(dict):
    __getattr__ = dict.__getitem__


def _sbatch_args(resources: dict, threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Resources(resources), threads=threads)
    params = dict(run_uuid="x", slurm_logfile="x.log", comment_str="x", account="", partition="", workdir=None)
    # The plugin appends the GPU request (--gpus / --gres) after the base submit string, as here.
    return get_submit_command(job, params, settings=SimpleNamespace(requeue=True, no_requeue=False, qos=None,
                                                                    reservation=None)) + set_gres_string(job)


def test_dry_run_maps_paper_resources_to_sbatch(tmp_path):
    repo = make_scratch_repo(tmp_path / "paper", "paper")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    wanted = params["resources"]
    assert {"prepare", "train_titok", "eval_titok"} <= set(wanted), "paper profile: resources per stage"
    assert wanted["train_titok"]["gpu"] >= 1 and wanted["train_titok"]["gpu_model"]

    dry = _run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "-n", "--forceall"], repo)
    out = dry.stdout + dry.stderr
    # Snakemake prints each job as "rule <name>:" ... "resources: k=v, k=v".
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\s*$)", out, flags=re.M | re.S)
    printed = {}
    for rule, body in blocks:
        m = re.search(r"resources: (.*)", body)
        if m:
            printed[rule] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
    stages = _run(["dvc", "stage", "list", "--name-only"], repo).stdout.split()
    assert stages and set(stages) <= {r.replace("__", "@") for r in printed}, out[-3000:]
    for stage in stages:
        res = {**wanted.get("default", {}), **wanted.get(stage.split("@")[0], {})}
        got = printed[stage.replace("@", "__")]
        print(f"{stage}: {got}")
        assert int(got["mem_mb"]) == res["mem_mb"] and int(got["runtime"]) == res["runtime"]
        assert int(got["cpus_per_task"]) == res["cpus_per_task"]
        if res.get("gpu") and res.get("nodes", 1) == 1:
            assert int(got["gpu"]) == res["gpu"] and got["gpu_model"] == res["gpu_model"]
        for key in ("slurm_partition", "slurm_account", "qos", "constraint"):
            if res.get(key):
                assert got[key] == res[key]
        typed = {k: int(v) if re.fullmatch(r"\d+", v) else v for k, v in got.items()}
        sbatch = _sbatch_args(typed, res["cpus_per_task"])
        assert f"--mem {res['mem_mb']}" in sbatch and f"-t {res['runtime']}" in sbatch, sbatch
        assert f"--cpus-per-task={res['cpus_per_task']}" in sbatch, sbatch
        assert "--requeue" in sbatch
        if res.get("gpu"):
            assert f"--gpus={res['gpu_model']}:{res['gpu']}" in sbatch, sbatch
        if res.get("slurm_extra"):
            assert res["slurm_extra"] in sbatch


def test_multi_node_gpu_stage_asks_for_gpus_per_node(tmp_path):
    """`gpu` is per node: with nodes > 1 the Snakefile asks with --gres (per node), not --gpus (total)."""
    repo = make_scratch_repo(tmp_path / "paper", "paper")
    stage = _run(["dvc", "stage", "list", "--name-only"], repo).stdout.split()[0].split("@")[0]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["resources"][stage] = {**params["resources"].get(stage, {}), "gpu": 4, "gpu_model": "h100", "nodes": 2}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = _run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "-n", "--forceall"], repo)
    out = dry.stdout + dry.stderr
    assert re.search(r"gres=gpu:h100:4", out) and re.search(r"nodes=2", out), out[-3000:]


# ---------------------------------------------------------------------------------------------------
# pipeline.launch: how a multi-GPU / multi-node stage is started inside an allocation.


def test_launch_builds_srun_torchrun_from_the_allocation(monkeypatch):
    from pipeline import launch

    monkeypatch.setattr(launch, "first_node", lambda env=None: "gpu-a01")
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[01-02]",
           "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "32"}
    cmd = launch.distributed_command("pipeline", ["train_titok"], env)
    assert cmd[:6] == ["srun", "--overlap", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    assert "--gpus-per-node=4" in cmd and "--cpus-per-task=32" in cmd
    inner = cmd[-1]
    for part in ("torchrun", "--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=gpu-a01:29500", "--rdzv_id=42", "-m pipeline train_titok"):
        assert part in inner, inner
    assert launch.nproc_per_node({"SLURM_GPUS_PER_NODE": "a100:8"}) == 8
    assert launch.nproc_per_node({"CUDA_VISIBLE_DEVICES": "0,1"}) == 2
    assert launch.nproc_per_node({}) == 1
    assert not launch.under_torchrun({"SLURM_JOB_ID": "1"}) and launch.under_torchrun({"TORCHELASTIC_RUN_ID": "x"})
