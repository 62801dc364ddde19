"""Which stages does `dvc status` report after a change to each file of pipeline/models/?

    .venv/bin/python bench/stale_stages.py [--out bench/figures/stale_stages.png]

Run by hand on a checkout whose pipeline is up to date (`dvc status` clean). The checkout's tracked
files, ``dvc.lock`` and the stage outputs are copied into a temporary folder that reads the checkout's
DVC cache (the checkout itself is never touched); there, for each ``pipeline/models/*`` file in turn,
one comment line is appended, ``dvc status`` lists the stages it calls changed, and the file is
restored. The expected answer is the set of stages whose import closure holds the file (the closure
``tests/test_stage_deps.py`` derives from the code), plus ``report``, which depends on the whole
package on purpose. Prints the table and writes it as a figure: a cell is green where DVC and the
import closure agree that the stage is stale, red where they disagree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_stage_deps import (  # noqa: E402
    closure,
    code_deps,
    covered,
    load_stages,
    required_deps,
    stage_entry_modules,
)

OUTPUT_ROOTS = ("data", "models", "results")  # the demo's outputs (paths.* of params.yaml)


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for rel in [f for f in files.split("\0") if f] + ["dvc.lock"]:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    for rel in OUTPUT_ROOTS:
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, dest / rel, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(ROOT / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"), dirs_exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    # the checkout's own cache, read only (`dvc status` checks the outputs against it, never writes)
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "cache.dir", str(ROOT / ".dvc" / "cache")],
                   cwd=dest, check=True)


def stale_stages(repo: Path) -> set[str]:
    """Stages `dvc status` reports as changed in ``repo``."""
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout
    return set(json.loads(out or "{}"))


def expected_stages(path: str, stages: dict[str, dict]) -> set[str]:
    """Stages whose code (import closure) holds ``path``, plus those that depend on the whole package on
    purpose (``report``: it cites dvc.lock, which changes with any code)."""
    def imports(st: dict) -> bool:
        return covered(path, sorted(required_deps(closure(stage_entry_modules(st["cmd"])))))

    return {name for name, st in stages.items() if "pipeline" in code_deps(st) or imports(st)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "figures" / "stale_stages.png")
    args = ap.parse_args()
    stages = load_stages()
    names = list(stages)
    models = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pipeline" / "models").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        _copy_checkout(repo)
        before = stale_stages(repo)
        if before:
            print(f"the checkout is not up to date (dvc status: {sorted(before)}); run `dvc repro` first")
            return 1
        for rel in models:
            original = (repo / rel).read_bytes()
            (repo / rel).write_bytes(original + (b"\n# touched\n" if rel.endswith(".py") else b"\n"))
            try:
                rows.append((rel, stale_stages(repo), expected_stages(rel, stages)))
            finally:
                (repo / rel).write_bytes(original)
    width = max(len(r[0]) for r in rows)
    print(f"{'file':<{width}}  agree  dvc status reports")
    for rel, got, want in rows:
        print(f"{rel:<{width}}  {'yes' if got == want else 'NO':<5}  {', '.join(n for n in names if n in got)}"
              + ("" if got == want else f"   (import closure: {', '.join(n for n in names if n in want)})"))
    _figure(rows, names, args.out)
    print(f"wrote {args.out}")
    return 0 if all(got == want for _, got, want in rows) else 1


def _figure(rows: list[tuple[str, set[str], set[str]]], names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # 0: neither, 1: both say stale, 2: they disagree
    cells = np.array([[(1 if n in got and n in want else 2 if (n in got) != (n in want) else 0) for n in names]
                      for _, got, want in rows])
    colours = matplotlib.colors.ListedColormap(["#f4f4f4", "#4caf50", "#e53935"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(names), 0.9 + 0.32 * len(rows)))
    ax.imshow(cells, cmap=colours, vmin=0, vmax=2, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0].removeprefix("pipeline/models/") for r in rows], fontsize=8)
    ax.set_title("dvc status after touching one file of pipeline/models/\n"
                 "green: stale, as the import closure predicts; red: disagreement", fontsize=9)
    ax.set_xticks(np.arange(-0.5, len(names)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
