"""Atomic outputs: an interrupted write leaves nothing that looks complete; a rerun recovers."""

import os

import pytest

from pipeline.io import MISSING, atomic_dir, atomic_file, flatten, lookup, write_json


def test_atomic_dir_publishes_only_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "part.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"


def test_atomic_dir_replaces_previous_output(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_temporaries_from_a_killed_process_are_removed(tmp_path):
    target = tmp_path / "metrics.json"
    stale = tmp_path / ".metrics.json.tmp-99999"
    stale.write_text("half")
    write_json(target, {"a": 1})
    assert not stale.exists()
    assert target.read_text().strip().startswith("{")


def test_atomic_file_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("complete")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_killed_process_leaves_no_output(tmp_path):
    target = tmp_path / "out"
    pid = os.fork()
    if pid == 0:
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("x")
            os._exit(9)
    os.waitpid(pid, 0)
    assert not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "y").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_lookup_and_flatten_are_inverse_on_nested_mappings():
    tree = {"a": {"b": 1, "c": None, "empty": {}}, "d": [10, 20], "e": "x"}
    assert flatten(tree) == {"a.b": 1, "a.c": None, "d": [10, 20], "e": "x"}  # an empty mapping leaves no key
    assert all(lookup(tree, key) == value for key, value in flatten(tree).items())
    assert lookup(tree, "a.c") is None and lookup(tree, "a.x") is MISSING  # None is a value, MISSING is absence
    assert lookup(tree, "d.1") == 20 and lookup(tree, "d.2") is MISSING and lookup(tree, "e.0") is MISSING
    assert flatten(3) == {"": 3}
