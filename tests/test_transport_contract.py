"""One contract, two transports: the same assertions on LocalTransport and on SshTransport
through a real sshd (tests/services), so the submitter cannot tell them apart."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import (
    LocalTransport,
    ManyTransferError,
    Transport,
    UnsafeRemoteFile,
)
from galaxy_hpc_runner.transport.ssh import SshTransport
from hpc_worker import protocol as p


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def t(request: pytest.FixtureRequest) -> Iterator[Transport]:
    if request.param == "local":
        yield LocalTransport()
        return
    server = request.getfixturevalue("ssh_server")
    transport = SshTransport(host=server.host, port=server.port, user=server.user,
                             key_file=str(server.client_key_path),
                             known_hosts=str(server.known_hosts_path), timeout=10)
    yield transport
    transport.close()


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_keeps_bytes_and_mode_masked_by_the_umask(t: Transport, tmp_path: Path
                                                             ) -> None:
    src, remote, back = tmp_path / "src", tmp_path / "hpc" / "x.bin", tmp_path / "back"
    src.write_bytes(os.urandom(70000))
    src.chmod(0o751)
    t.makedirs(str(remote.parent))
    t.put(str(src), str(remote))
    t.get(str(remote), str(back))
    assert back.read_bytes() == src.read_bytes()
    want = 0o751 & ~p.current_umask()
    assert stat.S_IMODE(remote.stat().st_mode) == want
    assert stat.S_IMODE(back.stat().st_mode) == want
    src.chmod(0o600)
    t.put(str(src), str(remote))
    assert stat.S_IMODE(remote.stat().st_mode) == 0o600
    assert visible(remote.parent) == ["x.bin"]
    assert visible(tmp_path) == ["back", "hpc", "src"]


def test_get_and_read_refuse_links_and_non_files(t: Transport, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("private\n")
    (tmp_path / "link").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("link", "fifo", "dir"):
        with pytest.raises(UnsafeRemoteFile, match=name):
            t.get(str(tmp_path / name), str(tmp_path / "out"))
        with pytest.raises(UnsafeRemoteFile, match=name):
            t.read_bytes(str(tmp_path / name))
    assert not (tmp_path / "out").exists()
    with pytest.raises(RemoteFileMissing, match="nothing-here"):
        t.read_bytes(str(tmp_path / "nothing-here"))
    with pytest.raises(RemoteFileMissing, match="nothing-here"):
        t.get(str(tmp_path / "nothing-here"), str(tmp_path / "out"))


def test_put_refuses_a_linked_source(t: Transport, tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(TransportError, match="alias"):
        t.put(str(tmp_path / "alias"), str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def test_reads_are_bounded(t: Transport, tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"a" * 5000 + b"THE END\n")
    assert t.read_bytes(str(log), limit=8) == b"THE END\n"
    assert t.read_text(str(log), limit=100000) == "a" * 5000 + "THE END\n"
    assert t.read_bytes(str(log), limit=0) == b""
    with pytest.raises(UnsafeRemoteFile, match=r"big\.log.*5008 bytes"):
        t.read_bytes(str(log), max_bytes=4096)
    assert len(t.read_bytes(str(log), max_bytes=5008)) == 5008


def test_create_exclusive_once_with_the_whole_text(t: Transport, tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    assert t.create_exclusive(str(lock), "owner one\n")
    assert not t.create_exclusive(str(lock), "owner two\n")
    assert lock.read_text() == "owner one\n"
    assert visible(tmp_path) == ["lock"]  # no temp file left behind
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert not t.create_exclusive(str(tmp_path / "dangling"), "x")
    assert not (tmp_path / "nowhere").exists()


def test_markers_rename_once_and_exists_does_not_follow(t: Transport, tmp_path: Path) -> None:
    t.write_text(str(tmp_path / "ready"), "")
    assert t.rename(str(tmp_path / "ready"), str(tmp_path / "claimed"))
    assert not t.rename(str(tmp_path / "ready"), str(tmp_path / "claimed2"))
    assert t.listdir(str(tmp_path)) == ["claimed"]
    assert t.listdir(str(tmp_path / "none")) == []
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert t.exists(str(tmp_path / "dangling")) and not t.exists(str(tmp_path / "nowhere"))


def test_remove_never_follows_a_link_out_of_the_tree(t: Transport, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree" / "sub"
    tree.mkdir(parents=True)
    (tree / "f").write_text("f")
    (tree / "escape").symlink_to(outside)
    t.remove(str(tmp_path / "tree"))
    t.remove(str(tmp_path / "tree"))  # gone: no error
    assert not (tmp_path / "tree").exists() and (outside / "keep").exists()


def test_many_files_each_way(t: Transport, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pairs = []
    for i in range(30):
        (src / ("f%02d" % i)).write_bytes(os.urandom(i * 333))
        (src / ("f%02d" % i)).chmod(0o640 if i % 2 else 0o755)
        pairs.append((str(src / ("f%02d" % i)), str(tmp_path / "hpc" / ("job%d" % (i % 3))
                                                   / ("f%02d" % i))))
    t.put_many(pairs)  # the job directories are made as needed
    back = tmp_path / "back"
    back.mkdir()
    t.get_many([(remote, str(back / os.path.basename(remote))) for _, remote in pairs])
    for local, remote in pairs:
        name = os.path.basename(local)
        assert Path(remote).read_bytes() == Path(local).read_bytes() == \
            (back / name).read_bytes()
        mode = 0o640 if int(name[1:]) % 2 else 0o755
        assert stat.S_IMODE(os.stat(remote).st_mode) == mode & ~p.current_umask()
        assert stat.S_IMODE((back / name).stat().st_mode) == mode & ~p.current_umask()
    assert all(not n.startswith(".tmp-") for n in visible(back))


def test_many_files_name_each_failure_and_move_the_others(t: Transport, tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("fine\n")
    (tmp_path / "secret").write_text("private\n")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    out = tmp_path / "out"
    out.mkdir()
    pairs = [(str(tmp_path / "ok"), str(out / "ok")), (str(tmp_path / "link"), str(out / "link")),
             (str(tmp_path / "missing"), str(out / "missing"))]
    with pytest.raises(ManyTransferError) as info:
        t.get_many(pairs)
    assert sorted(info.value.failed) == [str(tmp_path / "link"), str(tmp_path / "missing")]
    assert "symbolic link" in info.value.failed[str(tmp_path / "link")]
    assert visible(out) == ["ok"] and (out / "ok").read_text() == "fine\n"
    up = tmp_path / "up"
    with pytest.raises(ManyTransferError) as info:
        t.put_many([(local, str(up / os.path.basename(local))) for local, _ in pairs])
    assert sorted(info.value.failed) == [str(up / "link"), str(up / "missing")]
    assert visible(up) == ["ok"]


def test_commands_run_with_stdin_and_report_failure(t: Transport) -> None:
    done = t.run(["sh", "-c", "cat; echo err >&2; exit 0"], stdin="from stdin\n")
    assert (done.rc, done.stdout, done.stderr) == (0, "from stdin\n", "err\n")
    assert t.run(["sh", "-c", "exit 3"], check=False, idempotent=True).rc == 3
    with pytest.raises(Exception, match="exited 3"):
        t.run(["sh", "-c", "echo bad >&2; exit 3"])
