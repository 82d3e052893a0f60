import os

import pytest

from minillm.files import atomic_write


def test_atomic_write_replaces_and_follows_the_umask(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("hello")
    assert path.read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise error()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
