"""Atomic writes and the directory lock (aragog_jax/_files.py)."""

from __future__ import annotations

import json
import os

import pytest

from aragog_jax._files import DirLock, atomic_write, atomic_writer
from aragog_jax.errors import AragogError


def test_atomic_writer_replaces_the_file_or_leaves_it_alone(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, "old\n")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_writer(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("mid-write")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["state.json"]
    atomic_write(path, b"new\n")
    assert path.read_bytes() == b"new\n" and os.listdir(tmp_path) == ["state.json"]


def test_dir_lock_refuses_a_second_holder_naming_the_first_and_is_free_after_release(tmp_path):
    with DirLock(tmp_path, "x.lock", "label run"):
        held = json.loads((tmp_path / "x.lock").read_text())
        assert held["pid"] == os.getpid() and held["host"] and held["started"].endswith("Z")
        with pytest.raises(
            AragogError, match=rf"another label run is using it \(pid {os.getpid()} on .*x\.lock"
        ):
            DirLock(tmp_path, "x.lock", "label run").acquire()
    with DirLock(tmp_path, "x.lock", "label run"):
        pass
    assert (tmp_path / "x.lock").read_text() == ""
