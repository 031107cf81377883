"""Atomic writes: the whole file or the old one, never a temporary left behind, and the
permissions a plain open() gives."""

import os
import stat

import pytest

from nfcli.io import atomic_write


def test_atomic_write_replaces_the_file_with_open_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "model.pt"
        target.write_bytes(b"old")
        atomic_write(target, lambda f: f.write(b"new"))
        assert target.read_bytes() == b"new"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "private.png", lambda f: f.write(b"x"))
        assert stat.S_IMODE((tmp_path / "private.png").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "private.png"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
