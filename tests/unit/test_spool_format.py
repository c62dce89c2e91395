"""The spool says which format wrote it; a newer one is refused before anything is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import spool_format
from galaxy_hpc_runner.dropbox.spool import Spool
from galaxy_hpc_runner.dropbox.spool_records import SpoolError


def test_a_new_spool_gets_this_release_format(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    written = json.loads((tmp_path / "spool" / spool_format.FORMAT_FILE).read_text())
    assert written == {"spool_format": spool_format.SPOOL_FORMAT} == {"spool_format": 2}
    assert spool.format == 2


def test_a_spool_from_before_the_file_is_format_1_and_is_upgraded(tmp_path: Path) -> None:
    (tmp_path / "spool" / "jobs").mkdir(parents=True)
    assert Spool(tmp_path / "spool").format == 2
    assert spool_format.read_format(tmp_path / "spool" / spool_format.FORMAT_FILE) == 2


def test_a_format_1_spool_is_upgraded_and_its_records_read(tmp_path: Path) -> None:
    (tmp_path / "spool" / "jobs").mkdir(parents=True)
    (tmp_path / "spool" / spool_format.FORMAT_FILE).write_text('{"spool_format": 1}')
    (tmp_path / "spool" / "jobs" / "old.json").write_text(  # format 1: one object, no newline
        '{"name": "old", "state": "staged", "meta": {"key": "k"}}')
    spool = Spool(tmp_path / "spool")
    rec = spool.get("old")
    assert rec is not None and rec.state == "staged" and rec.meta == {"key": "k"}
    assert spool.format == 2  # an older release now refuses the spool instead of misreading it


def test_a_newer_release_spool_is_refused_naming_both_formats(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    newer = spool_format.SPOOL_FORMAT + 1
    (tmp_path / "spool" / spool_format.FORMAT_FILE).write_text('{"spool_format": %d}' % newer)
    with pytest.raises(SpoolError, match="spool format %d, this release reads formats 1 to %d"
                       % (newer, spool_format.SPOOL_FORMAT)):
        Spool(tmp_path / "spool")


@pytest.mark.parametrize("text", ['{"spool_format": "2"}', "[]", "not json", '{"spool_format": 0}'])
def test_a_garbled_format_file_is_named(tmp_path: Path, text: str) -> None:
    Spool(tmp_path / "spool")
    (tmp_path / "spool" / spool_format.FORMAT_FILE).write_text(text)
    with pytest.raises(SpoolError, match=r"format: .*restore it"):
        Spool(tmp_path / "spool")


def test_a_link_as_format_file_is_not_followed(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    target = tmp_path / "elsewhere"
    target.write_text('{"spool_format": 1}')
    path = tmp_path / "spool" / spool_format.FORMAT_FILE
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(SpoolError, match="cannot be read"):
        Spool(tmp_path / "spool")

