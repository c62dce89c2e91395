"""The ssh transport against a real sshd: verified atomic transfers, host keys, passphrases."""

from __future__ import annotations

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


def test_unreachable_host_is_a_clear_error(ssh_server: SshServer) -> None:
    with pytest.raises(TransportError, match="cannot reach"):
        connect(ssh_server, port=1).listdir("/")  # type: ignore[arg-type]


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
