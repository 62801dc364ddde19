"""The container definitions build the environment uv.lock pins, with CI's uv and the project's Python.

Checked statically: CI cannot build images (no Docker or Apptainer daemon, no network beyond the registries).
"""

import re
import tomllib

from conftest import ROOT

CONTAINERS = ROOT / "containers"


def _ci_uv() -> str:
    return re.search(r'"uv==([\d.]+)"', (ROOT / ".ci" / "run").read_text()).group(1)


def test_both_definitions_install_the_locked_environment_with_ci_s_uv():
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=(3\.\d+)", python).group(1)
    for name in ("Dockerfile", "tokenizer-repro.def"):
        text = (CONTAINERS / name).read_text()
        assert f'"uv=={_ci_uv()}"' in text, name
        assert "uv sync --frozen" in text, name  # exactly uv.lock, never a fresh resolution
        assert re.search(rf"^(FROM|From:) python:{re.escape(minor)}-slim", text, re.MULTILINE), name
    docker = (CONTAINERS / "Dockerfile").read_text()
    assert "COPY pyproject.toml uv.lock ./" in docker
