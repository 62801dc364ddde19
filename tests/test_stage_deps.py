"""Every stage in dvc.yaml lists, in its ``deps``, every file under ``pipeline/`` its command can import.

DVC reruns a stage only when one of its declared deps changes. A module the stage imports but does not
declare (a helper such as ``pipeline/models/local_init.py``, a package ``__init__.py``, the CLI that
dispatches to the stage) can change what the stage computes while ``dvc status`` keeps calling it
up to date, and the outputs in dvc.lock silently stop matching the code.

The import closure is computed statically with :mod:`ast` (no torch import, milliseconds): every
``import`` / ``from ... import`` anywhere in a module, function-local ones included, because a branch
that is not taken today may be taken by tomorrow's params. Only imports inside ``if TYPE_CHECKING:`` are
left out: they never run, so they cannot change an output. Imports this walk cannot see (``importlib``,
``runpy``) must be listed in :data:`DYNAMIC_IMPORTS` with how they are modelled, and non-Python files a
module reads by a path relative to itself in :data:`DATA_DEPS`; two guard tests keep both lists honest.
"""

from __future__ import annotations

import ast
import os
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pipeline"
# dvc.yaml's indentation of a deps item, so that the failure message can be pasted as it is.
DEP_LINE = "      - {}"

# The two command lines a stage may have, and the module each runs first. ``python -m pipeline`` imports
# pipeline/__init__.py and runs pipeline/__main__.py; ``python -m pipeline.launch`` runs
# pipeline/launch.py, which (in process, or through torchrun on each worker) calls
# ``pipeline.__main__.main`` -- an import the walk follows by itself. Either way ``__main__`` ends with
# ``importlib.import_module(f"pipeline.stages.{stage}")``, which the walk cannot follow: the stage module
# is therefore a second entry module (checked against the code by test_dynamic_imports_are_modelled).
ENTRY_MODULES = {"pipeline": "pipeline.__main__", "pipeline.launch": "pipeline.launch"}

# Every import the ast walk cannot follow, keyed by (file, call), with why it is safe to ignore or how
# the test models it. A new dynamic import fails test_dynamic_imports_are_modelled until it is added here
# (and, if a stage can reach it, modelled in stage_entry_modules).
DYNAMIC_IMPORTS = {
    ("pipeline/__main__.py", "importlib.import_module"):
        "imports pipeline.stages.<stage> for the stage named on the command line: an entry module",
    ("pipeline/launch.py", "runpy.run_module"): "only with --module (tests' toy trainer); no dvc.yaml cmd uses it",
    ("pipeline/launch.py", "runpy.run_path"): "only with --module <script.py>; no dvc.yaml cmd uses it",
}
_DYNAMIC_CALLS = {"importlib.import_module", "import_module", "__import__", "runpy.run_module", "runpy.run_path",
                  "run_module", "run_path",
                  "importlib.util.spec_from_file_location", "importlib.machinery.SourceFileLoader"}

# Non-Python files a module reads by a path relative to its own file (``Path(__file__)``), keyed by the
# module: a stage whose closure holds the module depends on them too. Paths outside pipeline/ are left
# to the stage's other deps / params, as for the ``${paths...}`` deps.
DATA_DEPS = {
    # open_clip model configs, looked up by model name (CONFIG_DIR / f"{model}.json"): the whole folder.
    "pipeline/models/clip.py": ("pipeline/models/configs",),
    # conf/<profile>.yaml (outside pipeline/), read only by `python -m pipeline configure`.
    "pipeline/profiles.py": (),
    # REPO_ROOT, the checkout itself (outside pipeline/).
    "pipeline/tracking.py": (),
    # CODE_ROOT: hashes the package's code into the checkpoint folder's name (which run may resume),
    # never into an output.
    "pipeline/stages/_common.py": (),
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_file(name: str) -> Path | None:
    """The file of module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py) if it is part of the package."""
    if name.split(".")[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_files(name: str) -> list[Path]:
    """Files that importing ``name`` executes: each enclosing package's ``__init__.py``, then the module."""
    parts = name.split(".")
    files = [module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    return [f for f in files if f is not None] if files[-1] is not None else []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, in function bodies too, except the body of ``if TYPE_CHECKING:`` (never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_names(path: Path) -> set[str]:
    """Dotted names of the modules ``path`` can import (some may be attributes: resolved by the caller)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_nodes(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from pipeline.x import y` imports the submodule pipeline.x.y when there is one.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def closure(entry_modules: list[str]) -> set[str]:
    """Repository-relative paths of every file under pipeline/ reachable by imports from the entries."""
    missing = [m for m in entry_modules if not module_files(m)]
    assert not missing, f"entry modules not found under {PACKAGE}/: {missing}"
    todo = [f for m in entry_modules for f in module_files(m)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            todo.extend(module_files(name))
    return {_rel(p) for p in seen}


def required_deps(files: set[str]) -> set[str]:
    """The closure plus the data files its modules read by path (:data:`DATA_DEPS`)."""
    return files | {d for f in files for d in DATA_DEPS.get(f, ()) if d.startswith(f"{PACKAGE}/")}


def covered(path: str, deps: list[str]) -> bool:
    """A dep covers ``path`` when it is that path or a folder containing it (as DVC hashes folders)."""
    return any(path == d or path.startswith(f"{d}/") for d in deps)


def load_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_entry_modules(cmd: str) -> list[str]:
    """Entry modules of ``python -m pipeline <stage>`` / ``python -m pipeline.launch <stage>``."""
    argv = shlex.split(cmd)
    if len(argv) != 4 or argv[:2] != ["python", "-m"] or argv[2] not in ENTRY_MODULES:
        raise ValueError(f"not `python -m pipeline[.launch] <stage>`: {cmd!r}")
    return [ENTRY_MODULES[argv[2]], f"{PACKAGE}.stages.{argv[3]}"]


def code_deps(stage: dict) -> list[str]:
    """The stage's deps under pipeline/, normalised; ``${paths.data}/...`` and other data deps are ignored."""
    deps = [next(iter(d)) if isinstance(d, dict) else str(d) for d in stage.get("deps") or []]
    return [os.path.normpath(d) for d in deps if "${" not in d and os.path.normpath(d).split(os.sep)[0] == PACKAGE]


def test_every_stage_cmd_is_understood():
    """A stage whose cmd has another form would escape the coverage test below: fail instead."""
    problems = []
    for name, stage in load_stages().items():
        try:
            entries = stage_entry_modules(stage.get("cmd", ""))
        except ValueError as err:
            problems.append(f"{name}: {err}")
            continue
        if module_file(entries[-1]) is None:
            problems.append(f"{name}: no module {entries[-1]}")
    assert not problems, "\n".join(problems)


def _calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_dynamic_imports_are_modelled():
    """The ast walk sees only import statements: every other way of importing must be accounted for."""
    found = {(_rel(p), func) for p in sorted((ROOT / PACKAGE).rglob("*.py")) for func, _ in _calls(p)
             if func in _DYNAMIC_CALLS}
    unknown = sorted(found - DYNAMIC_IMPORTS.keys())
    assert not unknown, ("dynamic imports the stage-deps test does not model (add them to DYNAMIC_IMPORTS, "
                         f"and to stage_entry_modules if a stage can reach them): {unknown}")
    # The stage module as second entry module relies on __main__ importing exactly pipeline.stages.<stage>.
    args = [ast.unparse(call.args[0]) for func, call in _calls(ROOT / PACKAGE / "__main__.py")
            if func == "importlib.import_module"]
    assert args and all(a.startswith("f'pipeline.stages.{") for a in args), (
        f"pipeline/__main__.py no longer imports pipeline.stages.<stage> as modelled: {args}")


def test_path_relative_reads_are_declared():
    """A module that opens files next to itself makes those files deps of its stages: list them."""
    users = {_rel(p) for p in (ROOT / PACKAGE).rglob("*.py")
             if any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(_tree(p)))}
    assert users <= DATA_DEPS.keys(), f"modules using __file__, not in DATA_DEPS: {sorted(users - DATA_DEPS.keys())}"
    missing = [d for ds in DATA_DEPS.values() for d in ds if not (ROOT / d).exists()]
    assert not missing, f"DATA_DEPS names paths that do not exist: {missing}"


def test_stage_deps_cover_import_closure():
    """Each stage's deps cover its import closure (and the data files of DATA_DEPS)."""
    problems = []
    for name, stage in load_stages().items():
        deps = code_deps(stage)
        required = required_deps(closure(stage_entry_modules(stage["cmd"])))
        problems += [f"{name}: add {DEP_LINE.format(f)!r} to deps" for f in sorted(required)
                     if not covered(f, deps)]
    if problems:  # pytest.fail: the list itself, without assert's repr of it
        pytest.fail("dvc.yaml: stages whose deps miss files they can import, so `dvc status` would not see them "
                    "change:\n" + "\n".join(problems), pytrace=False)


def test_stage_file_deps_are_in_import_closure():
    """A file dep outside the closure makes a stage stale for code it never runs: keep each list honest.

    Directory deps may be broader than the closure (``pipeline/train`` for a training stage).
    """
    problems = []
    for name, stage in load_stages().items():
        required = required_deps(closure(stage_entry_modules(stage["cmd"])))
        problems += [f"{name}: remove {DEP_LINE.format(d)!r} from deps (not imported by the stage)"
                     for d in code_deps(stage) if d.endswith(".py") and d not in required]
    if problems:
        pytest.fail("dvc.yaml: stages that depend on files they never import:\n" + "\n".join(problems),
                    pytrace=False)
