"""The ssh transport against a real sshd: verified atomic transfers, host keys, passphrases."""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from galaxy_hpc_runner.errors import TransportError
from galaxy_hpc_runner.transport.ssh import SshTransport, _passphrase
from tests.services.cluster import SshServer

pytestmark = pytest.mark.ssh


def connect(server: SshServer, **kw: str) -> SshTransport:
    options = {"host": server.host, "port": server.port, "user": server.user,
               "key_file": str(server.client_key_path),
               "known_hosts": str(server.known_hosts_path)}
    options.update(kw)
    return SshTransport(**options)  # type: ignore[arg-type]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1000, 6 << 20])  # empty, SFTP path, streamed path
def test_round_trip_is_complete_and_leaves_no_temp_files(
        ssh_server: SshServer, tmp_path: Path, size: int) -> None:
    src, remote_dir, back = tmp_path / "src.bin", tmp_path / "remote", tmp_path / "back.bin"
    src.write_bytes(os.urandom(size))
    t = connect(ssh_server)
    t.makedirs(str(remote_dir / "a" / "b"))
    t.put(str(src), str(remote_dir / "a" / "b" / "media file.bin"))
    t.get(str(remote_dir / "a" / "b" / "media file.bin"), str(back))
    assert digest(back) == digest(src)
    assert sorted(p.name for p in (remote_dir / "a" / "b").iterdir()) == ["media file.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "remote", "src.bin"]
    t.remove(str(remote_dir))
    assert not remote_dir.exists()
    t.close()


def test_markers_rename_atomically_and_report_a_lost_race(
        ssh_server: SshServer, tmp_path: Path) -> None:
    t = connect(ssh_server)
    t.write_text(str(tmp_path / "ready"), "")
    assert t.rename(str(tmp_path / "ready"), str(tmp_path / "claimed"))
    assert not t.rename(str(tmp_path / "ready"), str(tmp_path / "claimed2"))
    assert t.listdir(str(tmp_path)) == ["claimed"]
    t.close()


def test_shared_inputs_are_hard_links(ssh_server: SshServer, tmp_path: Path) -> None:
    t = connect(ssh_server)
    (tmp_path / "shared").write_text("media")
    t.link(str(tmp_path / "shared"), str(tmp_path / "job-copy"))
    assert os.stat(tmp_path / "job-copy").st_ino == os.stat(tmp_path / "shared").st_ino
    t.close()


def test_changed_host_key_is_refused(ssh_server: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key = Path(str(other) + ".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text("[%s]:%d %s %s\n" % (ssh_server.host, ssh_server.port, key_type, key))
    with pytest.raises(TransportError, match="CHANGED"):
        connect(ssh_server, known_hosts=str(known)).listdir("/")


def test_unknown_host_key_is_refused_before_authentication(
        ssh_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(TransportError, match=r"unknown.*refusing.*ssh-keyscan"):
        connect(ssh_server, known_hosts=str(empty)).listdir("/")


def test_unreachable_host_is_a_clear_error(ssh_server: SshServer) -> None:
    with pytest.raises(TransportError, match="cannot reach"):
        connect(ssh_server, port=1).listdir("/")  # type: ignore[arg-type]


def test_a_key_the_head_node_refuses_fails_at_once_naming_the_settings(
        ssh_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication failing is permanent: no reconnect loop, and the message says which
    settings to look at (issue 14: check --remote must not retry permanent errors)."""
    key = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    t = connect(ssh_server, key_file=str(key))
    connects = []
    real = t._connect

    def counted() -> object:
        connects.append(1)
        return real()

    monkeypatch.setattr(t, "_connect", counted)
    with pytest.raises(TransportError, match=r"authentication failed.*key_file"):
        t.listdir("/")
    assert len(connects) == 1
    anonymous = connect(ssh_server, key_file=str(key), user=None)  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="ssh to %s@" % getpass.getuser()):
        anonymous.listdir("/")  # the login name paramiko used, not "@host"


def test_key_passphrase_comes_from_the_environment(
        ssh_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(key)],
                   check=True)
    authorized = ssh_server.base_dir / "authorized_keys"
    original = authorized.read_text()
    authorized.write_text(original + Path(str(key) + ".pub").read_text())
    try:
        monkeypatch.setenv("HPC_KEY_PASS", "s3cret")
        t = connect(ssh_server, key_file=str(key))
        t.passphrase = _passphrase({"passphrase_env": "HPC_KEY_PASS"})
        assert t.run(["echo", "unlocked"]).stdout.strip() == "unlocked"
        t.close()
        monkeypatch.delenv("HPC_KEY_PASS")
        with pytest.raises(TransportError, match="HPC_KEY_PASS is not set"):
            _passphrase({"passphrase_env": "HPC_KEY_PASS"})
    finally:
        authorized.write_text(original)


# -- faults: every failure is a TransportError; only idempotent work is done again ----------

def _drop(t: SshTransport) -> None:
    """Cut the TCP connection under paramiko, as a network failure would."""
    assert t._client is not None
    transport = t._client.get_transport()
    assert transport is not None
    transport.sock.close()


def test_reads_and_uploads_survive_a_dropped_connection(
        ssh_server: SshServer, tmp_path: Path) -> None:
    t = connect(ssh_server)
    src = tmp_path / "src"
    src.write_bytes(b"x" * 5000)
    t.put(str(src), str(tmp_path / "a"))
    _drop(t)
    t.put(str(src), str(tmp_path / "b"))  # paramiko's 'Socket is closed': reconnect, retry
    _drop(t)
    assert t.read_bytes(str(tmp_path / "b")) == b"x" * 5000
    _drop(t)
    assert t.listdir(str(tmp_path)) == ["a", "b", "src"]
    t.close()


KILL_MY_SESSION = ("if [ ! -e {m} ]; then : > {m}; kill -9 $PPID; sleep 5; fi; "
                   "echo ran >> {m}; echo ran")


def test_a_command_is_never_sent_twice_unless_idempotent(
        ssh_server: SshServer, tmp_path: Path) -> None:
    """The command kills its own sshd session the first time: the connection drops after
    it was sent. A query is run again; anything else reports an unknown outcome."""
    t = connect(ssh_server)
    once = tmp_path / "once"
    from galaxy_hpc_runner.transport.base import CommandOutcomeUnknown

    with pytest.raises(CommandOutcomeUnknown, match="may or may not have run"):
        t.run(["sh", "-c", KILL_MY_SESSION.format(m=once)])
    assert once.read_text() == ""  # started once, never again
    twice = tmp_path / "twice"
    done = t.run(["sh", "-c", KILL_MY_SESSION.format(m=twice)], idempotent=True)
    assert done.stdout == "ran\n" and twice.read_text() == "ran\n"
    t.close()


def test_an_unreachable_head_node_is_a_transport_error_for_every_operation(
        tmp_path: Path, services_installed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from galaxy_hpc_runner.transport import ssh
    from tests.services.cluster import SshServer as Server

    monkeypatch.setattr(ssh, "RETRY_DELAYS", (0.01, 0.02))

    server = Server(tmp_path / "sshd")
    server.start()
    t = connect(server)
    t.listdir(str(tmp_path))
    server.stop()
    (tmp_path / "f").write_text("f")
    calls = [lambda: t.listdir(str(tmp_path)), lambda: t.exists(str(tmp_path / "f")),
             lambda: t.put(str(tmp_path / "f"), str(tmp_path / "g")),
             lambda: t.get(str(tmp_path / "f"), str(tmp_path / "g")),
             lambda: t.read_bytes(str(tmp_path / "f")),
             lambda: t.put_many([(str(tmp_path / "f"), str(tmp_path / "g"))]),
             lambda: t.create_exclusive(str(tmp_path / "lock"), "x"),
             lambda: t.run(["true"]), lambda: t.run(["true"], idempotent=True)]
    for call in calls:
        with pytest.raises(TransportError) as info:
            call()
        assert "127.0.0.1" in str(info.value)
    assert not (tmp_path / "g").exists() and not (tmp_path / "lock").exists()


class DropAfterLink(SshTransport):
    """The connection fails right after the lock file was linked into place (first try)."""

    dropped = False

    def _link_new(self, tmp: str, remote: str, retried: bool) -> bool:
        made = super()._link_new(tmp, remote, retried)
        if not self.dropped:
            self.dropped = True
            _drop(self)
            raise EOFError("connection lost before the answer arrived")
        return made


def test_a_retried_exclusive_create_knows_its_own_file(
        ssh_server: SshServer, tmp_path: Path) -> None:
    options = {"host": ssh_server.host, "port": ssh_server.port, "user": ssh_server.user,
               "key_file": str(ssh_server.client_key_path),
               "known_hosts": str(ssh_server.known_hosts_path)}
    mine = DropAfterLink(**options)  # type: ignore[arg-type]
    assert mine.create_exclusive(str(tmp_path / "lock"), "same text\n")  # its own: not taken
    other, late = SshTransport(**options), DropAfterLink(**options)  # type: ignore[arg-type]
    assert other.create_exclusive(str(tmp_path / "lock2"), "same text\n")
    assert not late.create_exclusive(str(tmp_path / "lock2"), "same text\n")  # another's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "lock2"]
    for t in (mine, other, late):
        t.close()
