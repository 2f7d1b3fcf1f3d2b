"""Durable writes (`staria.files`): the old file or the whole new one, whatever fails."""

import errno
import json
import os

import pytest

from staria.files import PARTIAL_SUFFIX, partial_path, write_durably, write_json_atomic


@pytest.mark.parametrize("written_before_failure", [0, 1, 100, 4096])
@pytest.mark.parametrize("unique", [False, True])
def test_a_write_that_fails_keeps_the_old_file_and_names_the_path(
    tmp_path, written_before_failure, unique
):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"old": True})

    def fill_the_disk(handle):
        handle.write(b"x" * written_before_failure)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk: no file name

    with pytest.raises(OSError) as error:
        write_durably(path, fill_the_disk, unique=unique)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_kill_during_the_write_leaves_only_a_hidden_partial_file(tmp_path):
    path = tmp_path / "last.ckpt"

    class Killed(BaseException):  # what a signal handler's exit looks like to the writer
        pass

    def killed(handle):
        handle.write(b"half")
        raise Killed

    with pytest.raises(Killed):
        write_durably(path, killed)
    assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".last.ckpt{PARTIAL_SUFFIX}"]
    write_durably(path, lambda handle: handle.write(b"whole"))
    assert path.read_bytes() == b"whole"
    assert not (tmp_path / f".last.ckpt{PARTIAL_SUFFIX}").exists()  # the same name, renamed


def test_unique_partial_names_differ_by_process(tmp_path):
    assert partial_path(tmp_path / "plan.json", unique=True).name == (
        f".plan.json.{os.getpid()}{PARTIAL_SUFFIX}"
    )
