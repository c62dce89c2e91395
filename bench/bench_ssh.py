"""The ssh transport against OpenSSH's scp on the same sshd, and a pass over 10,000 jobs.

    python bench/bench_ssh.py [--mb 100] [--files 200] [--jobs 10000] [--repeat 3]

Starts a private sshd on loopback (tests/services), then measures, side by side:
1. one 100 MB file up and down: SshTransport.put/get vs scp (target >= 0.9x scp);
2. 200 small files up: SshTransport.put each vs one scp of all of them;
3. one submitter pass over 10,000 staged descriptions through the ssh transport
   (target <= 2 s).
Medians of --repeat runs, ours and scp alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_local import write_site

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.transport.base import LocalTransport
from galaxy_hpc_runner.transport.ssh import SshTransport
from tests.services.cluster import SshServer


def timed(func: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def side_by_side(ours: Callable[[], object], theirs: Callable[[], object],
                 repeat: int) -> tuple[float, float]:
    """Median seconds of each, run alternately so a load change hits both alike."""
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(ours, 1))
        b.append(timed(theirs, 1))
    return statistics.median(a), statistics.median(b)


def scp(server: SshServer, *args: str) -> None:
    subprocess.run(["scp", "-q", "-P", str(server.port), "-i", str(server.client_key_path),
                    "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=%s" % server.known_hosts_path,
                    *args], check=True)


def transport_for(server: SshServer) -> SshTransport:
    return SshTransport(server.host, server.port, server.user, str(server.client_key_path),
                        known_hosts=str(server.known_hosts_path))


def big_file(root: Path, server: SshServer, mb: int, repeat: int) -> dict[str, float]:
    src = root / "big.bin"
    src.write_bytes(os.urandom(mb << 20))
    remote, back = root / "remote" / "big.bin", root / "back.bin"
    remote.parent.mkdir()
    t = transport_for(server)
    t.listdir(str(root))  # connect before timing: a pass reuses its connection
    target = "%s@%s:%s" % (server.user, server.host, remote)
    out: dict[str, float] = {}
    out["put_s"], out["scp_put_s"] = side_by_side(
        lambda: t.put(str(src), str(remote)), lambda: scp(server, str(src), target), repeat)
    out["get_s"], out["scp_get_s"] = side_by_side(
        lambda: t.get(str(remote), str(back)), lambda: scp(server, target, str(back)), repeat)
    t.close()
    return {k: mb / v for k, v in out.items()}  # MB/s


def small_files(root: Path, server: SshServer, count: int, repeat: int) -> dict[str, float]:
    srcdir, dest = root / "small", root / "remote-small"
    srcdir.mkdir()
    dest.mkdir()
    files = []
    for i in range(count):
        path = srcdir / ("f%03d.json" % i)
        path.write_bytes(os.urandom(8192))
        files.append(path)
    t = transport_for(server)
    t.listdir(str(root))

    def ours() -> None:
        for path in files:
            t.put(str(path), str(dest / path.name))

    target = "%s@%s:%s/" % (server.user, server.host, dest)
    out: dict[str, float] = {}
    out["ours_s"], out["scp_s"] = side_by_side(
        ours, lambda: scp(server, *map(str, files), target), repeat)
    t.close()
    return {k: count / v for k, v in out.items()}  # files/s


SSH_SECTIONS = """[scheduler]
backend = local
[transport]
type = ssh
host = {host}
port = {port}
user = {user}
key_file = {key}
known_hosts = {known}
"""


def pass_over_staged(root: Path, server: SshServer, jobs: int, repeat: int) -> float:
    """Stage JOBS descriptions (locally, to save time), then time passes over ssh."""
    write_site(root, SSH_SECTIONS.format(
        host=server.host, port=server.port, user=server.user,
        key=server.client_key_path, known=server.known_hosts_path))
    for i in range(jobs):
        (root / "dropbox" / ("j%05d.job" % i)).write_text(
            "script: noop\noutput_map: {output: %s/results/o%05d}\n" % (root, i))
    cfg = load_config(root / "site.ini")
    staging = Submitter(cfg, transport=LocalTransport())
    staging.pilots.submit = lambda: None  # type: ignore[assignment, method-assign, return-value]
    staging.run_pass()
    over_ssh = Submitter(cfg)
    over_ssh.pilots.submit = staging.pilots.submit  # type: ignore[method-assign]
    over_ssh.run_pass()  # connect
    seconds = timed(over_ssh.run_pass, repeat)
    assert len(list((root / "ws" / "queue" / "ready").iterdir())) == jobs
    over_ssh.transport.close()
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        root = Path(tmp)
        with SshServer(root / "sshd") as server:
            big = big_file(root, server, args.mb, args.repeat)
            small = small_files(root, server, args.files, args.repeat)
            pass_s = pass_over_staged(root / "site", server, args.jobs, args.repeat)
    print("ssh transport vs OpenSSH scp on the same loopback sshd (median of %d)" % args.repeat)
    print("  %d MB up     ours %6.0f MB/s  scp %6.0f MB/s  ratio %.2fx (target >= 0.9x)"
          % (args.mb, big["put_s"], big["scp_put_s"], big["put_s"] / big["scp_put_s"]))
    print("  %d MB down   ours %6.0f MB/s  scp %6.0f MB/s  ratio %.2fx (target >= 0.9x)"
          % (args.mb, big["get_s"], big["scp_get_s"], big["get_s"] / big["scp_get_s"]))
    print("  %d small up  ours %6.0f files/s  scp %6.0f files/s  ratio %.2fx (target >= 0.9x)"
          % (args.files, small["ours_s"], small["scp_s"], small["ours_s"] / small["scp_s"]))
    print("  pass over %d staged descriptions: %.2f s (target <= 2 s: %.2fx of target)"
          % (args.jobs, pass_s, pass_s / 2))
    if args.json:
        Path(args.json).write_text(json.dumps({"big": big, "small": small, "pass_s": pass_s},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
