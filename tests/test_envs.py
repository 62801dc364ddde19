"""envs/pipeline.yaml (for `snakemake --sdm conda`) pins exactly what uv.lock resolved."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_conda_env_pins_match_lock():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {_norm(p["name"]): p["version"] for p in lock["package"] if "version" in p}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {_norm(re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}

    env = yaml.safe_load((ROOT / "envs" / "pipeline.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for line in pip_section:
        if line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        pins[_norm(name)] = version
    assert set(pins) == direct, "envs/pipeline.yaml must list exactly the direct dependencies of pyproject.toml"
    mismatched = {n: (v, locked.get(n)) for n, v in pins.items() if locked.get(n) != v}
    assert not mismatched, f"pins differ from uv.lock (env, lock): {mismatched}"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.startswith("python=3.11")
