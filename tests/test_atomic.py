"""Write-then-rename (verbalize.atomic): a file or directory appears whole, and a failure keeps the earlier one."""

import pytest

from verbalize.atomic import atomic_dir, atomic_file, atomic_path, write_bytes, write_text


class Crash(Exception):
    pass


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_file_is_replaced_whole_and_a_failed_write_keeps_the_earlier_one(tmp_path):
    target = tmp_path / "sub" / "state.json"
    assert write_text(target, "first") == target and target.read_text() == "first"  # the folder is made
    with pytest.raises(Crash), atomic_file(target) as f:
        f.write("half of the sec")
        raise Crash
    assert target.read_text() == "first" and _siblings(target.parent) == ["state.json"]  # no temporary left
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second" and _siblings(target.parent) == ["state.json"]


def test_a_path_for_other_writers_is_renamed_in_only_on_success(tmp_path):
    target = tmp_path / "part-000000.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".part-000000.parquet.tmp-")
        tmp.write_bytes(b"data")
        assert not target.exists()  # nothing under the name while it is written
    assert target.read_bytes() == b"data"
    with pytest.raises(Crash), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise Crash
    assert target.read_bytes() == b"data" and _siblings(tmp_path) == ["part-000000.parquet"]


def test_a_directory_is_replaced_and_a_failure_at_any_step_keeps_the_earlier_one(tmp_path):
    target = tmp_path / "clf"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    assert (target / "a.txt").read_text() == "old"
    with pytest.raises(Crash), atomic_dir(target) as tmp:  # fails while it is filled
        (tmp / "a.txt").write_text("new")
        raise Crash
    assert (target / "a.txt").read_text() == "old"

    for step in ("rename", "clean up"):

        def crash_at(name, step=step):
            if name == step:
                raise Crash(name)

        with pytest.raises(Crash), atomic_dir(target, checkpoint=crash_at) as tmp:
            (tmp / "a.txt").write_text(f"new at {step}")
        # before the rename: the earlier directory is put back; after it: the new one is complete
        assert (target / "a.txt").read_text() == ("old" if step == "rename" else "new at clean up")
        assert _siblings(tmp_path) == ["clf"]  # no temporary or set-aside copy is left


def test_keep_existing_lets_the_first_complete_writer_win(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target, keep_existing=True) as first:
        (first / "config.json").write_text("first")
        with atomic_dir(target, keep_existing=True) as second:  # a concurrent conversion finishes first
            (second / "config.json").write_text("second")
    assert (target / "config.json").read_text() == "second" and _siblings(tmp_path) == ["model"]
    with atomic_dir(target) as third:  # without keep_existing, the earlier directory is replaced
        (third / "config.json").write_text("third")
    assert (target / "config.json").read_text() == "third" and _siblings(tmp_path) == ["model"]


def test_atomic_file_only_writes_new_files(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), atomic_file(tmp_path / "x", "a"):
        pass
