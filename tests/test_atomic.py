"""soraflow.common.atomic: the temp-then-rename writer every step uses."""

import os
import stat

import pytest

from soraflow.common.atomic import atomic_path, write_text_atomic


def test_success_replaces_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "table.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["table.json"]  # no temporary left behind


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "clips.parquet"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["clips.parquet"]
