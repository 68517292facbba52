"""fileio.py: a write lands whole or not at all, and a read is refused in one line unless the path is a
regular file."""
import os

import pytest

from fileio import atomic_write, publish, regular_file, temp_path


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.bin"
    assert atomic_write(path, b"old") == path and path.read_bytes() == b"old"
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"

    def torn(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, torn)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]  # the temp file is gone
    assert temp_path(path) == f"{path}.tmp{os.getpid()}"


def test_publish_renames_a_finished_file(tmp_path):
    (tmp_path / "f.part").write_bytes(b"data")
    publish(tmp_path / "f.part", tmp_path / "f")
    assert os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_bytes() == b"data"


def test_regular_file_or_one_line(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("f", tmp_path / "link")
    assert regular_file(tmp_path / "f") == 5 and regular_file(tmp_path / "link", "weight file") == 5
    for name, what, words in (("missing", None, "missing: no such file"), ("fifo", None, "fifo: not a regular file"),
                              (".", None, ": not a regular file"),
                              ("missing", "config.json", "missing: cannot read the config.json (No such file"),
                              ("fifo", "weight file", "fifo: the weight file is not a regular file")):
        with pytest.raises(ValueError) as e:
            regular_file(tmp_path / name, what)
        assert words in str(e.value) and "\n" not in str(e.value)
