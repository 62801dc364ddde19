"""Command line: ``python -m pipeline <stage>`` runs one DVC stage; ``configure`` writes params.yaml.

Every stage's command runs this module, so what it imports is a dependency of every stage: it imports
no stage and no report code (``python -m pipeline.verify`` checks a finished checkout).

Each stage lives in ``pipeline/stages/<stage>.py`` and exposes ``run(params)``; the subcommand name is
the stage name in ``dvc.yaml``. Parameters are validated before the stage module is even imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from pipeline import param_reads, profiles, tracking
from pipeline import params as params_mod
from pipeline.errors import InputError
from pipeline.io import write_text


def _pin_threads() -> None:
    """Use the same number of CPU threads whoever launches the stage.

    Float reductions on the CPU depend on the thread count, and Snakemake sets ``OMP_NUM_THREADS`` to a
    rule's ``threads``; pinning torch to the machine's core count (or ``PIPELINE_TORCH_THREADS``) makes
    ``dvc repro``, Snakemake and SLURM jobs write identical outputs for the same seed.
    """
    import torch

    torch.set_num_threads(int(os.environ.get("PIPELINE_TORCH_THREADS") or os.cpu_count() or 1))


def _configure(args: argparse.Namespace) -> int:
    raw = profiles.resolve_profile(args.profile)
    for assignment in args.set or []:
        profiles.set_dotted(raw, assignment)
    validated = params_mod.validate(raw, f"conf/{args.profile}.yaml")
    lost = profiles.edits_lost_by(args.output, validated.model_dump(mode="json")) if (
        args.output.is_file() and not args.force) else []
    if lost:
        shown = ", ".join(lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
        print(f"error: {args.output} was edited since configure wrote it (by hand or by `dvc exp run -S`), and "
              f"configure {args.profile} would replace {shown}. Keep the values with `--set KEY=VALUE` (or in "
              f"conf/{args.profile}.yaml), or discard them with `--force`.", file=sys.stderr)
        return 2
    write_text(args.output, profiles.dump(validated))
    print(f"wrote {args.output} (profile {args.profile})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipeline``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("configure", help="write params.yaml from a profile in conf/")
    conf.add_argument("profile", help="profile name: a file conf/<profile>.yaml (demo, paper, micro)")
    conf.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one dotted key")
    conf.add_argument("--output", default=params_mod.PARAMS_FILE, type=Path)
    conf.add_argument("--force", action="store_true",
                      help="overwrite values edited in the output since configure wrote it")
    check = sub.add_parser("check-params", help="validate params.yaml and exit")
    check.add_argument("--params", default=params_mod.PARAMS_FILE, type=Path)
    for name in params_mod.stage_names():
        p = sub.add_parser(name, help=f"run the DVC stage {name}")
        p.add_argument("--params", default=params_mod.PARAMS_FILE, type=Path)
    args = parser.parse_args(argv)

    try:
        if args.command == "configure":
            return _configure(args)
        params = params_mod.load(args.params)
    except params_mod.ParamsError as err:
        print(f"error: invalid parameters\n{err}", file=sys.stderr)
        return 2
    if args.command == "check-params":
        print(f"{args.params}: valid (profile {params.profile})")
        return 0
    _pin_threads()
    stage = importlib.import_module(f"pipeline.stages.{args.command}")
    record = os.environ.get(param_reads.ENV)
    if record:  # the test of dvc.yaml's params: which keys does the stage read?
        params = param_reads.RecordingView(params)
    # The stage's whole output, its error line included, goes into its MLflow run as logs/<stage>.log.
    with tracking.stage_output_logged(args.command):
        try:
            return stage.run(params) or 0
        except InputError as err:
            print(f"error: {args.command}: {err}", file=sys.stderr)
            return 2
        finally:
            if record:
                params.write(Path(record) / f"{args.command}.json")


if __name__ == "__main__":
    sys.exit(main())
