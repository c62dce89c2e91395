"""The ssh transport against OpenSSH's scp on the same sshd, and a pass over 10,000 jobs.

    python bench/bench_ssh.py [--mb 100] [--files 200] [--many 1000] [--jobs 10000] [--repeat 3]
                              [--only big,small,many,pass]

Starts a private sshd on loopback (tests/services), then measures, side by side:
1. one 100 MB file up and down: SshTransport.put/get vs scp (target >= 0.9x scp);
2. 200 small files up: SshTransport.put each vs one scp of all of them;
3. 1,000 x 10 KB files spread over 100 job directories, staged (up) and collected
   (down): one put/get per file vs put_many/get_many (one tar stream through one
   exec channel) vs one plain ``tar | ssh | tar`` stream vs scp -r (target: put_many
   and get_many within 2x of the plain tar stream);
4. one submitter pass over 10,000 staged descriptions through the ssh transport
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
from typing import Any

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


def ssh_cmd(server: SshServer, command: str) -> list[str]:
    return ["ssh", "-q", "-p", str(server.port), "-i", str(server.client_key_path),
            "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=%s" % server.known_hosts_path,
            "%s@%s" % (server.user, server.host), command]


def tar_pipe(reader: list[str], writer: list[str]) -> None:
    """``reader | writer``, both checked."""
    first = subprocess.Popen(reader, stdout=subprocess.PIPE)
    second = subprocess.run(writer, stdin=first.stdout, check=False)
    assert first.stdout is not None
    first.stdout.close()
    if first.wait() != 0 or second.returncode != 0:
        raise RuntimeError("tar stream failed: %s | %s" % (reader, writer))


def many_files(root: Path, server: SshServer, count: int, repeat: int) -> dict[str, float]:
    """COUNT x 10 KB in 100 job directories, up and down, four ways (files/s)."""
    src, remote, back = root / "many-src", root / "many-remote", root / "many-back"
    pairs = []
    for i in range(count):
        local = src / ("job%03d" % (i % 100)) / ("in%04d.dat" % i)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(os.urandom(10240))
        pairs.append((str(local), str(remote / local.relative_to(src))))
    t = transport_for(server)
    t.listdir(str(root))
    for _, dest in pairs:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)

    def reset(directory: Path) -> Callable[[], None]:
        def again() -> None:
            subprocess.run(["rm", "-rf", str(directory)], check=True)
            directory.mkdir()
        return again

    up = {
        "put_each": lambda: [t.put(a, b) for a, b in pairs],
        "put_many": lambda: t.put_many(pairs),
        "tar_stream": lambda: tar_pipe(["tar", "-cf", "-", "-C", str(src), "."],
                                       ssh_cmd(server, "tar -xf - -C %s" % remote)),
        "scp": lambda: scp(server, "-r", *[str(d) for d in sorted(src.iterdir())],
                           "%s@%s:%s/" % (server.user, server.host, remote)),
    }
    down_pairs = [(b, str(back / Path(b).relative_to(remote))) for _, b in pairs]
    down = {
        "get_each": lambda: [t.get(a, b) for a, b in down_pairs],
        "get_many": lambda: t.get_many(down_pairs),
        "tar_stream": lambda: tar_pipe(ssh_cmd(server, "tar -cf - -C %s ." % remote),
                                       ["tar", "-xf", "-", "-C", str(back)]),
        "scp": lambda: scp(server, "-r", *["%s@%s:%s" % (server.user, server.host, d)
                                           for d in sorted(remote.iterdir())], str(back)),
    }
    runs: dict[str, list[float]] = {}
    for _ in range(repeat):  # interleaved, so a load change hits every way alike
        for name, func in up.items():
            runs.setdefault("up_" + name, []).append(timed(func, 1))
        for name, func in down.items():
            reset(back)()
            for _, local in down_pairs:
                Path(local).parent.mkdir(parents=True, exist_ok=True)
            runs.setdefault("down_" + name, []).append(timed(func, 1))
    t.close()
    step = max(1, count // 50)
    for (_, dest), (_, local) in zip(pairs[::step], down_pairs[::step], strict=True):
        assert Path(dest).stat().st_size == 10240 == Path(local).stat().st_size
    return {k: count / statistics.median(v) for k, v in runs.items()}


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
    while staging.run_pass().more:  # a pass receives CHUNK descriptions at most
        pass
    over_ssh = Submitter(cfg)
    over_ssh.pilots.submit = staging.pilots.submit  # type: ignore[method-assign]
    over_ssh.run_pass()  # connect
    seconds = timed(over_ssh.run_pass, repeat)
    assert len(list((root / "ws" / "queue" / "ready").iterdir())) == jobs
    over_ssh.transport.close()
    return seconds


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    if "big" in figures:
        big = figures["big"]
        for way, word in (("put", "up  "), ("get", "down")):
            print("  %d MB %s   ours %6.0f MB/s  scp %6.0f MB/s  ratio %.2fx (target >= 0.9x)"
                  % (args.mb, word, big[way + "_s"], big["scp_%s_s" % way],
                     big[way + "_s"] / big["scp_%s_s" % way]))
    if "small" in figures:
        small = figures["small"]
        print("  %d small up  ours %6.0f files/s  scp %6.0f files/s  ratio %.2fx" % (
            args.files, small["ours_s"], small["scp_s"], small["ours_s"] / small["scp_s"]))
    if "many" in figures:
        many = figures["many"]
        for way, each, batch in (("up", "put_each", "put_many"), ("down", "get_each", "get_many")):
            tar = many["%s_tar_stream" % way]
            print("  %d x 10 KB %-4s one %s per file %6.0f files/s | %s %6.0f files/s | "
                  "tar stream %6.0f files/s | scp -r %6.0f files/s | %s is %.2fx the tar "
                  "stream's time (target <= 2x)" % (
                      args.many, way, each.split("_")[0], many["%s_%s" % (way, each)], batch,
                      many["%s_%s" % (way, batch)], tar, many["%s_scp" % way], batch,
                      tar / many["%s_%s" % (way, batch)]))
    if "pass_s" in figures:
        print("  pass over %d staged descriptions: %.2f s (target <= 2 s: %.2fx of target)"
              % (args.jobs, figures["pass_s"], figures["pass_s"] / 2))


def settings(args: argparse.Namespace, load_before: float) -> dict[str, str]:
    """What a README row needs beside the figure: the sizes, the versions, how busy it was."""
    import paramiko

    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.split(",")[0]
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()),
            "args": "--mb %d --files %d --many %d --jobs %d --repeat %d" % (
                args.mb, args.files, args.many, args.jobs, args.repeat),
            "python": sys.version.split()[0], "paramiko": paramiko.__version__,
            "openssh": ssh.strip(), "cores": str(os.cpu_count()),
            "load1": "%.1f before, %.1f after" % (load_before, os.getloadavg()[0])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--many", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--only", default="big,small,many,pass",
                    help="comma-separated parts to run (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    load_before = os.getloadavg()[0]
    figures: dict[str, object] = {}
    print("ssh transport vs OpenSSH on the same loopback sshd (median of %d)" % args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        root = Path(tmp)
        with SshServer(root / "sshd") as server:
            measures: dict[str, Callable[[], object]] = {
                "big": lambda: big_file(root, server, args.mb, args.repeat),
                "small": lambda: small_files(root, server, args.files, args.repeat),
                "many": lambda: many_files(root, server, args.many, args.repeat),
                "pass_s": lambda: pass_over_staged(root / "site", server, args.jobs,
                                                   args.repeat)}
            for key, measure in measures.items():
                if key.split("_")[0] in parts:  # each part's lines as soon as it is done
                    figures[key] = measure()
                    report({key: figures[key]}, args)
    figures["settings"] = settings(args, load_before)
    print("  settings: %s" % ", ".join("%s %s" % kv for kv in figures["settings"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
