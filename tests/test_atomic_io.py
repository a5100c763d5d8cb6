import errno

import pytest

from cloc_mllm.atomic_io import atomic_output_dir, atomic_path, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "plot.png"
    write_text_atomic(target, "old")
    with pytest.raises(OSError, match="plot.png") as caught:
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path  # writers that go by the suffix work
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_a_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
