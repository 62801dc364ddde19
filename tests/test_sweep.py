"""Seed sweeps (``python -m pipeline.sweep``): the summary's maths, its refusal to mix experiments that differ in
more than the seed, the errors before any work, the report's spread, and one real sweep of two seeds."""

import hashlib
import json
import statistics
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, make_scratch_repo, pipeline_env

from pipeline import sweep
from pipeline.params import Paths
from pipeline.report import render
from pipeline.report.spread import spread_of, sweep_record

METRICS = "results/train_vqgan/metrics.json"


def _lock(seed: int, lr: float = 0.002, code: str = "c0", data: str = "d0") -> dict:
    """A dvc.lock of two stages: ``prepare`` (its output a dep of ``train_vqgan``) and ``train_vqgan``."""
    return {"schema": "2.0", "stages": {
        "prepare": {"deps": [{"path": "pipeline/stages/prepare.py", "md5": "p0"}],
                    "params": {"params.yaml": {"seed": seed, "image_size": 32}},
                    "outs": [{"path": "data/prepared", "md5": f"{data}.dir"}]},
        "train_vqgan": {"deps": [{"path": "pipeline/stages/train_vqgan.py", "md5": code},
                                 {"path": "data/prepared", "md5": f"{data}.dir"}],
                        "params": {"params.yaml": {"seed": seed, "image_size": 32,
                                                   "train_vqgan": {"optim": {"lr": lr}}}},
                        "outs": [{"path": "models/vqgan", "md5": f"m{seed}.dir"}]}}}


def _experiment(seed: int, psnr: float, **lock) -> sweep.Experiment:
    return sweep.Experiment(f"sweep-t-seed{seed}", seed, f"{seed:040d}", "b" * 40, _lock(seed, **lock), f"h{seed}",
                            {METRICS: {"psnr": psnr, "loss": {"final": psnr / 10}, "ok": True}})


STAGES = ["prepare", "train_vqgan"]
FILES = {"prepare": [], "train_vqgan": [METRICS]}


def test_spread_is_mean_and_sample_std():
    values = [21.5, 23.0, 22.25, 19.75]
    s = sweep.spread(values)
    assert s["mean"] == pytest.approx(statistics.mean(values))
    assert s["std"] == pytest.approx(statistics.stdev(values))
    assert (s["min"], s["max"], s["n"]) == (19.75, 23.0, 4)
    assert sweep.spread([3.0])["std"] is None  # one seed measures no spread


def test_summary_per_metric_names_each_seed_and_experiment():
    exps = [_experiment(0, 20.0, data="d0"), _experiment(1, 23.0, data="d1")]  # the prepared data differ: fine
    summary = sweep.summarise("t", exps, STAGES, FILES)
    psnr = summary["metrics"][METRICS]["psnr"]
    assert psnr["values"] == [{"seed": 0, "experiment": "sweep-t-seed0", "value": 20.0},
                              {"seed": 1, "experiment": "sweep-t-seed1", "value": 23.0}]
    assert psnr["mean"] == pytest.approx(21.5) and psnr["std"] == pytest.approx(statistics.stdev([20.0, 23.0]))
    assert summary["metrics"][METRICS]["loss.final"]["n"] == 2
    assert "ok" not in summary["metrics"][METRICS]  # a boolean has no mean
    assert [e["dvc_lock_sha256"] for e in summary["experiments"]] == ["h0", "h1"]
    assert "seed" not in summary["fingerprint"]["prepare"]["params"]
    assert "data/prepared" not in summary["fingerprint"]["train_vqgan"]["deps"]
    md = sweep.to_markdown(summary)
    assert "| psnr | 21.5 | 2.121 | 20 | 23 | 2 | 20 | 23 |" in md


@pytest.mark.parametrize(("change", "named"), [
    ({"lr": 0.004}, "train_vqgan: param train_vqgan.optim.lr: 0.002 vs 0.004"),
    ({"code": "c1"}, "train_vqgan: dep pipeline/stages/train_vqgan.py")])
def test_summary_refuses_experiments_that_differ_in_more_than_the_seed(change, named):
    with pytest.raises(sweep.SweepError) as err:
        sweep.summarise("t", [_experiment(0, 20.0), _experiment(1, 23.0, **change)], STAGES, FILES)
    assert named in str(err.value) and "sweep-t-seed0" in str(err.value) and "sweep-t-seed1" in str(err.value)


def test_summary_refuses_a_repeated_seed():
    with pytest.raises(sweep.SweepError, match="same seed"):
        sweep.summarise("t", [_experiment(0, 20.0), _experiment(0, 21.0)], STAGES, FILES)


def test_requests_that_cannot_run_are_refused_before_any_work():
    graph = {"prepare": sweep.Stage([], ["data/prepared"], []),
             "train_vqgan": sweep.Stage(["data/prepared"], ["models/vqgan"], [METRICS]),
             "report": sweep.Stage(["models/vqgan"], [], [])}
    with pytest.raises(sweep.SweepError, match=r"no seed given.*--seeds 0 1 2"):
        sweep.check_request([], [], 1, graph)
    with pytest.raises(sweep.SweepError, match=r"unknown stage train_vqqan \(dvc.yaml has: prepare, train_vqgan"):
        sweep.check_request([0, 1], ["train_vqqan"], 1, graph)
    with pytest.raises(sweep.SweepError, match="distinct"):
        sweep.check_request([1, 1], [], 1, graph)
    assert sweep.covered_stages(graph, ["train_vqgan"]) == ["prepare", "train_vqgan"]


def test_untracked_files_are_refused(tmp_path):
    for cmd in (["git", "init", "-q"],):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "new_stage_helper.py").write_text("x = 1\n")
    with pytest.raises(sweep.SweepError, match=r"untracked files .*new_stage_helper.py.*git add"):
        sweep.check_workspace(tmp_path)


def test_the_command_says_what_to_fix():
    proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", "--stages", "prepare"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "error: sweep: no seed given" in proc.stderr


def _checkout(tmp_path, summary_lock: dict, workspace_lock: dict):
    exps = [sweep.Experiment(f"sweep-t-seed{s}", s, f"{s:040d}", "b" * 40, summary_lock | {"stages": {
        k: {**v, "params": {"params.yaml": {**v["params"]["params.yaml"], "seed": s}}}
        for k, v in summary_lock["stages"].items()}}, f"h{s}", {METRICS: {"psnr": 20.0 + s}}) for s in (0, 1)]
    (tmp_path / "results/sweep").mkdir(parents=True)
    (tmp_path / "results/sweep/summary.json").write_text(json.dumps(sweep.summarise("t", exps, STAGES, FILES)))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(workspace_lock))
    return sweep_record(tmp_path, Paths())


def test_the_report_shows_the_spread_of_a_sweep_of_this_checkout(tmp_path):
    record = _checkout(tmp_path, _lock(0), _lock(0, data="other"))
    assert record["status"] == "shown"
    s = spread_of(record, METRICS, "psnr")
    assert s == {"mean": 20.5, "std": pytest.approx(0.7071, rel=1e-3), "min": 20.0, "max": 21.0, "n": 2}
    assert spread_of(record, METRICS, "not_swept") is None
    assert render.spread_text(s) == "; seeds: mean 20.5 ± 0.7071 (n 2, 20 to 21)"


def test_the_report_names_what_differs_and_shows_no_spread(tmp_path):
    record = _checkout(tmp_path, _lock(0), _lock(0, lr=0.01))
    assert record["status"] == "other" and "train_vqgan.optim.lr: 0.002 vs 0.01" in record["reason"]
    assert spread_of(record, METRICS, "psnr") is None
    assert sweep_record(tmp_path / "nothing", Paths())["status"] == "absent"


@pytest.mark.slow
def test_a_sweep_of_two_seeds(tmp_path):
    """Two seeds over prepare and train_vqgan on the micro profile, two queue workers (about a minute)."""
    repo = make_scratch_repo(tmp_path / "repo")
    env = pipeline_env(repo)
    run = dict(cwd=repo, env=env, capture_output=True, text=True)
    subprocess.run([sys.executable, "-m", "pipeline", "configure", "micro", "--set", "train_vqgan.optim.steps=3"],
                   check=True, **run)
    subprocess.run(["git", "commit", "-qam", "tiny vqgan"], check=True, **run)
    params_before, lock_before = (repo / "params.yaml").read_text(), (repo / "dvc.lock").exists()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", "--seeds", "0", "1", "--stages", "train_vqgan",
                           "--jobs", "2"], **run)
    print(f"{proc.stdout}sweep of 2 seeds: {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads((repo / "results/sweep/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["stages"] == ["prepare", "train_vqgan"]
    assert [e["seed"] for e in summary["experiments"]] == [0, 1]
    assert all(len(e["rev"]) == 40 and len(e["dvc_lock_sha256"]) == 64 for e in summary["experiments"])
    assert set(summary["metrics"]) == {METRICS}  # only the stages the experiments rebuilt
    differ = 0
    for key, s in summary["metrics"][METRICS].items():
        values = [v["value"] for v in s["values"]]
        assert [v["seed"] for v in s["values"]] == [0, 1], key
        assert s["mean"] == pytest.approx(statistics.mean(values)), key
        assert s["std"] == pytest.approx(statistics.stdev(values)), key
        differ += values[0] != values[1]
    # other data and another init: the reconstruction numbers differ between seeds (the step count does not)
    psnr = [v["value"] for v in summary["metrics"][METRICS]["psnr"]["values"]]
    assert psnr[0] != psnr[1] and differ >= 2
    assert "| psnr |" in (repo / "results/sweep/summary.md").read_text()
    # nothing applied to the workspace: its params and (absent) dvc.lock are as they were
    assert (repo / "params.yaml").read_text() == params_before and (repo / "dvc.lock").exists() == lock_before


# ---------------------------------------------------------------------------------------------------
# --slurm: one job per seed (a DVC queue worker each), then a job that writes the summary (--collect)


def _resources(**stages) -> dict:
    from pipeline.params import Resources

    return {k: Resources(**v) for k, v in stages.items()}


def test_one_job_holds_what_every_stage_of_the_experiment_asks_for():
    res = _resources(default={"cpus_per_task": 4, "mem_mb": 16000, "runtime": 120},
                     prepare={"cpus_per_task": 32, "mem_mb": 64000, "runtime": 720},
                     train_vqgan={"gpu": 8, "gpu_model": "a100", "cpus_per_task": 64, "mem_mb": 480000,
                                  "runtime": 2880, "slurm_extra": "--signal=USR1@300"},
                     eval_titok={"gpu": 1, "gpu_model": "a100", "slurm_partition": "gpu"})
    job = sweep.experiment_resources(res, ["prepare", "train_vqgan", "eval_titok"])
    assert (job.gpu, job.gpu_model, job.cpus_per_task, job.mem_mb, job.nodes) == (8, "a100", 64, 480000, 1)
    assert job.runtime == 720 + 2880 + 120  # the stages run one after another; eval_titok has default's runtime
    assert job.slurm_partition == "gpu" and job.slurm_extra == "--signal=USR1@300"
    assert sweep.stage_resources(res, "eval_titok").mem_mb == 16000  # default fills what a stage leaves out
    assert sweep.stage_resources({}, "prepare") == sweep.Resources()
    clash = {**res, "prepare": sweep.Resources(slurm_partition="cpu")}
    with pytest.raises(sweep.SweepError, match=r"different slurm_partition: prepare cpu, eval_titok gpu"):
        sweep.experiment_resources(clash, ["prepare", "train_vqgan", "eval_titok"])


def test_sbatch_command_lines(tmp_path):
    res = sweep.Resources(gpu=8, gpu_model="a100", nodes=2, cpus_per_task=64, mem_mb=480000, runtime=3600,
                          slurm_partition="gpu", slurm_account="proj", slurm_extra="--signal=USR1@300 --exclusive")
    worker = sweep.sbatch_command("sweep-x-worker1", ["/venv/python", "-m", "dvc", "exp", "queue-worker", "w@slurm"],
                                  res, tmp_path / "worker%j.log", tmp_path)
    assert worker[:2] == ["sbatch", "--parsable"] and worker[-2:] == ["--wrap",
                                                                       "/venv/python -m dvc exp queue-worker w@slurm"]
    for arg in ("--job-name=sweep-x-worker1", f"--output={tmp_path}/worker%j.log", f"--chdir={tmp_path}",
                "--export=ALL", "--no-requeue", "--nodes=2", "--cpus-per-task=64", "--mem=480000", "--time=3600",
                "--gres=gpu:a100:8", "--partition=gpu", "--account=proj", "--signal=USR1@300", "--exclusive"):
        assert arg in worker, arg
    assert not any(a.startswith(("--qos", "--constraint", "--dependency")) for a in worker)
    collect = sweep.sbatch_command("sweep-x-collect", sweep.collect_command("x", [0, 1], ["train_vqgan"]),
                                   sweep.Resources(), tmp_path / "collect%j.log", tmp_path, after=["11", "12"])
    assert "--dependency=afterany:11:12" in collect and "--kill-on-invalid-dep=yes" in collect
    assert "--mem=4000" in collect and not any(a.startswith("--gres") for a in collect)
    assert collect[-1].endswith("-m pipeline.sweep --collect x --seeds 0 1 --stages train_vqgan")


def test_slurm_without_sbatch_is_refused_naming_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(sweep.shutil, "which", lambda tool: None)
    monkeypatch.setattr(sweep, "dvc_graph", lambda root: pytest.fail("refused before any work"))
    assert sweep.main(["--seeds", "0", "1", "--slurm"]) == 2
    err = capsys.readouterr().err
    assert "`sbatch`, which is not on PATH" in err and "login node" in err and "--jobs J" in err
    with pytest.raises(SystemExit):
        sweep.main(["--seeds", "0", "--slurm", "--jobs", "2"])  # the workers are SLURM's jobs, not local ones
    assert "not allowed with argument" in capsys.readouterr().err


def test_collect_names_the_seeds_that_did_not_succeed(monkeypatch, capsys):
    monkeypatch.setattr(sweep, "_queue_log", lambda name, root: "Traceback ...\nRuntimeError: out of memory")
    names = sweep.sweep_names("x", [0, 1, 2])
    assert list(names) == ["sweep-x-seed0", "sweep-x-seed1", "sweep-x-seed2"]
    sweep.check_succeeded(names, dict.fromkeys(names, "Success"), ROOT, "")
    with pytest.raises(sweep.SweepError) as err:
        sweep.check_succeeded(names, {"sweep-x-seed0": "Success", "sweep-x-seed1": "Failed"}, ROOT,
                              " and the SLURM logs in logs/sweep-x/")
    assert "2 of 3 experiments did not succeed" in str(err.value)
    assert "seed 1 (sweep-x-seed1): Failed" in str(err.value) and "seed 2 (sweep-x-seed2): not in the queue" in str(
        err.value)
    assert "logs/sweep-x/" in str(err.value) and "out of memory" in capsys.readouterr().err


FAKE_SBATCH = """#!/bin/sh
# Records each submission (one JSON list a line) and answers a job id, as `sbatch --parsable` does.
n=$(($(wc -l < "$SBATCH_RECORD" 2>/dev/null || echo 0) + 1))
python -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$SBATCH_RECORD"
echo $((100 + n))
"""


@pytest.mark.slow
def test_a_slurm_sweep_with_the_jobs_run_here(tmp_path):
    """``--slurm`` against a stand-in ``sbatch``; the submitted commands then run here as SLURM would run them (the
    two workers side by side, the summary after them). The real SLURM run is in tests/test_slurm.py."""
    repo = make_scratch_repo(tmp_path / "repo")
    env = pipeline_env(repo)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SBATCH_RECORD=str(tmp_path / "sbatch.jsonl"))
    run = dict(cwd=repo, env=env, capture_output=True, text=True)
    subprocess.run([sys.executable, "-m", "pipeline", "configure", "micro", "--set", "train_vqgan.optim.steps=3"],
                   check=True, **run)
    subprocess.run(["git", "commit", "-qam", "tiny vqgan"], check=True, **run)
    proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", "--seeds", "0", "1", "--stages", "train_vqgan",
                           "--slurm"], **run)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    jobs = [json.loads(line) for line in (tmp_path / "sbatch.jsonl").read_text().splitlines()]
    assert len(jobs) == 3 and "--dependency=afterany:101:102" in jobs[2], jobs
    sweep_id = jobs[2][-1].split("--collect ")[1].split()[0]
    queued = subprocess.run([sys.executable, "-m", "dvc", "queue", "status"], **run).stdout
    assert f"sweep-{sweep_id}-seed0" in queued and f"sweep-{sweep_id}-seed1" in queued and "Queued" in queued
    assert not (repo / "results/sweep/summary.json").exists(), "the summary is the last job's"

    start = time.monotonic()
    workers = [subprocess.Popen(["bash", "-c", job[-1]], cwd=repo, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for job in jobs[:2]]
    for w in workers:
        out, err = w.communicate(timeout=900)
        assert w.returncode == 0, f"{out[-2000:]}\n{err[-2000:]}"
    collect = subprocess.run(["bash", "-c", jobs[2][-1]], **run)
    print(f"two workers and the summary: {time.monotonic() - start:.0f} s")
    assert collect.returncode == 0, f"{collect.stdout[-3000:]}\n{collect.stderr[-3000:]}"
    summary = json.loads((repo / "results/sweep/summary.json").read_text())
    assert summary["sweep"] == sweep_id and summary["seeds"] == [0, 1]
    assert summary["stages"] == ["prepare", "train_vqgan"]
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], **run).stdout)
    revs = {e["name"]: e["rev"] for b in shown for g in b.get("experiments") or [] for e in g["revs"]}
    for e in summary["experiments"]:
        assert e["rev"] == revs[e["name"]]
        lock = subprocess.run(["git", "show", f"{e['rev']}:dvc.lock"], **run).stdout
        assert e["dvc_lock_sha256"] == hashlib.sha256(lock.encode()).hexdigest()
    assert summary["metrics"][METRICS]["psnr"]["n"] == 2
