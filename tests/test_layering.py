"""The package's import structure: no circle, and no arrow from the library back to the stage side.

The library (``pipeline/models``, ``metrics``, ``train``, ``experiments``, ``data``) takes plain values
and is reusable without a ``params.yaml``; the stage side (``pipeline/stages``, ``params``, ``layout``,
``tracking``, the CLI) turns parameters into those values. An import from the library back up would tie
the library to the schema again, and an import circle held together by a function-local import breaks
the package the day someone tidies that import up to the top of its file.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
LIBRARY = ("models", "metrics", "train", "experiments", "data")
# Leaf modules of the package that the library may use: they import nothing else of the package.
SHARED = ("pipeline.errors", "pipeline.io")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> list[str]:
    return sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> list[tuple[ast.stmt, str]]:
    """Every import statement in ``path`` (module level, in functions, under TYPE_CHECKING) with the
    absolute name of each module it imports (``from a import b`` gives ``a.b``: b may be a submodule)."""
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found += [(node, f"{base}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


# A fresh interpreter imports each module of the package as the first one, in turn: ``sys.modules`` is
# cleared of ``pipeline*`` before each, so a circle that only resolves in one import order fails here
# (third-party modules stay loaded, which keeps the whole walk to seconds).
_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "pipeline" or k.startswith("pipeline.")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print("RESULT " + json.dumps(failures))
"""


def test_every_module_imports_alone():
    """No import circle: every module of the package imports with nothing of the package loaded before it."""
    modules = _modules()
    assert "pipeline.models.titok" in modules and "pipeline.stages.report" in modules
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"the import walk itself failed:\n{done.stderr[-3000:]}"
    failures = json.loads(lines[-1].removeprefix("RESULT "))
    if failures:
        pytest.fail("modules that fail to import when imported first (an import circle?):\n"
                    + "\n".join(f"{name}:\n{tb}" for name, tb in failures.items()), pytrace=False)


def test_no_import_circle_even_through_function_local_imports():
    """The static import graph of the package (every import, in functions too) has no circle."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}

    def target(name: str) -> str | None:  # ``a.b.C`` -> module ``a.b``
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {t for _, n in _imports(p) if (t := target(n)) not in (None, m)} for m, p in files.items()}
    circles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            module, route = stack.pop()
            for nxt in sorted(graph[module]):
                if nxt == start:
                    circles.append(" -> ".join([*route, start]))
                elif nxt not in seen and nxt > start:  # each circle reported once, from its smallest module
                    seen.add(nxt)
                    stack.append((nxt, [*route, nxt]))
    if circles:
        pytest.fail("import circles (a function-local import that closes one still makes it):\n"
                    + "\n".join(circles), pytrace=False)


def test_the_library_never_imports_the_stage_side():
    """``pipeline/{models,metrics,train,experiments,data}`` import only the library and ``errors`` / ``io``;
    ``models`` only itself and ``errors`` / ``io`` (pure PyTorch: usable on a bare GPU box)."""
    library = tuple(f"pipeline.{p}" for p in LIBRARY)
    problems = []
    for part in LIBRARY:
        allowed = ("pipeline.models", *SHARED) if part == "models" else (*library, *SHARED)
        for path in sorted((PACKAGE / part).rglob("*.py")):
            for node, name in _imports(path):
                if _within(name, ("pipeline",)) and name != "pipeline" and not _within(name, allowed):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name}")
    if problems:
        pytest.fail("library modules importing outside the library (take plain values from the stage instead; "
                    "pipeline.params and pipeline.stages belong to the stage side):\n" + "\n".join(problems),
                    pytrace=False)


def test_models_have_no_function_local_imports_of_the_package():
    """In ``pipeline/models`` every import of the package is at module level: a function-local one is how a
    circle hides (it works until someone moves it to the top of its file)."""
    problems = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        top = set(map(id, _tree(path).body))
        for node, name in _imports(path):
            if _within(name, ("pipeline",)) and id(node) not in top:
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name} inside a function or a "
                                "block (if TYPE_CHECKING included)")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
