"""The registry lock by repetition: in each of 20 tries (CI; 50 in the long run), three
submitter processes race for it while a fourth, killed at a random instant (before, while
or after it takes the lock), holds it; no two ever hold it at once and the dead holder
costs: nothing on this host (its process is seen gone), at most the lease when it "ran on
another host" (every other try, with a short lease). HPC_BATCH_LOCK_TRIES sets the number
of tries (the sshd variant runs a tenth of them, at least 4)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import registry
from hpc_worker import protocol as p
from tests.services.cluster import SshServer
from tests.sitekit import Site
from tests.test_two_servers import ssh_sections

PROJECT = Path(__file__).resolve().parents[1]
TRIES = int(os.environ.get("HPC_BATCH_LOCK_TRIES", "20"))  # 50 and more: set it (long run)
RACERS = 3
SHORT_LEASE = 1.0

WORKER = r"""
import os, random, sys, time
from galaxy_hpc_runner.dropbox import registry_lock as rl
from galaxy_hpc_runner.dropbox.registry import Registry
from galaxy_hpc_runner.transport.base import LocalTransport

workspace, log, hold, remote = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
if remote:  # a submitter on another machine: no same-host check helps, a short lease does
    rl.LOCK_LEASE, rl.LOCK_MARGIN, rl.LOCK_REFRESH = %(lease)r, 0.3, 0.1
    if hold > 0.5:
        mine = rl.identity()
        rl.identity = lambda: dict(mine, host="another-host", boot="another-boot")
transport = LocalTransport()
if sys.argv[5]:  # over the real sshd: the lock taken through SFTP
    from galaxy_hpc_runner.config import load_config
    from galaxy_hpc_runner.dropbox.submitter import make_transport
    transport = make_transport(load_config(sys.argv[5]))
reg = Registry(transport, workspace, "s%%d" %% os.getpid())

def note(what):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("%%s %%d %%d\n" %% (what, os.getpid(), time.monotonic_ns())).encode())
    os.close(fd)

with reg.lock(wait=60):
    note("enter")
    end = time.monotonic() + hold
    while time.monotonic() < end:  # at work: each step keeps the lease (refreshed when due)
        reg.keep()
        time.sleep(min(0.05, hold))
    note("leave")
""" % {"lease": SHORT_LEASE}


def spawn(workspace: Path, log: Path, hold: float, remote: bool,
          config: str = "") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(workspace), str(log),
                             "%g" % hold, "1" if remote else "0", config], cwd=PROJECT,
                            env=dict(os.environ, PYTHONPATH=str(PROJECT)))


def intervals(log: Path, killed: int, killed_at: int) -> list[tuple[int, int, int]]:
    """(enter, leave, pid) per holding; the killed one's ends when it was seen dead."""
    enter: dict[int, int] = {}
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        what, pid, at = line.split()
        if what == "enter":
            enter[int(pid)] = int(at)
        else:
            out.append((enter.pop(int(pid)), int(at), int(pid)))
    out += [(at, killed_at, pid) for pid, at in enter.items() if pid == killed]
    assert set(enter) <= {killed}, enter
    return sorted(out)


def entered(log: Path, pid: int, timeout: float) -> None:
    """Wait until ``pid`` noted that it holds the lock (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and ("enter %d " % pid) in log.read_text():
            return
        time.sleep(0.01)
    raise AssertionError("%d never took the lock" % pid)


def one_try(tmp_path: Path, attempt: int, remote: bool, config: str = "",
            kill_after: float = 0.6) -> tuple[float, bool]:
    """One race; how long the racers took after the kill, and whether the victim was
    killed while it held the lock."""
    workspace, log = tmp_path / ("w%d" % attempt), tmp_path / ("log%d" % attempt)
    p.ensure_layout(str(workspace))
    victim = spawn(workspace, log, 3.0, remote, config)  # holds long, alive: mostly killed holding
    if attempt % 4 != 3:  # mostly: killed while it holds the lock the racers wait for
        entered(log, victim.pid, timeout=30)
        kill_after = 0.3
    else:  # else at any instant: before, while or after it takes the lock
        time.sleep(random.uniform(0.0, 0.2))
    racers = [spawn(workspace, log, random.uniform(0, 0.01), remote, config)
              for _ in range(RACERS)]
    time.sleep(random.uniform(0.0, kill_after))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic_ns()
    started = time.monotonic()
    for racer in racers:
        assert racer.wait(timeout=60) == 0, "try %d: a racer failed" % attempt
    spans = intervals(log, victim.pid, killed_at)
    assert len(spans) >= RACERS, (attempt, spans)
    for (_, end, pid), (start, _, other) in itertools.pairwise(spans):
        assert end <= start, "try %d: %d and %d held the lock at once" % (attempt, pid, other)
    if spans[-1][2] != victim.pid:  # else it took the lock last and died with it
        assert not (workspace / p.PILOTS / registry.LOCK_NAME).exists()
    return time.monotonic() - started, any(pid == victim.pid for _, _, pid in spans)


def test_racing_tries_with_a_killed_holder_never_two_holders(tmp_path: Path) -> None:
    waits: dict[bool, list[float]] = {False: [], True: []}
    killed_holding = 0
    for attempt in range(TRIES):
        remote = attempt % 2 == 1
        waited, held = one_try(tmp_path, attempt, remote)
        waits[remote].append(waited)
        killed_holding += held
    assert killed_holding >= TRIES // 4  # most tries kill the holder while it holds
    # the racers' own work is milliseconds: what is left is the dead holder's cost
    assert max(waits[False]) < 3.0, waits[False]
    assert max(waits[True]) < SHORT_LEASE + 3.0, waits[True]


@pytest.mark.ssh
def test_races_over_sftp_with_a_killed_holder_never_two_holders(
        tmp_path: Path, ssh_server: SshServer) -> None:
    """The same over the real sshd (the lock file created, refreshed and broken through
    SFTP), fewer tries: each process opens its own ssh connection."""
    site = Site(tmp_path / "site", **ssh_sections(ssh_server))
    try:
        held = 0
        for attempt in range(max(4, TRIES // 10)):
            waited, killed_holding = one_try(tmp_path, attempt, attempt % 2 == 1,
                                             str(site.config_path), kill_after=1.5)
            assert waited < SHORT_LEASE + 6.0, (attempt, waited)
            held += killed_holding
        assert held >= 1
    finally:
        site.close()
