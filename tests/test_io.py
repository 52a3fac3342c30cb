import json
import os
import stat
import time

import pytest

from vcm_d2.utils.io import atomic_write, atomic_write_bytes, atomic_write_json, remove_orphan_temp_files


def test_atomic_write_replaces_and_uses_the_umask(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    old = os.umask(0o022)
    try:
        atomic_write_bytes(path, b"new")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_remove_orphan_temp_files_only_of_the_given_targets(tmp_path):
    seen = []
    atomic_write_bytes(tmp_path / "keep.bin", b"x")
    # the temp name atomic_write really uses, as a killed writer would leave it
    atomic_write(tmp_path / "out.bin", lambda f: seen.extend(os.listdir(tmp_path)))
    (real_orphan,) = set(seen) - {"keep.bin"}
    names = [real_orphan, ".out.bin.abc123.tmp", ".keep.bin.abc123.tmp", ".out.bin.tmp",
             "out.bin.abc123.tmp", ".out.bin.abc.123.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    removed = remove_orphan_temp_files(tmp_path, ["out.bin", "absent.bin"])
    assert sorted(os.path.basename(p) for p in removed) == sorted([real_orphan, ".out.bin.abc123.tmp"])
    # other targets' temp files and names that are not atomic_write's stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["keep.bin", "out.bin"] + names[2:])
    assert remove_orphan_temp_files(tmp_path / "missing", ["out.bin"]) == []


def test_remove_orphan_temp_files_older_than(tmp_path):
    now = time.time()
    old, live = tmp_path / ".m.json.old123.tmp", tmp_path / ".m.json.new123.tmp"
    for path, mtime in ((old, now - 60), (live, now + 60)):
        path.write_bytes(b"{")
        os.utime(path, (mtime, mtime))
    assert remove_orphan_temp_files(tmp_path, ["m.json"], older_than=now) == [str(old)]
    assert [p.name for p in tmp_path.iterdir()] == [live.name]
