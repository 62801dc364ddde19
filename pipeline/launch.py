"""Launch a stage on what the SLURM allocation holds: ``python -m pipeline.launch <stage>``.

- Outside SLURM, already under ``torchrun``, or with one process to start (one node, at most one
  GPU): the stage runs in this process, exactly as ``python -m pipeline <stage>``.
- Inside an allocation with several nodes or GPUs: one ``torchrun`` per node through ``srun``, its
  rendezvous taken from the allocation (first node of ``SLURM_JOB_NODELIST``, port 29500, id
  ``SLURM_JOB_ID``)::

      srun --overlap --nodes N --ntasks N --ntasks-per-node 1 --gpus-per-node G \\
          torchrun --nnodes N --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint <node0>:29500 \\
          -m pipeline <stage>

  ``--overlap`` because the Snakemake job step that runs this command already holds the
  allocation's first node. ``torchrun`` ignores SIGUSR1 (it would die of it and lose its workers'
  exit codes); the workers get SLURM's signals directly and checkpoint.

Requeue: the training loop answers SIGUSR1 (``sbatch --signal=USR1@<seconds>``: the time limit is
near) with a checkpoint and exit status 75 (``EXIT_REQUEUE``). Inside a batch job this launcher
then runs ``scontrol requeue $SLURM_JOB_ID``: the job goes back to the queue under the same id
(Snakemake keeps waiting for it) and the rerun resumes from the checkpoint. SIGTERM (preemption,
time limit, ``scancel``) also checkpoints; SLURM itself requeues preempted jobs.

``PIPELINE_NPROC_PER_NODE`` overrides the number of processes per node (e.g. several CPU processes
with gloo, for tests). ``--module`` runs another module, or a ``.py`` script, instead of ``pipeline``
(tests use a toy trainer).
"""

from __future__ import annotations

import os
import runpy
import shlex
import signal
import subprocess
import sys

EXIT_REQUEUE = 75  # pipeline.train.loop.EXIT_REQUEUE (not imported: no torch before it is needed)
RDZV_PORT = 29500

# Allocation-level variables a nested srun needs; step-level ones (SLURM_NTASKS, SLURM_STEP_*,
# SLURM_CPU_BIND, ...) of the job step we run in would constrain the new step, so they are dropped.
_KEEP_SLURM = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES", "SLURM_CONF",
               "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST", "SLURM_ARRAY_JOB_ID",
               "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"}


def in_slurm_job(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in env or ("LOCAL_RANK" in env and "WORLD_SIZE" in env)


def _count_gpus(value: str) -> int:
    """GPUs in SLURM's notations: ``4``, ``a100:4``, ``gpu:a100:4``, ``0,1,2`` (device list)."""
    value = value.strip()
    if not value:
        return 0
    if "," in value and ":" not in value:
        return len([v for v in value.split(",") if v])
    last = value.split("(")[0].split(":")[-1]
    return int(last) if last.isdigit() else 0


def nproc_per_node(env: dict[str, str] | None = None) -> int:
    """Processes per node: one per GPU the allocation gives this node (override: PIPELINE_NPROC_PER_NODE)."""
    env = os.environ if env is None else env
    if env.get("PIPELINE_NPROC_PER_NODE"):
        return int(env["PIPELINE_NPROC_PER_NODE"])
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        if env.get(key):
            n = _count_gpus(env[key])
            if n:
                return n
    return 1


def num_nodes(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)


def first_node(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] if out else nodelist
    except (OSError, subprocess.CalledProcessError):
        return nodelist.split(",")[0]


def distributed_command(module: str, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The ``srun torchrun ...`` command line that runs ``module args`` on the whole allocation."""
    env = os.environ if env is None else env
    nodes, nproc = num_nodes(env), nproc_per_node(env)
    gpus = not env.get("PIPELINE_NPROC_PER_NODE") and nproc_per_node({**env, "PIPELINE_NPROC_PER_NODE": ""}) > 1
    srun = ["srun", "--overlap", "--kill-on-bad-exit=1", f"--nodes={nodes}", f"--ntasks={nodes}",
            "--ntasks-per-node=1"]
    if gpus:
        srun.append(f"--gpus-per-node={nproc}")
    if env.get("SLURM_CPUS_PER_TASK"):
        srun.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    torchrun = ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={first_node(env)}:{RDZV_PORT}", f"--rdzv_id={env.get('SLURM_JOB_ID', 'local')}",
                *([module] if module.endswith(".py") else ["-m", module]), *args]
    # torchrun must not die of SIGUSR1 (meant for its workers): start it with USR1 ignored; the
    # workers' training loop installs its own handler, which overrides the inherited SIG_IGN.
    return [*srun, "bash", "-c", f"trap '' USR1; exec {shlex.join(torchrun)}"]


def requeue(env: dict[str, str] | None = None) -> bool:
    """Put this batch job back in the queue (same job id); True if SLURM accepted."""
    env = os.environ if env is None else env
    job = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" \
        or env.get("SLURM_JOB_ID")
    if not job:
        return False
    print(f"pipeline.launch: checkpoint written; requeueing SLURM job {job}", file=sys.stderr, flush=True)
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"pipeline.launch: scontrol requeue {job} failed: {done.stderr.strip()}", file=sys.stderr)
    return done.returncode == 0


def _run_in_process(module: str, args: list[str]) -> int:
    sys.argv = [module, *args]
    try:
        if module == "pipeline":
            from pipeline.__main__ import main

            return int(main(args) or 0)
        if module.endswith(".py"):
            runpy.run_path(module, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit_:  # TrainingInterrupted is a SystemExit with code 75 or 143
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)


def _run_distributed(module: str, args: list[str]) -> int:
    cmd = distributed_command(module, args)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("SLURM_", "SRUN_", "SBATCH_")) and k not in _KEEP_SLURM)}
    print(f"pipeline.launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    got: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum))
                for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        code = subprocess.run(cmd, env=env).returncode
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    # torchrun reports a failed worker as 1, not the worker's 75: a SIGUSR1 we saw tells the same story.
    if code != 0 and signal.SIGUSR1 in got and signal.SIGTERM not in got:
        return EXIT_REQUEUE
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    module = "pipeline"
    if argv[:1] == ["--module"]:
        module, argv = argv[1], argv[2:]
    if not argv:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    # SIGUSR1 before the training loop installs its handler must not kill the stage.
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    if in_slurm_job() and not under_torchrun() and num_nodes() * nproc_per_node() > 1:
        code = _run_distributed(module, argv)
    else:
        code = _run_in_process(module, argv)
    if code == EXIT_REQUEUE and in_slurm_job() and not under_torchrun():
        requeue()
    return code


if __name__ == "__main__":
    sys.exit(main())
