"""The tar-stream helper that runs on the head node, run here in-process on real files."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from galaxy_hpc_runner.transport import tarpipe


def upload_stream(entries: list[tuple[str, bytes, int]], extra: tuple[str, ...] = ()
                  ) -> io.BytesIO:
    """An upload stream as put_many sends it: the manifest, then member i = file i."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        manifest = json.dumps([[dest, len(data), mode] for dest, data, mode in entries]).encode()
        member = tarfile.TarInfo(tarpipe.MANIFEST)
        member.size = len(manifest)
        tar.addfile(member, io.BytesIO(manifest))
        for index, (_, data, _) in enumerate(entries):
            member = tarfile.TarInfo(str(index))
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        for name in extra:
            member = tarfile.TarInfo(name)
            tar.addfile(member, io.BytesIO(b""))
    buf.seek(0)
    return buf


def test_unpack_places_each_file_whole_with_its_mode(tmp_path: Path) -> None:
    entries = [(str(tmp_path / "job1" / "a"), b"alpha", 0o640),
               (str(tmp_path / "job2" / "deep" / "b"), os.urandom(3 << 20), 0o755),
               (str(tmp_path / "job1" / "empty"), b"", 0o600)]
    assert tarpipe.unpack(upload_stream(entries)) == {}
    for dest, data, mode in entries:
        assert Path(dest).read_bytes() == data
        assert stat.S_IMODE(os.stat(dest).st_mode) == mode
    assert sorted(p.name for p in (tmp_path / "job1").iterdir()) == ["a", "empty"]


def test_unpack_names_a_file_it_cannot_place_and_places_the_others(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where a directory should be")
    entries = [(str(tmp_path / "blocked" / "x"), b"x", 0o644), (str(tmp_path / "ok"), b"ok", 0o644)]
    errors = tarpipe.unpack(upload_stream(entries))
    assert list(errors) == ["0"] and "blocked/x" in errors["0"]
    assert (tmp_path / "ok").read_bytes() == b"ok"


def test_unpack_refuses_members_it_did_not_ask_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unexpected member"):
        tarpipe.unpack(upload_stream([(str(tmp_path / "a"), b"a", 0o644)], extra=("../evil",)))
    with pytest.raises(ValueError, match="unexpected member '1'"):
        tarpipe.unpack(upload_stream([(str(tmp_path / "a"), b"a", 0o644)], extra=("1",)))


def test_pack_sends_regular_files_only_and_says_why_not(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"alpha")
    (tmp_path / "a").chmod(0o751)
    (tmp_path / "secret").write_text("private")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    os.mkfifo(tmp_path / "fifo")
    paths = [str(tmp_path / n) for n in ("a", "link", "fifo", "missing")]
    buf = io.BytesIO()
    tarpipe.pack(paths, buf)
    buf.seek(0)
    got, status = {}, {}
    with tarfile.open(fileobj=buf, mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == tarpipe.STATUS:
                status = json.loads(data)
            else:
                got[member.name] = (data, member.mode)
    assert got == {"0": (b"alpha", 0o751)}
    assert "symbolic link" in status["errors"]["1"]
    assert "not a regular file" in status["errors"]["2"]
    assert "missing" in status["errors"]["3"]


def test_the_helper_runs_as_a_script_under_python_c(tmp_path: Path) -> None:
    """As the head node runs it: ``python -c SOURCE pack`` with the paths on stdin."""
    (tmp_path / "f").write_bytes(b"data")
    source = Path(tarpipe.__file__).read_text()
    proc = subprocess.run([sys.executable, "-c", source, "pack"], capture_output=True,
                          input=json.dumps([str(tmp_path / "f")]).encode(), check=True)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r|") as tar:
        assert [m.name for m in tar] == ["0", tarpipe.STATUS]
    proc = subprocess.run([sys.executable, "-c", source, "bogus"], capture_output=True)
    assert proc.returncode == 2 and b"usage" in proc.stderr
